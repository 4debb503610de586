"""`make chaos`: a chaos soak of the whole pipeline on loopback, checked against an independent truth.

Events go signed through the HTTP gateway and the real ingest handler into moto SQS; a sync worker
process (the poller + the real sync handler) drains it while the Criteo emulator injects 5xx, 429
windows with x-ratelimit-* headers, latency and token expiry; the worker is SIGKILLed once while Criteo holds
the answer to a PATCH it applied, and restarted. The expected audiences come from the generated events alone
(devtools/chaos_events.py)
(per user: identifiers, same-timestamp sends, email changes, exits without identifiers, future clocks,
zero/limited advertising ids, consent granted and withdrawn; the handlers run with CONSENT_CATEGORIES=
Advertising) and are compared with the emulator's own state (GET /__admin/state). Exit status 1 on any difference,
on anything in the dead-letter queue, on a missed kill, a spec violation or PII in the logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from devtools.chaos_events import (
    ID_TYPES,
    REQUIRED_CONSENT,
    ChaosEvent,
    consent_granted,
    expected_members,
    generate,
    members_in,
    rules_for,
    single_batch_patches,
)
from devtools.local_aws import DEV_CRITEO, DEV_WEBHOOK_SECRET
from devtools.local_pipeline import dead_letters, post
from devtools.local_stack import LocalStack, StackSettings
from devtools.log_scan import leaks
from devtools.sync_worker import WorkerConfig, WorkerProcess


@dataclass
class ChaosSettings:
    """Size of the soak and the faults it injects (defaults: the full `make chaos`)."""

    events: int = 100_000
    audiences: int = 20
    seed: int = 1
    duplicate_share: float = 0.1
    request_size: int = 1000
    batch_size: int = 100
    window_seconds: float = 0.5
    function_timeout: int = 60
    max_receive_count: int = 5
    error_rate: float = 0.2
    rate_limit: int = 15
    rate_window_seconds: float = 1.0
    latency_seconds: float = 0.005
    expire_tokens_every: float = 7.0
    kill_at_patch: int = 3  # the worker is SIGKILLed while Criteo holds the answer to this applied PATCH
    flush_interval: int = 5  # FLUSH_INTERVAL_SECONDS: changes wait this long to share calls (template: 60)
    # CRITEO_CALLS_PER_MINUTE, the budget every flush shares (0: the local stack's 60,000, far above the
    # emulator's rate limit, so each pass sends all that is due; the 1M-event soak sets it under that limit)
    calls_per_minute: int = 0
    max_drain_seconds: float = 900.0
    keep_logs: bool = False  # keep the worker log and batch report in a temporary directory


@dataclass
class Ingested:
    """What the Segment side saw."""

    requests: int = 0
    retried: int = 0
    accepted: int = 0
    records: int = 0
    messages: int = 0
    refused: list[str] = field(default_factory=list)
    finished: float = 0.0


def send_stream(url: str, stream: list[ChaosEvent], size: int, out: Ingested) -> None:
    """POST the stream in signed requests of `size` events; retry 5xx and dropped connections like Segment."""
    for start in range(0, len(stream), size):
        body = json.dumps([event.payload() for event in stream[start : start + size]]).encode()
        while True:
            out.requests += 1
            try:
                response = post(url, body)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code < 500:
                break
            out.retried += 1
            time.sleep(0.2)
        answer = response.json()
        if response.status_code != 200 or answer.get("rejected"):
            out.refused.append(f"{response.status_code}: {str(answer)[:200]}")
        out.accepted += int(answer.get("accepted", 0))
        out.records += int(answer.get("records", 0))
        out.messages += int(answer.get("messages", 0))
    out.finished = time.monotonic()


class TokenExpirer(threading.Thread):
    """Expires every issued Criteo token at a fixed period (what a revoked or aged token looks like)."""

    def __init__(self, stack: LocalStack, every: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.every, self.count = stack, every, 0
        self.done = threading.Event()

    def run(self) -> None:
        while self.every > 0 and not self.done.wait(self.every):
            self.stack.criteo.expire_tokens()
            self.count += 1


class Workers:
    """The sync worker processes of a run (a new one is a cold Lambda container)."""

    def __init__(self, stack: LocalStack, settings: ChaosSettings, workdir: Path) -> None:
        self.stack, self.settings, self.workdir = stack, settings, workdir
        self.log = (workdir / "worker.log").open("wb")
        self.started: list[WorkerProcess] = []
        self.killed: dict[str, Any] | None = None

    def start(self) -> WorkerProcess:
        """A new worker process."""
        config = WorkerConfig(
            aws=asdict(self.stack.aws),
            env={**self.stack.env, "POWERTOOLS_METRICS_DISABLED": "false"},  # EMF lines in the log: sync counters
            report=str(self.workdir / "batches.jsonl"),
            batch_size=self.settings.batch_size,
            window_seconds=self.settings.window_seconds,
            retry_delay_seconds=1,
            function_timeout_seconds=self.settings.function_timeout,
        )
        worker = WorkerProcess(config, self.workdir / f"worker{len(self.started)}.json", self.log)
        self.started.append(worker)
        return worker

    def kill_mid_patch(self, drained: threading.Event) -> None:
        """SIGKILL the worker while Criteo holds the answer to the `kill_at_patch`-th PATCH it applied; restart it.

        The emulator applies that PATCH and holds its answer, so the kill lands inside an invocation, after
        Criteo changed and before the worker recorded it, however fast or slow the machine is.
        """
        stall = self.stack.criteo.stall_patch(self.settings.kill_at_patch)
        try:
            while not stall.reached.wait(0.05):
                if drained.is_set():
                    return
            worker = self.started[-1]
            running = worker.in_invocation()
            worker.kill()
            if running is not None:
                self.killed = {**running, "patches_applied_before_kill": self.settings.kill_at_patch}
            self.start()
        finally:
            stall.release()

    def report(self) -> list[dict[str, Any]]:
        """Every batch line of every worker."""
        text = (self.workdir / "batches.jsonl").read_text().splitlines()
        return [json.loads(line) for line in text if line.endswith("}")]

    def stop(self) -> None:
        """SIGTERM the live workers (each finishes its batch)."""
        for worker in self.started:
            worker.stop()
        self.log.close()


def compare(expected: dict[str, dict[str, set[str]]], actual: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per segment: expected and actual members, wrong (present, should not be) and lost (missing)."""
    rows: dict[str, dict[str, int]] = {}
    for name in sorted(set(expected) | set(actual)):
        want = expected.get(name, {})
        have = {t: set(v) for t, v in (actual.get(name, {}).get("members") or {}).items()}
        row = Counter[str]()
        for id_type in ID_TYPES:
            w, h = want.get(id_type, set()), have.get(id_type, set())
            row[f"expected_{id_type}"] = len(w)
            row[f"actual_{id_type}"] = len(h)
            row["wrong"] += len(h - w)
            row["lost"] += len(w - h)
        rows[name] = dict(row)
    return rows


