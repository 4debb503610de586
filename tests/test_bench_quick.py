"""`python -m bench --quick` (what `make bench-quick` runs) finishes and reports every benchmark with numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=ROOT, check=True, timeout=120
    )
    results = json.loads((tmp_path / "results.json").read_text())
    for section in ("criteo_calls", "sync_core", "ingest", "cold_init", "package_size", "latency", "cost"):
        assert _numbers(results[section]), f"section {section} holds no numbers"
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stream in results["criteo_calls"]:
        # Our calls can't go below the independently computed minimum, and the peer model makes more.
        assert stream["calls"]["patch"] >= stream["minimum"]["patches_per_batch"] > 0
        assert stream["peer"]["total"] >= stream["calls"]["total"]
        assert stream["spec_violations"] == 0
        # The ledger reads every (audience, user) pair a batch touches, and writes them and the leases.
        assert stream["dynamodb_capacity"]["rru"] >= stream["minimum"]["user_pairs"] > 0
        assert stream["dynamodb_capacity"]["wru"] > 0
    assert all(row["delivered"] == row["events"] for row in results["latency"])
    assert results["cost"]["total_dollars_per_million_changes"] > 0
