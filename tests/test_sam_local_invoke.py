"""`sam local invoke` of both functions inside a Lambda container, against moto and the emulator on loopback.

Needs a Docker engine and the offline image (`make lambda-image`); CI builds both first (CI=true). SAM CLI
ignores `--docker-network host`, so the container reaches the host's loopback servers as
`host.docker.internal` (env.json), forwarded by scripts/lambda-image/host-loopback.sh.

The invoke runs on the machine's own architecture (LAMBDA_ARCH, default `uname -m`): the template is
retargeted to it for this build only, so no pass depends on how fast qemu emulates arm64. Running the arm64
build under qemu stays available (`LAMBDA_ARCH=arm64 make sam-invoke`); the deployed layer's aarch64 code is
checked by tests/test_sam.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import DEV_CRITEO, LocalAws, MotoServer, provision

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ROOT / "scripts" / "lambda-image" / "host-loopback.sh"
PORTS = ["4566", "8642"]
ARCH = {"aarch64": "arm64", "amd64": "x86_64"}.get(platform.machine(), platform.machine())
ARCH = os.environ.get("LAMBDA_ARCH") or ARCH
IMAGE = os.environ.get("LAMBDA_IMAGE", f"local/lambda-python:3.13-{ARCH}")
SAM = str(Path(sys.executable).parent / "sam")
ENV = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _image_ready() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not _image_ready() and os.environ.get("CI") != "true",
        reason=f"needs a Docker engine and {IMAGE} (make lambda-image)",
    ),
]


def retargeted_template(arch: str, directory: Path) -> Path:
    """template.yaml with its functions and layer built for `arch` (code paths still resolve via --base-dir)."""
    text = (ROOT / "template.yaml").read_text()
    # "Architectures: [arm64]" also matches the layer's CompatibleArchitectures: the functions and the layer.
    for key, uses in (("Architectures: [arm64]", 2), ("BuildArchitecture: arm64", 1)):
        assert text.count(key) == uses, f"template.yaml no longer has {key!r} {uses} time(s)"
        text = text.replace(key, key.replace("arm64", arch))
    path = directory / f"template.{arch}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sam")
    build_dir = work / "build"
    command = [SAM, "build", "--template", str(retargeted_template(ARCH, work)), "--base-dir", str(ROOT)]
    command += ["--build-dir", str(build_dir), "--cache-dir", str(work / "cache")]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # Pre-compiled modules: each invoke is a fresh container (under qemu, compiling alone nears 15 s).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(build_dir)], check=True)
    return build_dir


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[LocalAws, CriteoEmulator]]:
    """moto and the emulator on the ports env.json names, reachable from containers."""
    subprocess.run(["bash", str(LOOPBACK), "enable", *PORTS], check=True, capture_output=True)
    try:
        with MotoServer(port=4566) as moto, CriteoEmulator(port=8642, **DEV_CRITEO) as criteo:
            yield provision(moto.endpoint, prefix="local"), criteo
    finally:
        subprocess.run(["bash", str(LOOPBACK), "disable", *PORTS], check=False, capture_output=True)


def invoke(built: Path, function: str, event: str) -> dict[str, object]:
    command = [
        SAM,
        "local",
        "invoke",
        function,
        "--template",
        str(built / "template.yaml"),
        "--event",
        f"events/{event}",
        "--env-vars",
        "env.json",
        "--add-host",
        "host.docker.internal:host-gateway",
        "--invoke-image",
        IMAGE,
        "--skip-pull-image",
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    answers = [line for line in result.stdout.strip().splitlines() if line.startswith("{")]
    assert answers, f"no answer from {function}: {result.stderr[-2000:]}"  # e.g. a timeout under qemu
    last = answers[-1]
    answer: dict[str, object] = json.loads(last)
    return answer


def test_ingest_function_in_a_lambda_container(built: Path, services: tuple[LocalAws, CriteoEmulator]) -> None:
    aws, _ = services
    answer = invoke(built, "IngestFunction", "ingest_batch_mixed.json")
    assert answer["statusCode"] == 200
    assert json.loads(str(answer["body"]))["accepted"] == 8
    messages = aws.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert sum(len(json.loads(m["Body"])["r"]) for m in messages) == 8  # one record per accepted event


def test_sync_function_in_a_lambda_container(built: Path, services: tuple[LocalAws, CriteoEmulator]) -> None:
    _, criteo = services
    assert invoke(built, "AudienceSyncFunction", "sync_sqs_batch.json") == {"batchItemFailures": []}
    assert sorted(criteo.segments()) == [
        "segment_cart_abandoners_7d",
        "segment_high_value_buyers",
        "segment_lapsed_subscribers",
    ]
    assert criteo.count("patch") >= 3 and criteo.spec_violations == []
