"""A stream run on its own goes into the results file in place of its row, or beside the others."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pytest import MonkeyPatch

from bench import criteo_calls
from bench.one_stream import merged
from bench.streams import StreamSpec

RESULTS = json.loads((Path(__file__).resolve().parent.parent / "bench" / "results.json").read_text())


def test_a_rerun_stream_replaces_its_row_and_a_new_one_is_added_in_order_with_its_cost() -> None:
    rows = RESULTS["criteo_calls"]
    rerun = copy.deepcopy(next(r for r in rows if (r["stream"], r["mode"]) == ("1M/20", "steady")))
    rerun["calls"]["patch"] += 1
    results = merged(RESULTS, rerun)
    assert len(results["criteo_calls"]) == len(rows)
    assert [r for r in results["criteo_calls"] if r["stream"] == "1M/20" and r["mode"] == "steady"] == [rerun]
    new = {**copy.deepcopy(rows[-1]), "stream": "10M/1", "mode": "burst", "changes": 10_000_000, "audiences": 1}
    results = merged(results, new)
    assert new in results["criteo_calls"] and len(results["criteo_calls"]) == len(rows) + 1
    order = [(r["changes"], r["audiences"], r["mode"] != "burst") for r in results["criteo_calls"]]
    assert order == sorted(order)
    assert ("10M/1", "burst") in {(r["stream"], r["mode"]) for r in results["cost"]["by_stream"]}
    assert rows == RESULTS["criteo_calls"]  # the input is left as it was


def test_a_stream_kept_on_disk_runs_to_its_row_with_the_same_calls_as_in_memory(monkeypatch: MonkeyPatch) -> None:
    # The 10M streams keep the simulated table and the minimum on disk; the check of Criteo's segments against
    # the stream (in memory only) ended such a stream with a ValueError after its 74 minutes of work.
    in_memory = criteo_calls.one_stream(StreamSpec(2_000, 3), True)
    monkeypatch.setattr(criteo_calls, "ON_DISK_ABOVE", 0)
    on_disk = criteo_calls.one_stream(StreamSpec(2_000, 3), True)
    assert (in_memory["wrong"], in_memory["lost"]) == (0, 0) and "wrong" not in on_disk
    assert on_disk["calls"] == in_memory["calls"] and on_disk["window_minimum"] == in_memory["window_minimum"]
    assert on_disk["dynamodb_calls"] == in_memory["dynamodb_calls"]
