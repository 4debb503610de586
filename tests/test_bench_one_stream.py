"""A stream run on its own goes into the results file in place of its row, or beside the others."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, cast

from pytest import MonkeyPatch

from audience_sync.records import AudienceChange
from audience_sync.sync import SyncOptions
from bench import criteo_calls
from bench.disk import DiskDict
from bench.one_stream import merged
from bench.servers import new_emulator
from bench.streams import StreamSpec
from devtools.minimum import WindowMinimum

RESULTS = json.loads((Path(__file__).resolve().parent.parent / "bench" / "results.json").read_text())


def test_a_rerun_stream_replaces_its_row_and_a_new_one_is_added_in_order_with_its_cost() -> None:
    rows = RESULTS["criteo_calls"]
    rerun = copy.deepcopy(next(r for r in rows if (r["stream"], r["mode"]) == ("1M/20", "steady")))
    rerun["calls"]["patch"] += 1
    results = merged(RESULTS, rerun)
    assert len(results["criteo_calls"]) == len(rows)
    assert [r for r in results["criteo_calls"] if r["stream"] == "1M/20" and r["mode"] == "steady"] == [rerun]
    # A stream no results file holds (the real 10M rows come and go as they are run).
    new = {**copy.deepcopy(rows[-1]), "stream": "10M/7", "mode": "burst", "changes": 10_000_000, "audiences": 7}
    results = merged(results, new)
    assert new in results["criteo_calls"] and len(results["criteo_calls"]) == len(rows) + 1
    order = [(r["changes"], r["audiences"], r["mode"] != "burst") for r in results["criteo_calls"]]
    assert order == sorted(order)
    assert ("10M/7", "burst") in {(r["stream"], r["mode"]) for r in results["cost"]["by_stream"]}
    assert rows == RESULTS["criteo_calls"]  # the input is left as it was


def test_a_stream_kept_on_disk_runs_to_its_row_with_the_same_calls_as_in_memory(monkeypatch: MonkeyPatch) -> None:
    # The 10M streams keep the simulated table and the minimum on disk; the check of Criteo's segments against
    # the stream (once in memory only) ended such a stream with a ValueError after its 74 minutes of work, and
    # then was skipped on disk. It now reads the whole-stream minimum's states, on disk as in memory.
    in_memory = criteo_calls.one_stream(StreamSpec(2_000, 3), True)
    monkeypatch.setattr(criteo_calls, "ON_DISK_ABOVE", 0)
    on_disk = criteo_calls.one_stream(StreamSpec(2_000, 3), True)
    assert (in_memory["wrong"], in_memory["lost"]) == (0, 0) == (on_disk["wrong"], on_disk["lost"])
    assert on_disk["calls"] == in_memory["calls"] and on_disk["window_minimum"] == in_memory["window_minimum"]
    assert on_disk["dynamodb_calls"] == in_memory["dynamodb_calls"]


def test_the_check_of_segments_kept_on_disk_counts_an_identifier_missing_and_one_held_too_long() -> None:
    stays = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # SHA-256 of "test@example.com"
    leaves = "8b1a9953c4611296a827abf8c47804d7e6c49c6b2f0b7bff26b0d8c9b7e7c3fa"
    changes = [
        AudienceChange("vip", "", "add", "u1", 1_000, "m1", {"email": [stays]}),
        AudienceChange("vip", "", "add", "u2", 1_000, "m2", {"email": [leaves]}),
        AudienceChange("vip", "", "remove", "u2", 2_000, "m3", {}),  # an exit carrying no identifier
    ]
    minimum = WindowMinimum(math.inf, 200, cast(Any, DiskDict()))
    for change in changes:
        minimum.add(0.0, change)
    emulator = new_emulator()
    segment = emulator.state.create(emulator.advertiser_id, SyncOptions().name_prefix + "vip", None)
    assert segment is not None
    segment.members["email"] = {leaves}  # u1's identifier lost, u2's still held after u2 left
    assert criteo_calls.membership_errors(emulator, minimum) == (1, 1)
    segment.members["email"] = {stays}
    assert criteo_calls.membership_errors(emulator, minimum) == (0, 0)
