"""Write events/*.json (API Gateway v2 and SQS events for `sam local invoke`) from events/payloads/.

Signatures are computed with the local development secret, so the files stay valid when a payload
changes: run `python -m devtools.sample_events` after editing a payload (a test checks they match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from devtools.lambda_runtime import LAYER
from devtools.local_aws import DEV_WEBHOOK_SECRET

sys.path.insert(0, str(LAYER))
from audience_sync.records import pack_changes
from audience_sync.segment import ParserSettings, SegmentEventParser, parse_events
from audience_sync.webhook_auth import signature_of

EVENTS = Path(__file__).resolve().parent.parent / "events"
PAYLOADS = EVENTS / "payloads"


def http_event(body: str, signature: str | None) -> dict[str, Any]:
    """An HTTP API (payload v2) event for POST /segment, as API Gateway sends it."""
    headers = {"content-type": "application/json", "user-agent": "Segment.io/1.0", "host": "localhost"}
    if signature is not None:
        headers["x-signature"] = signature
    return {
        "version": "2.0",
        "routeKey": "POST /segment",
        "rawPath": "/segment",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {"method": "POST", "path": "/segment", "sourceIp": "54.0.0.1"},
            "requestId": "local-sample",
            "stage": "$default",
            "timeEpoch": 1795000000000,
        },
        "body": body,
        "isBase64Encoded": False,
    }


def sqs_event(bodies: list[str]) -> dict[str, Any]:
    """An SQS event as the event source mapping hands it to the sync function."""
    return {
        "Records": [
            {
                "messageId": f"00000000-0000-4000-8000-{index:012d}",
                "receiptHandle": f"local-sample-{index}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795000000000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:local-audience-changes",
                "awsRegion": "us-east-1",
            }
            for index, body in enumerate(bodies)
        ]
    }


def sample_events() -> dict[str, dict[str, Any]]:
    """File name → event, for every scenario."""
    events: dict[str, dict[str, Any]] = {}
    for payload in sorted(PAYLOADS.glob("*.json")):
        body = json.dumps(json.loads(payload.read_text()), separators=(",", ":"))
        events[f"ingest_{payload.stem}.json"] = http_event(body, signature_of(body.encode(), DEV_WEBHOOK_SECRET))
    entered = events["ingest_audience_entered.json"]["body"]
    events["ingest_bad_signature.json"] = http_event(entered, "0" * 40)
    malformed = '{"type": "track", "event": "Audience Entered", '
    events["ingest_malformed_body.json"] = http_event(malformed, signature_of(malformed.encode(), DEV_WEBHOOK_SECRET))
    parser = SegmentEventParser(ParserSettings(identifier_types=frozenset({"email", "madid"})))
    changes = parser.parse(parse_events((PAYLOADS / "batch_mixed.json").read_bytes())).changes
    events["sync_sqs_batch.json"] = sqs_event(list(pack_changes(changes, max_bytes=1024)))
    return events


def main() -> int:
    """Write the files, or with --check report any that are out of date."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a file differs instead of writing it")
    args = parser.parse_args()
    stale = []
    for name, event in sample_events().items():
        text = json.dumps(event, indent=2) + "\n"
        path = EVENTS / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m devtools.sample_events): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
