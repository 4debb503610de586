"""The chaos soak, CI-sized: the same code as `make chaos` with a few thousand events."""

from __future__ import annotations

import json
import re
import sys

from devtools.chaos import compare
from devtools.chaos_events import KINDS, criteo_identifier, expected_members, generate
from tests.conftest import run_bounded
from tests.test_chaos_events import CI_AUDIENCES, CI_EVENTS

CI_SOAK = [
    *("--events", str(CI_EVENTS), "--audiences", str(CI_AUDIENCES), "--batch-size", "4", "--function-timeout", "9"),
    *("--max-receive-count", "8", "--expire-tokens-every", "3", "--rate-limit", "10", "--rate-window-seconds", "1"),
]


def test_ci_sized_chaos_soak_ends_exact() -> None:
    done = run_bounded([sys.executable, "-m", "devtools.chaos", *CI_SOAK, "--json"], timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "wrong = 0, lost = 0" in done.stdout and "\nPASS" in done.stdout
    assert re.search(r"Log scan: [1-9][\d,]* lines .*: 0 found", done.stdout)  # the logs were there, and clean
    figures = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert figures["sync"]["killed_mid_patch"]["patches_applied_before_kill"] == 3  # inside an invocation
    assert figures["sync"]["workers_started"] >= 2
    assert figures["ingest"]["accepted"] == figures["events"]["sent"] > figures["events"]["unique"]
    patch_statuses = figures["criteo_calls"]["patch"]
    assert {"200", "429", "503"} <= set(patch_statuses), "the soak must actually inject 5xx and 429"
    assert figures["sync"]["token_expiries_forced"] >= 1 and figures["sync"]["handler_metrics"]["criteo_retries"] >= 1
    assert figures["dead_letters"] == {} and figures["spec_violations"] == []
    assert all(figures["events"]["kinds"][kind] > 0 for kind in KINDS), figures["events"]["kinds"]
    assert 0 < figures["events"]["in_pairs_with_consent"] < figures["events"]["in_pairs"]


def test_truth_is_independent_and_the_comparison_catches_differences() -> None:
    stream = generate(200, 2, seed=5)
    assert len(stream.delivered) > len(stream.events) and stream.flipped_pairs > 0
    expected = expected_members(stream.events)
    email = next(
        e.payload()["context"]["traits"]["email"]
        for e in stream.events
        if "email" in e.payload()["context"].get("traits", {})
    )
    assert criteo_identifier("email", email) == criteo_identifier("email", f"  {email.upper()} ")
    assert criteo_identifier("phoneNumber", "+44 (20) 1234-5678") == criteo_identifier("phoneNumber", "442012345678")
    actual = {name: {"members": {t: sorted(v) for t, v in by_type.items()}} for name, by_type in expected.items()}
    assert all(row["wrong"] == row["lost"] == 0 for row in compare(expected, actual).values())
    name = next(n for n, by_type in expected.items() if by_type["email"])
    members = actual[name]["members"]
    members["email"] = [*members["email"][1:], "f" * 64]  # one lost, one wrong
    row = compare(expected, actual)[name]
    assert (row["wrong"], row["lost"]) == (1, 1)
