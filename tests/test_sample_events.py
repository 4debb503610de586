"""events/ are valid for the local secret and do what their names say through the real handlers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Stack
from tests.segment_events import answer

EVENTS = Path(__file__).resolve().parent.parent / "events"


def test_event_files_are_up_to_date_with_their_payloads() -> None:
    result = subprocess.run([sys.executable, "-m", "devtools.sample_events", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_each_sample_gets_its_documented_answer(stack: Stack) -> None:
    expected = {
        "ingest_audience_entered.json": (200, 1),
        "ingest_audience_exited.json": (200, 1),
        "ingest_identify_audience.json": (200, 1),
        "ingest_batch_mixed.json": (200, 8),
        "ingest_bad_signature.json": (401, None),
        "ingest_malformed_body.json": (400, None),
    }
    for name, (status, accepted) in expected.items():
        got_status, body = answer(stack.invoke_ingest(json.loads((EVENTS / name).read_text())))
        assert got_status == status, name
        assert body.get("accepted") == accepted, name


def test_sqs_sample_syncs_to_criteo(stack: Stack) -> None:
    from devtools.lambda_runtime import FakeContext

    event = json.loads((EVENTS / "sync_sqs_batch.json").read_text())
    assert stack.sync.handler(event, FakeContext()) == {"batchItemFailures": []}
    segments = stack.criteo.segments()
    assert sorted(segments) == ["segment_cart_abandoners_7d", "segment_high_value_buyers", "segment_lapsed_subscribers"]
    lapsed = segments["segment_lapsed_subscribers"]["members"]["email"]
    assert len(lapsed) == 1  # sam entered then exited in the same batch; noor stays