def sync_metrics(log: str) -> Counter[str]:
    """Sum of the sync handler's EMF metrics (criteo_retries, lock_timeouts, stale_dropped, ...) in a log."""
    totals: Counter[str] = Counter()
    for line in log.splitlines():
        if '"_aws"' not in line:
            continue
        document = json.loads(line)
        for definition in document["_aws"]["CloudWatchMetrics"]:
            for metric in definition["Metrics"]:
                value = document.get(metric["Name"])
                totals[metric["Name"]] += int(sum(value) if isinstance(value, list) else value)
    return totals


def criteo_calls(stack: LocalStack) -> dict[str, Counter[int]]:
    """Calls received by kind (token, search, create, patch) and HTTP status."""
    kinds = {("POST", "token"): "token", ("POST", "search"): "search", ("POST", "create"): "create"}
    kinds[("PATCH", "contact-list")] = "patch"
    calls: dict[str, Counter[int]] = {kind: Counter() for kind in kinds.values()}
    for method, label, status in list(stack.criteo.calls):
        kind = kinds.get((method, label))
        if kind:
            calls[kind][status] += 1
    return calls


def run(settings: ChaosSettings) -> tuple[bool, dict[str, Any]]:
    """The soak; (passed, figures)."""
    stream = generate(settings.events, settings.audiences, settings.seed, settings.duplicate_share)
    rules = rules_for(settings.audiences)
    expected = expected_members(stream.events, rules=rules)
    granted = consent_granted(stream.events)
    members = members_in(stream.events, rules)
    timeout = settings.function_timeout
    stack_settings = StackSettings(
        gateway_port=0,
        moto_port=0,
        criteo_port=0,
        with_poller=False,
        window_seconds=settings.window_seconds,
        max_receive_count=settings.max_receive_count,
        visibility_timeout=timeout + 4,
        function_env={
            "IDENTIFIER_TYPES": ",".join(ID_TYPES),
            "AUDIENCE_LOCK_SECONDS": str(timeout + 2),
            "CONSENT_CATEGORIES": ",".join(REQUIRED_CONSENT),
            "FLUSH_INTERVAL_SECONDS": str(settings.flush_interval),
            **({"CRITEO_CALLS_PER_MINUTE": str(settings.calls_per_minute)} if settings.calls_per_minute else {}),
        },
    )
    workdir = tempfile.TemporaryDirectory(prefix="chaos-", delete=not settings.keep_logs)
    # The in-process handlers' output (Powertools loggers bind sys.stdout when the functions load, EMF lines
    # are printed) goes to a file from before the stack starts: it would bury the figures, and it is scanned.
    with workdir as tmp, (Path(tmp) / "ingest.log").open("w") as ingest_log:
        with contextlib.redirect_stdout(ingest_log), LocalStack(stack_settings) as stack:
            # A few suppression and lifecycle rules, as an operator writes them (docs/audience-settings.md).
            stack.aws.client("ssm").put_parameter(
                Name=stack.aws.audience_settings_parameter,
                Value=json.dumps({"rules": rules}),
                Type="String",
                Overwrite=True,
            )
            stack.criteo.faults.update(
                {
                    "error_rate": settings.error_rate,
                    "error_status": 503,
                    "seed": settings.seed,
                    "rate_limit": settings.rate_limit,
                    "rate_window_s": settings.rate_window_seconds,
                    "latency_s": settings.latency_seconds,
                    "token_errors": True,
                }
            )
            workers = Workers(stack, settings, Path(tmp))
            expirer = TokenExpirer(stack, settings.expire_tokens_every)
            ingested = Ingested()
            drained = threading.Event()
            started = time.monotonic()
            try:
                workers.start()
                expirer.start()
                sender = threading.Thread(
                    target=send_stream, args=(stack.gateway.url, stream.delivered, settings.request_size, ingested)
                )
                sender.start()
                killer = threading.Thread(target=workers.kill_mid_patch, args=(drained,), daemon=True)
                killer.start()
                sender.join()
                stack.wait_until_drained(settings.max_drain_seconds)
                drained.set()
                killer.join()
                finished = time.monotonic()
            finally:
                drained.set()
                expirer.done.set()
                workers.stop()
            stack.criteo.faults.clear()
            state = requests.get(f"{stack.criteo.url}/__admin/state", timeout=30).json()
            parked = dict(dead_letters(stack))
            batches = workers.report()
            calls = criteo_calls(stack)
            secrets = [DEV_CRITEO["client_secret"], DEV_WEBHOOK_SECRET, *stack.criteo.state.issued_tokens()]
        ingest_log.flush()
        log = "".join((Path(tmp) / name).read_text(errors="replace") for name in ("worker.log", "ingest.log"))
        log_leaks = leaks(log, [*secrets, *stream.clear_identifiers()])
        log_lines = log.count("\n")
        metrics = sync_metrics(log)
    rows = compare(expected, state["segments"])
    starts = [b for b in batches if b["event"] == "start" and "batch" in b]  # SQS batches, not flushes
    figures: dict[str, Any] = {
        "events": {
            "unique": len(stream.events),
            "sent": len(stream.delivered),
            "duplicates": len(stream.delivered) - len(stream.events),
            "audiences": settings.audiences,
            "identifier_types": list(ID_TYPES),
            "enter_exit_flipped_pairs": stream.flipped_pairs,
            "users": stream.users,
            "kinds": stream.kinds(),
            "in_pairs": len(members),
            "in_pairs_with_consent": sum(1 for _, user in members if granted.get(user, False)),
            "users_granted": sum(granted.values()),
            "consent_categories": list(REQUIRED_CONSENT),
        },
        "ingest": {
            "requests": ingested.requests,
            "retried_5xx": ingested.retried,
            "accepted": ingested.accepted,
            "records_queued": ingested.records,
            "messages_queued": ingested.messages,
            "refused": ingested.refused,
        },
        "sync": {
            "workers_started": len(workers.started),
            "invocations": sum(1 for b in batches if b["event"] == "start"),
            "records_delivered": sum(b["records"] for b in starts),
            "messages_handed_back": sum(b.get("failed", 0) for b in batches if b["event"] == "end"),
            "killed_mid_patch": workers.killed,
            "token_expiries_forced": expirer.count,
            "handler_metrics": dict(sorted(metrics.items())),
        },
        "criteo_calls": {kind: dict(sorted(by_status.items())) for kind, by_status in calls.items()},
        "minimum": {
            "token": len(workers.started),
            "search": len(workers.started),
            "create": sum(1 for by_type in expected.values() if any(by_type.values())),
            "patch_as_delivered": sum(b["min_patches"] for b in starts),
            "patch_single_batch": single_batch_patches(stream.events, rules=rules),
        },
        "audiences": rows,
        "batches": batches,
        "wrong": sum(r["wrong"] for r in rows.values()),
        "lost": sum(r["lost"] for r in rows.values()),
        "dead_letters": parked,
        "spec_violations": state["spec_violations"],
        "log_leaks": log_leaks,
        "log_lines_scanned": log_lines,
        "logs": tmp if settings.keep_logs else None,
        "seconds": {
            "send": round(ingested.finished - started, 1),
            "drain_after_last_event": round(finished - ingested.finished, 1),
            "total": round(finished - started, 1),
        },
    }
    problems = [
        f"{figures['wrong']} wrong" if figures["wrong"] else "",
        f"{figures['lost']} lost" if figures["lost"] else "",
        "dead-letter queue not empty" if parked else "",
        "the worker was never killed inside a PATCH" if workers.killed is None else "",
        "spec violations" if state["spec_violations"] else "",
        "PII or secrets in the logs" if log_leaks else "",
        "ingest refused events" if ingested.refused else "",
        "not every event accepted" if ingested.accepted != len(stream.delivered) else "",
    ]
    figures["problems"] = [p for p in problems if p]
    return not figures["problems"], figures


