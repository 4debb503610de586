# Two commands do everything on a fresh machine:
#   make local   run the whole pipeline locally on the sample events and show the Criteo audiences
#   make test    lint, type-check and run the tests (CI runs this through .ci/run)

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

.PHONY: setup local serve test lint typecheck pytest validate build events lambda-image sam-invoke fuzz iac-scan clean

$(VENV)/.installed: requirements-dev.txt layers/common/requirements.txt
	@test -n "$(PYTHON313)" || { echo "python3.13 is required (pyenv install 3.13, or put python3.13 on PATH)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON313) -m venv $(VENV)
	@echo "installing development dependencies into $(VENV) ..."
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import boto3, moto, aws_lambda_powertools, requests, samcli" || { echo "dependency install failed"; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## create .venv with everything the project needs

local: setup ## run the pipeline locally on events/ and print the resulting Criteo audiences
	$(BIN)/python -m devtools.local_pipeline $(ARGS)

serve: setup ## keep the local stack running for your own curl calls
	$(BIN)/python -m devtools.local_pipeline --serve $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy layers/common functions devtools bench

pytest: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest ## everything CI checks

bench: setup ## every benchmark (~6 min): table, bench/results.json, bench/scaling.png
	$(BIN)/python -m bench $(ARGS)

bench-quick: setup ## the benchmarks at small sizes (what CI checks runs)
	$(BIN)/python -m bench --quick --out .local/bench $(ARGS)

.PHONY: bench bench-quick

validate: setup
	sam validate --lint

build: setup
	sam build

events: setup ## regenerate events/*.json (signed with the local dev secret) from events/payloads/
	$(BIN)/python -m devtools.sample_events

lambda-image: ## Docker engine + an offline python3.13 Lambda image (local/lambda-python:3.13-$(LAMBDA_ARCH))
	bash scripts/lambda-image/build.sh --arch $(LAMBDA_ARCH)

sam-invoke: setup lambda-image ## sam local invoke of both functions (LAMBDA_ARCH, default native) against moto + the emulator
	LAMBDA_ARCH=$(LAMBDA_ARCH) $(BIN)/python -m pytest tests/test_sam_local_invoke.py

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
