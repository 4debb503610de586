# Two commands do everything on a fresh machine:
#   make local   run the whole pipeline locally on the sample events and show the Criteo audiences
#   make test    lint, type-check and run the tests (CI runs this through .ci/run)
# and, while `make serve` runs, `make state` prints its audiences table (after the batching window).

SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# A pyenv shim named python3.13 exists even when 3.13 is not the active version (and then fails), so a
# real interpreter under ~/.pyenv/versions wins; otherwise whatever python3.13 on PATH actually runs.
PYTHON313 := $(or $(shell ls -d $(HOME)/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1),$(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null))
# sam build looks for python3.13 on PATH: put the interpreter's directory first.
export PATH := $(BIN):$(dir $(PYTHON313)):$(PATH)
export SAM_CLI_TELEMETRY := 0

# sam local invoke runs on the machine's own architecture by default (arm64 under qemu is opt-in: slow).
LAMBDA_ARCH ?= $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)

.PHONY: setup local serve state test lint typecheck pytest validate build deploy events lambda-image sam-invoke sam-invoke-ports fuzz iac-scan clean

# The first run installs ~90 packages into .venv (70 s measured on the 2-core dev machine with a local package
# index; a few minutes when every wheel comes over the network); later runs skip it.
# One line per stage with the elapsed time, a line every 25 packages resolved, and one every 30 s of silence;
# pip's full output goes to .venv/pip-install.log (its tail is shown if the install fails).
SETUP_MINUTES := 1-3 minutes
$(VENV)/.installed: requirements-dev.txt layers/common/requirements.txt pyproject.toml
	@test -n "$(PYTHON313)" || { echo "python3.13 is required (pyenv install 3.13, or put python3.13 on PATH)"; exit 1; }
	@set -o pipefail; start=$$(date +%s); log=$(VENV)/pip-install.log; \
	say() { printf '[setup %4ss] %s\n' "$$(( $$(date +%s) - start ))" "$$*"; }; \
	if ! test -x $(BIN)/python; then \
	  say "creating $(VENV) with $(PYTHON313) (first run: $(SETUP_MINUTES) in all; later runs skip this)"; \
	  $(PYTHON313) -m venv $(VENV) || exit 1; \
	fi; \
	say "pip install -r requirements-dev.txt into $(VENV) (log: $$log)"; \
	$(BIN)/pip install --disable-pip-version-check --progress-bar off -r requirements-dev.txt 2>&1 | tee $$log | { \
	  n=0; stage="resolving and downloading"; \
	  while :; do \
	    if IFS= read -r -t 30 line; then \
	      case "$$line" in \
	        Collecting*) n=$$((n + 1)); [ $$((n % 25)) -ne 0 ] || say "resolved $$n packages so far (latest: $$(echo "$$line" | cut -d' ' -f2 | sed 's/[][<>=!~;].*//'))";; \
	        "Installing collected packages:"*) stage="installing"; say "installing $$n packages (the longest step) ...";; \
	        "Successfully installed"*) say "installed";; \
	      esac; \
	    elif [ $$? -gt 128 ]; then say "... still $$stage"; else break; fi; \
	  done; }; \
	status=$$?; \
	if [ $$status -ne 0 ]; then grep -v "is ignored: it is neither" $$log | tail -n 25; say "pip install failed (exit $$status); full log: $$log"; exit 1; fi; \
	$(BIN)/python -c "import boto3, moto, aws_lambda_powertools, requests, samcli" || { say "dependency install failed: see $$log"; exit 1; }; \
	say "$(VENV) ready"
	@touch $@

setup: $(VENV)/.installed ## create .venv with everything the project needs

local: setup ## run the pipeline locally on events/ and print the resulting Criteo audiences
	$(BIN)/python -m devtools.local_pipeline $(ARGS)

serve: setup ## keep the local stack running for your own curl calls (a line per request and per sync batch)
	$(BIN)/python -m devtools.local_pipeline --serve $(ARGS)

state: setup ## the summary table of a running `make serve` (once its queue has drained: the batching window)
	@$(BIN)/python -m devtools.local_pipeline --state $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy layers/common functions devtools bench segment_criteo

