"""`python -m bench --quick` (what `make bench-quick` runs) finishes and reports every benchmark with numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.criteo_calls import rounds

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
        [sys.executable, "-m", "bench", "--quick", "--jobs", "2", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    for section in ("criteo_calls", "sync_core", "ingest", "cold_init", "package_size", "latency", "memory", "cost"):
        assert _numbers(results[section]), f"section {section} holds no numbers"
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stream in results["criteo_calls"]:
        # Never below the minimum of the whole stream at once (computed independently), within 10% of the
        # window minimum; a burst costs fewer calls than the peer model and than the design before the outbox.
        assert 0 < stream["whole_stream_minimum"] <= stream["calls"]["patch"] <= 1.1 * stream["window_minimum"]
        if stream["mode"] == "burst":
            assert stream["peer_total"] >= stream["calls"]["total"]
            assert stream["before_patches"] >= stream["calls"]["patch"]
        assert stream["spec_violations"] == 0 and stream["drain_after_last_arrival_s"] > 0
        # Criteo's segments hold exactly what the stream says (the run raises otherwise; the figures say so too).
        assert (stream["wrong"], stream["lost"]) == (0, 0)
        assert stream["dynamodb_calls"]["rru"] > 0 and stream["dynamodb_calls"]["wru"] > 0
    assert all(row["delivered"] == row["events"] for row in results["latency"])
    # Eight workers that take turns within the allowance hold one audience's read, not eight.
    flush_pass = results["memory"]["flush_pass"]
    assert flush_pass["shared_allowance"] * 3 < flush_pass["no_allowance"]
    assert results["cost"]["total_dollars_per_million_changes"] > 0
    # PATCH round trips as billed: audiences overlap on the flusher's threads, an audience's calls do not.
    assert all(0 < s["patch_rounds"] <= s["calls"]["patch"] for s in results["criteo_calls"])


def test_a_pass_lasts_as_long_as_its_busiest_flusher_thread() -> None:
    assert rounds([], 8) == 0
    assert rounds([1] * 16, 8) == 2  # sixteen one-call audiences: two rounds on eight threads
    assert rounds([3, *[1] * 8], 8) == 3  # the eighth single call waits on a thread after one, not after three
    assert rounds([5, 4, 3], 2) == 7  # 5 | 4 then 3
    assert rounds([1, 1, 4], 2) == 5  # in the pass's order: the four-call audience comes after a single call
    assert rounds([4, 4, 4], 1) == 12