def print_figures(figures: dict[str, Any]) -> None:
    """The soak's figures, readable at a glance."""
    events, ingest, sync, minimum = figures["events"], figures["ingest"], figures["sync"], figures["minimum"]
    print(
        f"\nEvents sent: {events['sent']:,} ({events['unique']:,} unique + {events['duplicates']:,} duplicates) over"
        f" {events['audiences']} audiences, identifiers {', '.join(events['identifier_types'])};"
        f" {events['enter_exit_flipped_pairs']:,} (audience, user) pairs flip between enter and exit"
    )
    kinds = events["kinds"]
    print(
        f"Users: {events['users']:,} ({kinds['anonymous_user']:,} events from anonymousId-only users);"
        f" {events['in_pairs']:,} (audience, user) pairs end IN, {events['in_pairs_with_consent']:,} of them with"
        f" consent ({', '.join(events['consent_categories'])}) granted; {events['users_granted']:,} users granted"
    )
    print(
        f"Chaos in the events: {kinds['sibling']:,} same-timestamp siblings (one identifier each),"
        f" {kinds['id_change']:,} enters with a changed email, {kinds['key_only_exit']:,} exits with no identifier,"
        f" {kinds['future_dated']:,} future-dated (clamped to receivedAt), {kinds['clock_skew_kept']:,} ahead"
        f" within 300 s (kept), {kinds['zero_madid']:,} zero madids, {kinds['limited_ad_tracking']:,}"
        f" adTrackingEnabled false, {kinds['identify']:,} identify form; consent: {kinds['consent_grant']:,} grants"
        f" (+{kinds['consent_grant_on_event']:,} on a first audience event), {kinds['consent_denied']:,} refusals,"
        f" {kinds['consent_withdrawal']:,} withdrawals, {kinds['consent_regrant']:,} re-grants,"
        f" {kinds['consent_carried']:,} audience events carrying the current preferences; rules:"
        f" {kinds['rule_suppression']:,} suppressions with a cool-down, {kinds['rule_suppression_everywhere']:,}"
        f" from every audience, {kinds['rule_lifecycle']:,} lifecycle moves"
    )
    print(
        f"Ingest: {ingest['requests']} requests ({ingest['retried_5xx']} retried after 5xx),"
        f" {ingest['accepted']:,} accepted -> {ingest['records_queued']:,} records queued"
        f" in {ingest['messages_queued']:,} SQS messages"
    )
    killed = sync["killed_mid_patch"]
    kill_text = (
        f"{'batch' if 'batch' in killed else 'flush'} {killed.get('batch', killed.get('flush'))} SIGKILLed while"
        f" Criteo held the answer to PATCH {killed['patches_applied_before_kill']} (applied)"
        if killed
        else "NO kill inside a PATCH"
    )
    print(
        f"Sync: {sync['invocations']} invocations in {sync['workers_started']} worker processes,"
        f" {sync['records_delivered']:,} records delivered, {sync['messages_handed_back']} messages handed back;"
        f" {kill_text}; {sync['token_expiries_forced']} forced token expiries"
    )
    counters = sync["handler_metrics"]
    names = ("criteo_retries", "criteo_throttles", "lock_timeouts", "stale_dropped", "duplicates_or_superseded")
    print("Sync handler counters (EMF): " + ", ".join(f"{n} {counters.get(n, 0):,}" for n in names))
    print("\nCriteo calls (made by status | minimum):")
    minimums = {
        "token": f"{minimum['token']} (one per worker process = cold container; +1 per forced expiry in use)",
        "search": f"{minimum['search']} (one per worker process)",
        "create": f"{minimum['create']} (one per audience ending with members; emptied ones got one too)",
        "patch": (
            f"{minimum['patch_as_delivered']} as delivered (sum over invocations of distinct (audience, operation,"
            f" identifier type) after in-batch netting); {minimum['patch_single_batch']} if the whole stream"
            " were one batch"
        ),
    }
    retries = 0
    for kind, by_status in figures["criteo_calls"].items():
        made = sum(by_status.values())
        failed = sum(n for status, n in by_status.items() if status >= 300)
        retries += failed
        statuses = ", ".join(f"{n} x {status}" for status, n in by_status.items())
        print(f"  {kind:<7} {made:>6} ({statuses or 'none'}) | minimum {minimums[kind]}")
    print(f"  retries (calls answered 5xx/429/401, then retried or handed back): {retries}")
    print(f"\n  {'segment':<28} {'email':>13} {'madid':>13} {'phoneNumber':>13} {'identityLink':>13} wrong lost")
    for name, row in figures["audiences"].items():
        cells = " ".join(f"{row[f'actual_{t}']:>6}/{row[f'expected_{t}']:<6}" for t in ID_TYPES)
        print(f"  {name:<28} {cells} {row['wrong']:>5} {row['lost']:>4}")
    print("  (members in Criteo / expected from the event stream)")
    parked = figures["dead_letters"]
    print(f"\nwrong = {figures['wrong']}, lost = {figures['lost']}")
    print("Dead-letter queue: " + ("empty" if not parked else "; ".join(f"{n} x {r}" for r, n in parked.items())))
    print(
        f"Log scan: {figures['log_lines_scanned']:,} lines (ingest + sync) for emails, clear identifiers, tokens "
        f"and secrets: {len(figures['log_leaks'])} found"
    )
    seconds = figures["seconds"]
    print(
        f"Time: sending {seconds['send']}s, drained {seconds['drain_after_last_event']}s after the last event"
        f" was accepted, {seconds['total']}s in all"
    )
    print("PASS" if not figures["problems"] else "FAIL: " + "; ".join(figures["problems"]))


def main(argv: list[str] | None = None) -> int:
    """Parse options (every ChaosSettings field), run the soak, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(ChaosSettings()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = vars(parser.parse_args(argv))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    as_json = args.pop("json")
    settings = ChaosSettings(**args)
    print(
        f"Chaos soak: {settings.events:,} events over {settings.audiences} audiences, seed {settings.seed};"
        f" Criteo: {settings.error_rate:.0%} 503, {settings.rate_limit} calls per {settings.rate_window_seconds}s"
        f" then 429, {settings.latency_seconds * 1000:.0f} ms latency, tokens expired every"
        f" {settings.expire_tokens_every}s; worker SIGKILLed inside PATCH {settings.kill_at_patch}",
        flush=True,
    )
    passed, figures = run(settings)
    print_figures(figures)
    if as_json:
        print(json.dumps(figures, indent=2, default=sorted))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