# pytest-xdist, one worker per core (PYTEST_WORKERS=0: none). Each worker starts its own moto server and Criteo
# emulator on free ports (tests/conftest.py). The `docker` tests (sam local invoke) bind the fixed ports 4566 and
# 8642 that env.json names, so they run afterwards on their own, once those ports are known to be free (a
# `make serve` holds them). -rs lists every skip with its reason. Exit 5 (no test selected) is fine there.
PYTEST_WORKERS ?= auto
LAMBDA_IMAGE ?= local/lambda-python:3.13-$(LAMBDA_ARCH)
SAM_INVOKE_PORTS := 4566 8642
pytest: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal -rs -m "not docker" $(PYTEST_ARGS)
	@if [ "$$CI" = true ] || docker image inspect $(LAMBDA_IMAGE) >/dev/null 2>&1; then \
	  $(BIN)/python -m devtools.local_stack --need-ports $(SAM_INVOKE_PORTS) --for "tests/test_sam_local_invoke.py"; fi
	LAMBDA_ARCH=$(LAMBDA_ARCH) $(BIN)/python -m pytest -rs -m docker $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: lint typecheck pytest ## everything CI checks

bench: setup ## every benchmark (hours with the 10M streams; ARGS=--max-changes 1000000: ~1 h): table, results.json, scaling.png
	$(BIN)/python -m bench --jobs $$(nproc) $(ARGS)

bench-stream: setup ## one Criteo-call stream into bench/results.json (ARGS="10000000 2000 steady": ~45 min, TMPDIR=/dev/shm)
	$(BIN)/python -m bench.one_stream $(ARGS)

bench-quick: setup ## the benchmarks at small sizes (what CI checks runs)
	$(BIN)/python -m bench --quick --out .local/bench $(ARGS)

.PHONY: bench bench-stream bench-quick

validate: setup
	sam validate --lint

build: setup
	sam build

deploy: build ## sam build + sam deploy with samconfig.toml's defaults (your AWS credentials and region)
	sam deploy $(ARGS)

events: setup ## regenerate events/*.json (signed with the local dev secret) from events/payloads/
	$(BIN)/python -m devtools.sample_events

lambda-image: ## Docker engine + an offline python3.13 Lambda image (local/lambda-python:3.13-$(LAMBDA_ARCH))
	bash scripts/lambda-image/build.sh --arch $(LAMBDA_ARCH)

sam-invoke: setup sam-invoke-ports lambda-image ## sam local invoke of both functions (LAMBDA_ARCH, default native) against moto + the emulator
	LAMBDA_ARCH=$(LAMBDA_ARCH) $(BIN)/python -m pytest -rs tests/test_sam_local_invoke.py

sam-invoke-ports: setup
	@$(BIN)/python -m devtools.local_stack --need-ports $(SAM_INVOKE_PORTS) --for "make sam-invoke"

.PHONY: chaos redrive
chaos: setup ## chaos soak: 100k events, Criteo 5xx/429/latency/token expiry, sync worker SIGKILLed; exact or exit 1
	$(BIN)/python -m devtools.chaos $(ARGS)

redrive: setup ## move the local stack's DLQ back to its queue (AWS: aws sqs start-message-move-task, see README)
	$(BIN)/python -m devtools.redrive $(ARGS)

fuzz: setup ## 10,000+ generated requests against the local webhook: no 5xx, every answer per docs/webhook.openapi.yaml
	$(BIN)/python -m devtools.fuzz_webhook $(ARGS)

iac-scan: ## checkov (its own venv: it pins its own dependencies) on template.yaml; accepted findings: .checkov.yaml
	@test -x .local/iac-venv/bin/checkov || { python3 -m venv .local/iac-venv && .local/iac-venv/bin/pip install --quiet --disable-pip-version-check checkov; }
	@mkdir -p .local; .local/iac-venv/bin/checkov --config-file .checkov.yaml | tee .local/checkov.txt
	@! grep -q "Parsing errors" .local/checkov.txt && grep -q "Passed checks: [1-9]" .local/checkov.txt || { echo "checkov could not read template.yaml"; exit 1; }

clean:
	rm -rf .aws-sam .mypy_cache .ruff_cache .pytest_cache
