"""A stream run on its own goes into the results file in place of its row, or beside the others."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.one_stream import merged

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
