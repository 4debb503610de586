"""Benchmark 3: events/s on one core through the real ingest handler (SQS and Secrets Manager stubbed).

Signature check, parse, validate, normalize, hash, pack and SendMessageBatch, for 1-event and 4,000-event
requests. CPU time of the calling thread, so the stub's work (another process) is not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from audience_sync.webhook_auth import signature_of
from bench.aws_stub import AwsStub
from bench.timing import best_thread_seconds
from devtools.lambda_runtime import FakeContext, load_function
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.template import powertools_env

TARGET_EVENTS_PER_SECOND = 20_000


def segment_request(events: int, seed: int = 0) -> dict[str, Any]:
    """An HTTP API v2 event carrying a signed Segment batch of audience events (emails in clear)."""
    batch = [
        {
            "type": "track",
            "event": "Audience Entered" if i % 4 else "Audience Exited",
            "messageId": f"ingest-{seed}-{i}",
            "userId": f"bench-user-{i}",
            "timestamp": "2026-11-21T10:00:00.000Z",
            "properties": {"audience_key": f"bench_audience_{i % 20:03d}", "audience_name": "Bench"},
            "context": {"traits": {"email": f"  User{i}@Example.com "}, "library": {"name": "analytics-node"}},
        }
        for i in range(events)
    ]
    body = json.dumps({"batch": batch})
    headers = {"content-type": "application/json", "x-signature": signature_of(body.encode(), DEV_WEBHOOK_SECRET)}
    return {"version": "2.0", "headers": headers, "body": body, "isBase64Encoded": False}


def run(quick: bool) -> list[dict[str, Any]]:
    """Events per CPU-second for each request size."""
    rows = []
    # EMF metrics go to stdout as in Lambda (their cost counts), but not onto the report.
    with AwsStub() as stub, open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": stub.endpoint,
            "QUEUE_URL": f"{stub.endpoint}/000000000000/bench",
            "WEBHOOK_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:bench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_METRICS_DISABLED": "true",
            **powertools_env(),
        }
        ingest = load_function("ingest", env)
        for size in (1, 4_000):
            event = segment_request(size)
            answer = ingest.handler(event, FakeContext(timeout_seconds=15))  # warm-up: secret, connection
            if answer["statusCode"] != 200 or json.loads(answer["body"])["accepted"] != size:
                raise RuntimeError(f"ingest refused the benchmark request: {answer['body'][:300]}")
            calls = max(1, (400 if quick else 40_000) // size)
            repeats = 3

            def work(event: dict[str, Any] = event, calls: int = calls) -> None:
                for _ in range(calls):
                    ingest.handler(event, FakeContext(timeout_seconds=15))

            seconds = best_thread_seconds(work, repeats) / calls
            rows.append(
                {
                    "events_per_request": size,
                    "ms_per_request": round(seconds * 1000, 3),
                    "events_per_second": round(size / seconds),
                    "target_events_per_second": TARGET_EVENTS_PER_SECOND if size > 1 else None,
                }
            )
    return rows
