"""`make fuzz`: thousands of generated requests against the running local webhook.

Wrong types, missing and extra fields, huge strings, deep nesting, odd Unicode, wrong/missing/duplicated
headers, bad base64, bodies at and over the size limit. Passes when no answer is >= 500, the process
never crashed, every answer matches docs/webhook.openapi.yaml, and the logs hold no PII or secret.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.lambda_runtime import LAYER, FakeContext
from devtools.local_aws import DEV_CRITEO, DEV_WEBHOOK_SECRET
from devtools.local_stack import LocalStack, StackSettings
from devtools.log_scan import leaks
from devtools.webhook_contract import response_problems

sys.path.insert(0, str(LAYER))
from audience_sync.config import IngestSettings
from audience_sync.webhook_auth import signature_of

MAX_BODY_BYTES = IngestSettings.max_body_bytes  # the code's one default

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
odd_text = st.text(alphabet=st.characters(codec=None), max_size=60) | st.sampled_from(
    ["\ud800@x.io", "é@exämple.com", "\x00", "\u202e"]
)
emails = st.emails().map(str) | odd_text | st.sampled_from(["", " ", "A@B.CO", "x" * 600 + "@y.io"]) | st.integers()
timestamps = (
    st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00", "yesterday", "", "9999-12-31T23:59:59+14:00"])
    | odd_text
    | st.integers()
)


@st.composite
def segment_events(draw: st.DrawFn) -> Any:
    """Events that look like Engage's, with any field possibly wrong, missing or extra."""
    audience = draw(st.sampled_from(["fuzz_a", "fuzz_b"]) | odd_text | st.integers() | st.none())
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(["track", "identify", "page", "screen"]) | scalars),
        "event": draw(st.sampled_from(["Audience Entered", "Audience Exited", "Order Completed"]) | scalars),
        "messageId": draw(st.text(min_size=1, max_size=30) | scalars | st.just("m" * 300)),
        "timestamp": draw(timestamps),
        "properties": draw(st.fixed_dictionaries({"audience_key": st.just(audience)}) | json_values),
        "traits": draw(st.fixed_dictionaries({}, optional={"email": emails, "vip": scalars}) | json_values),
        "context": {
            "personas": draw(
                st.fixed_dictionaries({"computation_class": st.just("audience"), "computation_key": st.just(audience)})
                | json_values
            ),
            "traits": draw(st.fixed_dictionaries({}, optional={"email": emails, "phone": odd_text}) | json_values),
            "device": draw(st.fixed_dictionaries({"advertisingId": st.uuids().map(str) | odd_text}) | json_values),
        },
    }
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=3)):
        event.pop(key, None)
    event.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return event


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: an event, an array, a batch envelope, any JSON, deep nesting, or raw bytes."""
    kind = draw(st.sampled_from(["event", "array", "batch", "json", "deep", "bytes", "huge"]))
    if kind == "event":
        return json.dumps(draw(segment_events())).encode("utf-8", "surrogatepass")
    if kind == "array":
        return json.dumps(draw(st.lists(segment_events(), max_size=20))).encode("utf-8", "surrogatepass")
    if kind == "batch":
        return json.dumps({"batch": draw(st.lists(segment_events(), max_size=10) | json_values)}).encode(
            "utf-8", "surrogatepass"
        )
    if kind == "json":
        return json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        depth = draw(st.integers(100, 200_000))
        return ("[" * depth + "]" * depth).encode()
    if kind == "huge":
        return json.dumps(
            {"type": "track", "messageId": "h", "pad": "x" * draw(st.integers(10_000, 2_000_000))}
        ).encode()
    return draw(st.binary(max_size=300))


@st.composite
def header_sets(draw: st.DrawFn) -> dict[str, str]:
    """Header variations; most requests are correctly signed so that parsing gets exercised."""
    headers: dict[str, str] = {}
    choice = draw(st.sampled_from(["signed"] * 6 + ["none", "wrong", "garbage", "bearer", "type"]))
    if choice != "type":
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
    else:
        headers["Content-Type"] = draw(st.sampled_from(["text/plain", "", "application/xml", "application/json-seq"]))
    headers["_sign"] = choice
    return headers


class Fuzzer:
    """Sends generated requests and tallies the answers."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.statuses: Counter[int] = Counter()
        self.problems: list[str] = []
        self.sent = 0
        self.session = requests.Session()

    def send(self, body: bytes, headers: dict[str, str]) -> None:
        """One request through the gateway (or, for base64 cases, straight into the handler)."""
        sign = headers.pop("_sign", "signed")
        if sign in ("signed", "type"):
            headers["X-Signature"] = signature_of(body, DEV_WEBHOOK_SECRET)
        elif sign == "wrong":
            headers["X-Signature"] = signature_of(body, "not-the-secret")
        elif sign == "garbage":
            headers["X-Signature"] = "zz\u00e9"
        elif sign == "bearer":
            headers["Authorization"] = f"Bearer {DEV_WEBHOOK_SECRET}x"
        try:
            response = self.session.post(self.stack.gateway.url, data=body, headers=headers, timeout=60)
            self.record(response.status_code, response.json())
        except (requests.RequestException, ValueError) as error:
            self.problems.append(f"request failed: {type(error).__name__}")

    def send_event(self, event: dict[str, Any]) -> None:
        """An API Gateway event straight into the handler (bad base64, duplicated headers)."""
        result = self.stack.ingest.handler(event, FakeContext(timeout_seconds=15))
        self.record(result["statusCode"], json.loads(result["body"]))

    def record(self, status: int, body: Any) -> None:
        """Tally one answer and check it against the contract."""
        self.sent += 1
        self.statuses[status] += 1
        if status >= 500:
            self.problems.append(f"{status}: {json.dumps(body)[:200]}")
        for problem in response_problems(status, body):
            self.problems.append(f"{status} breaks the contract: {problem}")
        if self.sent % 200 == 0:
            self.empty_queue()
            print(
                f"\r  {self.sent:,} requests, {dict(sorted(self.statuses.items()))}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def empty_queue(self) -> None:
        """Delete what was queued so far (moto's SQS slows down as the queue grows)."""
        sqs = self.stack.aws.client("sqs")
        while messages := sqs.receive_message(QueueUrl=self.stack.aws.queue_url, MaxNumberOfMessages=10).get(
            "Messages"
        ):
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
            sqs.delete_message_batch(QueueUrl=self.stack.aws.queue_url, Entries=entries)

    def edge_cases(self) -> None:
        """Fixed cases hypothesis would rarely hit: size limits, bad base64, duplicated headers."""
        properties: dict[str, str] = {"audience_key": "a", "pad": ""}
        event: dict[str, Any] = {
            "type": "track",
            "event": "Audience Entered",
            "messageId": "e",
            "timestamp": "2026-11-20T10:00:00Z",
            "properties": properties,
            "context": {"traits": {"email": "a@b.co"}},
        }
        base = len(json.dumps(event))
        for size in (MAX_BODY_BYTES, MAX_BODY_BYTES + 1):
            properties["pad"] = "x" * (size - base)
            body = json.dumps(event).encode()
            assert len(body) == size
            self.send(body, {"Content-Type": "application/json", "_sign": "signed"})
        body = json.dumps(event).encode()
        for raw, encoded in (("@@@", True), (base64.b64encode(b"\xff\xfe").decode(), True), (body.decode(), False)):
            self.send_event(
                {
                    "headers": {
                        "content-type": "application/json",
                        "x-signature": signature_of(body, DEV_WEBHOOK_SECRET),
                    },
                    "body": raw,
                    "isBase64Encoded": encoded,
                }
            )
        self.send_event({"headers": None, "body": None})
        self.send(body, {"Content-Type": "application/json", "X-Signature": "a,b", "_sign": "none"})


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz campaign and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    log_file = Path(tempfile.mkstemp(prefix="fuzz-logs-", suffix=".jsonl")[1])
    started = time.monotonic()
    quiet = StackSettings(gateway_port=0, moto_port=0, criteo_port=0, with_poller=False, log_level="INFO")
    with log_file.open("w") as logs, contextlib.redirect_stdout(logs), LocalStack(quiet) as stack:
        fuzzer = Fuzzer(stack)
        fuzzer.edge_cases()

        @settings(
            max_examples=args.requests,
            database=None,
            deadline=None,
            derandomize=args.seed == 0,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=bodies(), headers=header_sets())
        def campaign(body: bytes, headers: dict[str, str]) -> None:
            fuzzer.send(body, dict(headers))

        campaign()
    log_text = log_file.read_text(errors="replace")
    found = leaks(log_text, [DEV_WEBHOOK_SECRET, DEV_CRITEO["client_secret"]])
    print(file=sys.stderr)
    print(f"fuzz: {fuzzer.sent:,} requests in {time.monotonic() - started:.0f}s")
    print("  by status: " + ", ".join(f"{status}: {count:,}" for status, count in sorted(fuzzer.statuses.items())))
    print(
        f"  >= 500: {sum(c for s, c in fuzzer.statuses.items() if s >= 500)}, contract problems: {len(fuzzer.problems)}"
    )
    print(f"  log lines scanned: {log_text.count(chr(10)):,}, leaks: {len(found)}")
    for problem in (fuzzer.problems + found)[:20]:
        print(f"  ! {problem}")
    return 1 if fuzzer.problems or found else 0


if __name__ == "__main__":
    raise SystemExit(main())
