"""`make local`: run the whole pipeline on loopback, replay events/payloads, show the Criteo audiences.

python -m devtools.local_pipeline                 replay the samples, print the summary, stop
python -m devtools.local_pipeline --serve         ... then keep running for your own curl calls (a line per
                                                  webhook request and per sync batch: counts only, no PII)
python -m devtools.local_pipeline --load 100000   ... also send a generated load (progress bar)
python -m devtools.local_pipeline --state         the summary table of a running --serve (`make state`): waits
                                                  until its queue has drained (the batching window), then prints

A port another program holds stops it at once with one line naming the port and the flag to change (exit 1).
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
from werkzeug.wrappers import Request

from devtools.lambda_runtime import LAYER
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.local_stack import LocalStack, PortInUse, StackSettings, SyncBatch
from segment_criteo.dlq import peek

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
        print(f"  {name:<34} {response.status_code:>6}  {describe_answer(response.json())}")


def describe_answer(answer: Any, with_message: bool = True) -> str:
    """The webhook's answer in one line: counts, or the error code (and message): never an identifier."""
    if isinstance(answer, dict) and "accepted" in answer:
        text = f"accepted {answer['accepted']}, ignored {answer['ignored']}, rejected {answer['rejected']}"
        text += f" -> {answer.get('records', 0)} records in {answer.get('messages', 0)} SQS message(s)"
        return text + (f" ({answer['error']['code']})" if isinstance(answer.get("error"), dict) else "")
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        return f"{error.get('code')}: {error.get('message')}" if with_message else str(error.get("code"))
    if isinstance(answer, dict) and "message" in answer:  # the gateway's own 404/413, as API Gateway words them
        return str(answer["message"])
    return "(no JSON answer)"


def stamp() -> str:
    """Wall-clock time for the serve log."""
    return time.strftime("%H:%M:%S")


def print_request(status: int, answer: Any, seconds: float) -> None:
    """`make serve`: one line per webhook request."""
    text = describe_answer(answer, with_message=False)
    print(f"{stamp()} webhook  {status}  {text}  ({seconds * 1000:.0f} ms)", flush=True)


def print_batch(batch: SyncBatch) -> None:
    """`make serve`: one line per sync invocation."""
    report = batch.report
    outcome = "crashed: whole batch retried" if report.crashed else f"{report.failed} failed (retried)"
    outcome = outcome if report.failed else "all done"
    print(
        f"{stamp()} sync #{batch.number}  {report.messages} message(s) -> {batch.patches} PATCH(es):"
        f" +{batch.added} / -{batch.removed} identifiers, {batch.invalid} invalid; {outcome}"
        f"  ({report.seconds * 1000:.0f} ms)",
        flush=True,
    )


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
    return peek(stack.aws.client("sqs"), stack.aws.dead_letter_queue_url)


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
    """A table a person can read at a glance, with a legend."""
    print("\nCriteo audiences:")
    print(
        f"  {'segment name':<30} {'id':>8} {'users':>6}  {'identifiers':<22} {'added':>7} {'removed':>7} {'invalid':>7}"
    )
    for name, row in result["audiences"].items():
        members = ", ".join(f"{count} {kind}" for kind, count in sorted(row["members"].items())) or "0"
        print(
            f"  {name:<30} {row['id']:>8} {row['users']:>6}  {members:<22}"
            f" {row['added']:>7} {row['removed']:>7} {row['invalid']:>7}"
        )
    if not result["audiences"]:
        print("  (none yet)")
    print("  users        Segment users in the audience whose identifiers Criteo holds (the membership ledger)")
    print("  identifiers  what the Criteo segment holds now, by identifier type (emulator state)")
    print("  added, removed, invalid  identifiers Criteo counted over all PATCHes (invalid: refused by Criteo)")
    calls = result["criteo_calls"]
    total = sum(calls.values())
    print(
        f"\nCriteo calls: {total} ({', '.join(f'{v} {k}' for k, v in calls.items())})"
        f" over {result['sync_invocations']} sync invocation(s)"
    )
    parked = result["dead_letters"]
    print("Dead-letter queue: " + ("empty" if not parked else "; ".join(f"{n} x {r}" for r, n in parked.items())))


def serve_summary(stack: LocalStack) -> Any:
    """GET /__local/summary on the gateway: the summary once the queue has drained (`?wait=0`: at once)."""

    def route(request: Request) -> dict[str, Any]:
        drained = True
        if request.args.get("wait", "1") != "0":
            try:
                stack.wait_until_drained(max_seconds=float(request.args.get("max", "60")))
            except TimeoutError:
                drained = False
        return {**summary(stack), "drained": drained}

    return route


def show_state(port: int, as_json: bool) -> int:
    """`make state`: the summary of the `--serve` stack whose gateway listens on `port`."""
    url = f"http://127.0.0.1:{port}/__local/summary"
    print(f"Waiting for the serve stack's queue to drain (its batching window): {url} ...", flush=True)
    try:
        response = requests.get(url, timeout=120)
    except requests.ConnectionError:
        print(
            f"error: nothing answers on 127.0.0.1:{port}: start `make serve` first (in another terminal),"
            " or name its gateway port with --gateway-port PORT",
            file=sys.stderr,
        )
        return 1
    except requests.RequestException as error:
        print(f"error: no summary from 127.0.0.1:{port} ({type(error).__name__})", file=sys.stderr)
        return 1
    try:
        result = response.json()
    except ValueError:
        result = None
    if response.status_code != 200 or not isinstance(result, dict) or "audiences" not in result:
        print(
            f"error: 127.0.0.1:{port} answers {response.status_code} but is not a `make serve` gateway:"
            " name the right one with --gateway-port PORT",
            file=sys.stderr,
        )
        return 1
    if not result.pop("drained", True):
        print("(the queue has not drained yet: the table shows the state so far)")
    print_summary(result)
    if as_json:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the local pipeline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep the stack running after the replay (Ctrl-C stops)")
    parser.add_argument("--state", action="store_true", help="print the summary of a running --serve, then exit")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="also send N generated events")
    parser.add_argument("--gateway-port", type=int, default=3000, help="0 picks a free port")
    parser.add_argument("--moto-port", type=int, default=4566, help="0 picks a free port (env.json expects 4566)")
    parser.add_argument("--criteo-port", type=int, default=8642, help="0 picks a free port (env.json expects 8642)")
    parser.add_argument("--batch-size", type=int, default=1000, help="SQS messages per sync invocation")
    parser.add_argument("--window", type=float, default=1.0, help="batching window in seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args(argv)
    if args.state:
        return show_state(args.gateway_port, args.json)
    # Ctrl-C and SIGTERM stop the stack, even when started from a script's background job (which ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
            stack.gateway.routes["summary"] = serve_summary(stack)
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
                state = "make state" + (
                    f" ARGS='--gateway-port {stack.gateway.server.port}'" if args.gateway_port != 3000 else ""
                )
                print(
                    f"\nServing. Send your own Segment payloads (see README, 'Try it with curl') to {stack.gateway.url}"
                )
                print(f"The table again, once the queue has drained: {state}   Stop: Ctrl-C")
                print("One line per webhook request and per sync batch (counts only):", flush=True)
                stack.gateway.on_answer = print_request
                stack.report_batches(print_batch)
                threading.Event().wait()
    except PortInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
