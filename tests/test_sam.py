"""The SAM template validates and builds offline, with an arm64 layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAM = shutil.which("sam") or str(Path(sys.executable).parent / "sam")
ENV = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

pytestmark = pytest.mark.sam


def test_sam_validate_lint() -> None:
    result = subprocess.run([SAM, "validate", "--lint"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_build_ships_arm64_native_code_in_the_layer(tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    result = subprocess.run(
        [SAM, "build", "--build-dir", str(build_dir), "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    layer = build_dir / "SharedLayer" / "python"
    assert (layer / "audience_sync" / "sync.py").exists()
    assert (build_dir / "IngestFunction" / "app.py").exists() and (
        build_dir / "AudienceSyncFunction" / "app.py"
    ).exists()
    native = list(layer.rglob("*.so"))
    # requests pulls charset_normalizer, whose wheels are compiled (mypyc): the layer must carry aarch64 ones.
    assert native, "expected compiled extensions in the layer"
    for library in native:
        header = library.read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        assert int.from_bytes(header[18:20], "little") == 183, f"{library.name} is not aarch64 (EM_AARCH64=183)"
