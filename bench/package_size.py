"""Benchmark 5: size of the built layer and functions (`sam build` output), unzipped and zipped."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".aws-sam" / "build"
ARTIFACTS = ("SharedLayer", "IngestFunction", "AudienceSyncFunction")
LAYER_TARGET_MB = 5.0
MB = 1024 * 1024


def sam_build() -> None:
    """`sam build` with the interpreter's directory first on PATH (what `make build` does)."""
    python_dir = str(Path(os.path.realpath(os.sys.executable)).parent)  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{python_dir}:{os.environ['PATH']}",
    }
    subprocess.run([str(ROOT / ".venv" / "bin" / "sam"), "build"], cwd=ROOT, env=env, check=True, capture_output=True)


def sizes(directory: Path) -> tuple[int, int]:
    """(bytes on disk of every file, bytes of a deflate zip of the directory) like the deployment package."""
    raw = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            raw += path.stat().st_size
            archive.write(path, path.relative_to(directory))
    return raw, len(buffer.getvalue())


def largest_packages(directory: Path, count: int = 6) -> dict[str, float]:
    """The biggest top-level entries of the layer's python/ folder, in MB."""
    base = directory / "python" if (directory / "python").is_dir() else directory
    totals = {
        entry.name: sum(p.stat().st_size for p in ([entry] if entry.is_file() else entry.rglob("*")) if p.is_file())
        for entry in base.iterdir()
    }
    return {name: round(size / MB, 2) for name, size in sorted(totals.items(), key=lambda kv: -kv[1])[:count]}


def run(quick: bool) -> dict[str, Any]:
    """Build (full mode, or when nothing is built yet) and measure."""
    built = BUILD.is_dir()
    if not quick or not built:
        try:
            sam_build()
        except (subprocess.CalledProcessError, FileNotFoundError) as error:
            if not built:
                return {"status": f"not built: {type(error).__name__}"}
    result: dict[str, Any] = {"status": "built" if not quick else "measured existing build"}
    for name in ARTIFACTS:
        raw, zipped = sizes(BUILD / name)
        result[name] = {"unzipped_mb": round(raw / MB, 2), "zipped_mb": round(zipped / MB, 2)}
    result["SharedLayer"]["largest"] = largest_packages(BUILD / "SharedLayer")
    result["layer_target_mb"] = LAYER_TARGET_MB
    return result
