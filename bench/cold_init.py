"""Benchmark 4: median import time of each handler module in a fresh interpreter, against `import boto3`.

Each sample is a new `python` process that times, with perf_counter, only the import (interpreter start-up
excluded, module-level client creation included), with the handler's environment set as in Lambda.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.timing import median

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.3
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/bench",
    "WEBHOOK_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:webhook",
    "CRITEO_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:criteo",
    "LEDGER_TABLE": "bench-ledger",
    "DEAD_LETTER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/bench-dlq",
}
# Lambda puts the function directory first and the layer's python/ on sys.path; so do we.
_IMPORT = (
    "import sys, time\n"
    "sys.path[:0] = [{function!r}, {layer!r}]\n"
    "started = time.perf_counter()\n"
    "import {module}\n"
    "print(time.perf_counter() - started)\n"
)
SUBJECTS = {"boto3": ("", "boto3"), "ingest": ("functions/ingest", "app"), "sync": ("functions/sync", "app")}


def import_seconds(subject: str) -> float:
    """One fresh interpreter importing one module; seconds spent in the import."""
    function, module = SUBJECTS[subject]
    code = _IMPORT.format(function=str(ROOT / function), layer=str(ROOT / "layers" / "common"), module=module)
    env = {**os.environ, **ENV, "PYTHONDONTWRITEBYTECODE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict[str, Any]:
    """Median of N runs per subject (interleaved, so drift hits all alike) and the ratios to boto3."""
    runs = 3 if quick else 21
    samples: dict[str, list[float]] = {name: [] for name in SUBJECTS}
    for name in SUBJECTS:  # warm the bytecode caches once
        import_seconds(name)
    for _ in range(runs):
        for name in SUBJECTS:
            samples[name].append(import_seconds(name))
    medians = {name: median(values) for name, values in samples.items()}
    reference = medians["boto3"]
    return {
        "runs": runs,
        "reference": "import boto3",
        "reference_ms": round(reference * 1000, 1),
        "handlers": {
            name: {"median_ms": round(medians[name] * 1000, 1), "ratio": round(medians[name] / reference, 2)}
            for name in ("ingest", "sync")
        },
        "target_ratio": TARGET_RATIO,
    }
