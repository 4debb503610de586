"""`make local`: run the whole pipeline on loopback, replay events/payloads, show the Criteo audiences.

python -m devtools.local_pipeline                 replay the samples, print the summary, stop
python -m devtools.local_pipeline --serve         ... then keep running for your own curl calls
python -m devtools.local_pipeline --load 100000   ... also send a generated load (progress bar)
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from devtools.lambda_runtime import LAYER
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.local_stack import LocalStack, StackSettings

sys.path.insert(0, str(LAYER))
from audience_sync.webhook_auth import signature_of

PAYLOADS = Path(__file__).resolve().parent.parent / "events" / "payloads"
LOAD_EVENTS_PER_REQUEST = 1000


def post(url: str, body: bytes, secret: str = DEV_WEBHOOK_SECRET) -> requests.Response:
    """POST a body to the gateway, signed like Segment signs it."""
    headers = {"Content-Type": "application/json", "X-Signature": signature_of(body, secret)}
    return requests.post(url, data=body, headers=headers, timeout=60)


def replay_samples(url: str) -> None:
    """Send every sample payload (plus a badly signed and a malformed one) and print the answers."""
    print(f"\nReplaying {PAYLOADS.relative_to(Path.cwd()) if PAYLOADS.is_relative_to(Path.cwd()) else PAYLOADS}:")
    print(f"  {'request':<34} {'status':>6}  answer")
    cases = [(p.name, p.read_bytes(), DEV_WEBHOOK_SECRET) for p in sorted(PAYLOADS.glob("*.json"))]
    cases += [
        ("(bad signature)", (PAYLOADS / "audience_entered.json").read_bytes(), "not-the-secret"),
        ("(malformed JSON)", b'{"type": "track", ', DEV_WEBHOOK_SECRET),
    ]
    for name, body, secret in cases:
        response = post(url, body, secret)
        answer = response.json()
        if "accepted" in answer:
            text = f"accepted {answer['accepted']}, ignored {answer['ignored']}, rejected {answer['rejected']}"
            text += f" -> {answer['records']} records in {answer['messages']} SQS message(s)"
        else:
            text = f"{answer['error']['code']}: {answer['error']['message']}"
        print(f"  {name:<34} {response.status_code:>6}  {text}")


def generated_load(url: str, events: int, audiences: int = 20, seed: int = 1) -> None:
    """Send `events` random enter/exit events over `audiences` audiences, with a progress bar."""
    rng = random.Random(seed)
    users = max(10, events // 3)
    sent = 0
    started = time.monotonic()
    while sent < events:
        batch = []
        for index in range(sent, min(events, sent + LOAD_EVENTS_PER_REQUEST)):
            entered = rng.random() < 0.7
            audience = f"load_audience_{rng.randrange(audiences):02d}"
            user = rng.randrange(users)
            batch.append(
                {
                    "type": "track",
                    "event": "Audience Entered" if entered else "Audience Exited",
                    "messageId": f"load-{seed}-{index}",
                    "timestamp": f"2026-11-21T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
                    "userId": f"load-user-{user}",
                    "properties": {"audience_key": audience},
                    "context": {"traits": {"email": f"user{user}@example.com"}},
                }
            )
        response = post(url, json.dumps(batch).encode())
        response.raise_for_status()
        sent += len(batch)
        done = sent / events
        rate = sent / max(1e-6, time.monotonic() - started)
        print(
            f"\r  sending [{'#' * int(done * 40):<40}] {sent:>9,}/{events:,} events  {rate:,.0f}/s", end="", flush=True
        )
    print()


def dead_letters(stack: LocalStack) -> Counter[str]:
    """Reasons of the messages parked in the DLQ (peeked, left in place)."""
    sqs = stack.aws.client("sqs")
    reasons: Counter[str] = Counter()
    seen: set[str] = set()
    for _ in range(100):
        messages = sqs.receive_message(
            QueueUrl=stack.aws.dead_letter_queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=5,
        ).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen.add(message["MessageId"])
            reason = message.get("MessageAttributes", {}).get("reason", {}).get("StringValue", "max receives reached")
            reasons[reason] += 1
    return reasons


def ledger_users(stack: LocalStack) -> Counter[str]:
    """Users per audience whose identifiers Criteo holds, according to the membership ledger (a Scan: local only)."""
    dynamodb = stack.aws.client("dynamodb")
    users: Counter[str] = Counter()
    arguments: dict[str, Any] = {"TableName": stack.aws.ledger_table, "FilterExpression": "#l = :t"}
    arguments.update(ExpressionAttributeNames={"#l": "live"}, ExpressionAttributeValues={":t": {"BOOL": True}})
    while True:
        page = dynamodb.scan(**arguments)
        users.update(item["sk"]["S"].removeprefix("a#") for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return users
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def summary(stack: LocalStack) -> dict[str, Any]:
    """Per audience: segment id, members now, identifiers added/removed, invalid; plus calls and DLQ."""
    segments = stack.criteo.segments()
    by_id: dict[str, Counter[str]] = {}
    for patch in stack.criteo.patch_log:
        counter = by_id.setdefault(str(patch["segment_id"]), Counter())
        counter[patch["operation"]] += int(patch["valid"])
        counter["invalid"] += int(patch["invalid"])
    users = ledger_users(stack)
    audiences = {}
    for name, segment in sorted(segments.items()):
        changes = by_id.get(str(segment["id"]), Counter())
        audiences[name] = {
            "id": segment["id"],
            "users": users.get(name.removeprefix(stack.env.get("AUDIENCE_NAME_PREFIX", "segment_")), 0),
            "members": {kind: len(values) for kind, values in segment["members"].items() if values},
            "added": changes["add"],
            "removed": changes["remove"],
            "invalid": changes["invalid"],
        }
    calls = {kind: stack.criteo.count(kind) for kind in ("token", "search", "create", "patch")}
    return {
        "audiences": audiences,
        "criteo_calls": calls,
        "dead_letters": dict(dead_letters(stack)),
        "sync_invocations": stack.poller.stats.invocations,
    }


def print_summary(result: dict[str, Any]) -> None:
    """A table a person can read at a glance."""
    print("\nCriteo audiences (emulator state; users from the membership ledger):")
    print(
        f"  {'segment name':<30} {'id':>8} {'users':>6}  {'identifiers':<22} {'added':>7} {'removed':>7} {'invalid':>7}"
    )
    for name, row in result["audiences"].items():
        members = ", ".join(f"{count} {kind}" for kind, count in sorted(row["members"].items())) or "0"
        print(
            f"  {name:<30} {row['id']:>8} {row['users']:>6}  {members:<22}"
            f" {row['added']:>7} {row['removed']:>7} {row['invalid']:>7}"
        )
    print(
        "  users: members of the audience that Criteo holds; identifiers: what the segment holds now;"
        " added/removed/invalid: identifiers counted by Criteo over all PATCHes"
    )
    calls = result["criteo_calls"]
    total = sum(calls.values())
    print(
        f"\nCriteo calls: {total} ({', '.join(f'{v} {k}' for k, v in calls.items())})"
        f" over {result['sync_invocations']} sync invocation(s)"
    )
    parked = result["dead_letters"]
    print("Dead-letter queue: " + ("empty" if not parked else "; ".join(f"{n} x {r}" for r, n in parked.items())))


def main(argv: list[str] | None = None) -> int:
    """Run the local pipeline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep the stack running after the replay (Ctrl-C stops)")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="also send N generated events")
    parser.add_argument("--gateway-port", type=int, default=3000)
    parser.add_argument("--moto-port", type=int, default=4566, help="0 picks a free port (env.json expects 4566)")
    parser.add_argument("--criteo-port", type=int, default=8642, help="0 picks a free port (env.json expects 8642)")
    parser.add_argument("--batch-size", type=int, default=1000, help="SQS messages per sync invocation")
    parser.add_argument("--window", type=float, default=1.0, help="batching window in seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    settings = StackSettings(
        gateway_port=args.gateway_port,
        moto_port=args.moto_port,
        criteo_port=args.criteo_port,
        batch_size=args.batch_size,
        window_seconds=args.window,
    )
    try:
        with LocalStack(settings) as stack:
            print(f"Local stack up: webhook {stack.gateway.url}")
            print(f"  moto {stack.aws.endpoint} | Criteo emulator {stack.criteo.url}")
            replay_samples(stack.gateway.url)
            if args.load:
                print(f"\nGenerated load: {args.load:,} events over 20 audiences")
                generated_load(stack.gateway.url, args.load)
            started = time.monotonic()
            stack.wait_until_drained()
            print(f"Queue drained in {time.monotonic() - started:.1f}s")
            result = summary(stack)
            print_summary(result)
            if args.json:
                print(json.dumps(result, indent=2))
            if args.serve:
                print(
                    f"\nServing. Send your own Segment payloads (see README, 'Try it with curl') to {stack.gateway.url}"
                )
                print(f"Inspect Criteo state: curl {stack.criteo.url}/__admin/state   Stop: Ctrl-C")
                threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
