"""Benchmark 1: the Criteo calls of the real sync and flush code, on a simulated clock.

Streams of 1k to 10M changes over 1 to 2,000 audiences arrive as a burst (a backfill: Segment delivering as
fast as it can) or steadily over 30 minutes. Every 5 simulated seconds the sync function applies what
arrived (AudienceSync: the real fold, ledger and inbox code) and, when the flusher lease is free, makes a pass
(Flusher: the real policy, netting, budget and CriteoClient, against the Criteo emulator over HTTP), through the
real `one_pass`, which arms a flush tick while anything waits. A tick is a message the event source holds like
any other: it comes with the next sync batch, or alone in an invocation of its own (counted: Lambda and SQS bill
it). Every minute the schedule's invocation makes a pass too. DynamoDB is the in-memory table
(bench/memory_table.py), metered as DynamoDB bills; only the clock, AWS and Criteo are simulated.

The minimum the calls are compared with (devtools.minimum.WindowMinimum) is computed from the stream alone:
per flush interval, per (audience, user), what Criteo must hold at its end against its start; a window whose
calls the budget can't send within its span grows until it can.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import requests

from audience_sync.advertisers import Advertisers
from audience_sync.budget import CallBudget
from audience_sync.criteo.auth import CriteoCredentials, TokenCache
from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.segments import SEGMENT_IDS
from audience_sync.flush import WORKERS, Flusher, FlushPolicy, FlushReport, KeptSummaries, one_pass
from audience_sync.inbox import Inbox
from audience_sync.ledger import Ledger
from audience_sync.outbox import Outbox, Waiting
from audience_sync.records import AudienceChange, pack_changes, unpack_changes
from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions
from audience_sync.ticks import tick_delay
from bench.disk import DiskDict
from bench.memory_table import InMemoryTable
from bench.peer import peer_calls
from bench.servers import new_emulator
from bench.streams import EVENTS_PER_SEGMENT_REQUEST, StreamSpec, cut_batches, minimum_calls, stream, sync_batches
from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import DEV_CRITEO
from devtools.minimum import WindowMinimum
from devtools.template import load_template

BUDGET_PER_MINUTE = 200  # the template's CriteoCallsPerMinute
CRITEO_LIMIT_PER_MINUTE = 250  # Criteo's documented limit per app (what would be answered 429 above it)
INTERVAL_SECONDS = 60.0  # FlushIntervalSeconds
STEP_SECONDS = 5.0  # the flusher's pass interval (FLUSH_POLL_SECONDS)
# SyncBatchingWindowSeconds: the event source holds a batch that is not full this long (to the step: invoked in the
# step it runs out in)
SYNC_WINDOW_SECONDS = float(load_template()["Parameters"]["SyncBatchingWindowSeconds"]["Default"])
TICK_DELAY_SECONDS = tick_delay(int(STEP_SECONDS), int(SYNC_WINDOW_SECONDS))
BURST_PER_SECOND = 10_000  # a backfill: Segment delivering events as fast as this
STEADY_SECONDS = 1_800.0  # a steady stream spread over 30 minutes
QUICK_STEADY_SECONDS = 600.0  # ... over 10 in quick mode (the test suite's run)
CALL_KINDS = ("token", "search", "create", "patch")
ON_DISK_ABOVE = 1_000_000  # larger streams keep the table and the minimum's states on disk (bench/disk.py)
PROGRESS_EVERY = 1_000_000


class SimulatedClock:
    """Seconds since the stream began; moved by the simulation only."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _NoQueue:
    def send(self, bodies: list[str], attributes: Any = None) -> int:
        raise AssertionError("the benchmark streams hold nothing Criteo refuses")


@dataclass
class Run:
    """What one simulated stream did."""

    patches_at: list[tuple[float, int]] = field(default_factory=list)  # (time, PATCHes made in that pass)
    patch_rounds: int = 0  # PATCH round trips one after another, the flusher's workers overlapping audiences
    waited: list[tuple[float, int]] = field(default_factory=list)  # (seconds, identifiers)
    last_arrival: float = 0.0
    drained_at: float = 0.0
    invocations: int = 0
    tick_invocations: int = 0  # invocations brought by a flush tick alone (its sync batch empty)
    ticks_sent: int = 0
    scheduled_invocations: int = 0
    largest_audience_flush: int = 0  # the most identifiers one pass sent to one audience
    identifiers_sent: int = 0


def rounds(per_audience: Iterable[int], workers: int = WORKERS) -> int:
    """How many PATCH round trips long a pass is when the flusher's `workers` threads each take the next
    audience in the pass's order (`per_audience`: its calls, in the order the audiences were flushed) as soon as
    they are free, and send its calls one after another: the busiest thread's total."""
    loads = [0] * workers
    for n in per_audience:
        heapq.heapreplace(loads, loads[0] + n)
    return max(loads)


def _percentile(waited: list[tuple[float, int]], share: float) -> float:
    total = sum(n for _, n in waited)
    if not total:
        return 0.0
    seen = 0
    for seconds, n in sorted(waited):
        seen += n
        if seen >= share * total:
            return seconds
    return sorted(waited)[-1][0]


def _per_minute(patches_at: list[tuple[float, int]]) -> tuple[int, float]:
    """Peak calls in any 60 s (sliding over the passes), and the share above Criteo's limit in fixed minutes."""
    peak, start, in_window = 0, 0, 0
    for end in range(len(patches_at)):
        in_window += patches_at[end][1]
        while patches_at[end][0] - patches_at[start][0] >= 60.0:
            in_window -= patches_at[start][1]
            start += 1
        peak = max(peak, in_window)
    minutes: Counter[int] = Counter()
    for at, n in patches_at:
        minutes[int(at // 60)] += n
    over = sum(max(0, n - CRITEO_LIMIT_PER_MINUTE) for n in minutes.values())
    total = sum(n for _, n in patches_at)
    return peak, (over / total if total else 0.0)


class ObservedFlusher(Flusher):
    """A Flusher whose every pass the simulation records (`observe` wraps the real pass)."""

    observe: Callable[[Callable[[], FlushReport]], FlushReport]

    def tick(self) -> FlushReport:
        """The real pass, observed."""
        return self.observe(super().tick)


def simulate(
    criteo_emulator: CriteoEmulator, spec: StreamSpec, burst: bool, steady_seconds: float = STEADY_SECONDS
) -> dict[str, Any]:
    """Run one stream through the sync and flush code on the simulated clock (a steady one spread over
    `steady_seconds`); the figures of the run."""
    SEGMENT_IDS.clear()
    criteo_emulator.reset()
    clock = SimulatedClock()
    on_disk = spec.changes > ON_DISK_ABOVE
    table = InMemoryTable(on_disk)
    client = cast(Any, table)
    ledger = Ledger(client, "bench", 360, clock=clock)
    inbox = Inbox(client, "bench", 360, clock=clock)
    outbox = Outbox(client, "bench", clock=clock)
    budget = CallBudget(client, "bench", BUDGET_PER_MINUTE, clock=clock)
    credentials = CriteoCredentials(DEV_CRITEO["client_id"], DEV_CRITEO["client_secret"], DEV_CRITEO["advertiser_id"])
    criteo = CriteoClient(
        requests.Session(), criteo_emulator.url, "2026-07", credentials, lambda: 300.0, tokens=TokenCache()
    )
    dead_letters = DeadLetters(cast(Any, _NoQueue()))
    options = SyncOptions()
    sync = AudienceSync(ledger, inbox, dead_letters, options, lambda: 300.0)
    policy = FlushPolicy(interval_seconds=INTERVAL_SECONDS, calls_per_minute=BUDGET_PER_MINUTE)
    advertisers = Advertisers(lambda name: criteo, lambda client_id, rate: budget, options.deployment, frozenset())
    windows = WindowMinimum(INTERVAL_SECONDS, BUDGET_PER_MINUTE, cast(Any, DiskDict()) if on_disk else None)
    whole = WindowMinimum(math.inf, BUDGET_PER_MINUTE, cast(Any, DiskDict()) if on_disk else None)
    run = Run()
    duration = spec.changes / BURST_PER_SECOND if burst else steady_seconds
    changes = enumerate(stream(spec))
    pending: tuple[int, AudienceChange] | None = next(changes, None)
    serial = 0
    peer_input: list[AudienceChange] = []
    held: list[tuple[float, str]] = []  # (queued at, message body): what the event source holds
    ticks: list[tuple[float, float]] = []  # (visible at, tick): flush ticks sent
    kept = KeptSummaries()

    def observed(tick: Callable[[], FlushReport]) -> FlushReport:
        before, logged = criteo_emulator.count("patch"), len(criteo_emulator.patch_log)
        report = tick()
        sent = criteo_emulator.patch_log[logged:]
        run.patch_rounds += rounds(Counter(p["segment_id"] for p in sent).values())
        per_audience = Counter[str]()
        for patch in sent:
            per_audience[patch["segment_id"]] += patch["valid"] + patch["invalid"]
        run.largest_audience_flush = max([run.largest_audience_flush, *per_audience.values()])
        run.waited.extend(report.waited)
        run.identifiers_sent += report.counts["identifiers_added"] + report.counts["identifiers_removed"]
        made = criteo_emulator.count("patch") - before
        if made:
            run.patches_at.append((clock.now, made))
        return report

    def new_flusher(summaries: list[Waiting] | None) -> ObservedFlusher:
        flusher = ObservedFlusher(
            advertisers, inbox, outbox, dead_letters, options, policy, lambda: 300.0, workers=1, summaries=summaries
        )
        flusher.observe = observed
        return flusher

    def flush_pass(carried: list[float]) -> None:
        """An invocation's pass when the flusher lease is free; the tick it arms is sent."""
        turn = ledger.acquire_flusher()
        if turn is None:
            return
        _, tick = one_pass(ledger, turn, new_flusher, kept, carried, TICK_DELAY_SECONDS)
        if tick is not None:
            ticks.append((clock.now + TICK_DELAY_SECONDS, tick))
            run.ticks_sent += 1

    def advance(_: float = STEP_SECONDS) -> None:
        """The next STEP_SECONDS: the Segment requests that arrived are held by the event source until they fill
        more than one invocation or the oldest was held SYNC_WINDOW_SECONDS; then sync invocations apply them,
        and the last of them makes a pass when the flusher lease is free (`sleep` of a scheduled invocation)."""
        nonlocal pending, serial, held
        clock.now += STEP_SECONDS
        arrived: list[list[AudienceChange]] = [[]]
        first_at = clock.now
        while pending is not None and (at := pending[0] * duration / spec.changes) < clock.now:
            index, change = pending
            first_at = min(first_at, at)
            if len(arrived[-1]) == EVENTS_PER_SEGMENT_REQUEST:
                arrived.append([])
            arrived[-1].append(change)
            windows.add(at, change)
            whole.add(0.0, change)
            if on_disk and index and index % PROGRESS_EVERY == 0:  # an hour or more per stream: say where it is
                print(f"[bench] criteo_calls {spec.label}: {index:,} changes in, simulated {at:,.0f} s", flush=True)
            if not on_disk:
                peer_input.append(change)
            run.last_arrival = at
            pending = next(changes, None)
        held += [(first_at, body) for request in arrived if request for body in pack_changes(request)]
        visible = [(at, tick) for at, tick in ticks if at <= clock.now]
        if not held and not visible:
            return
        oldest = min([at for at, _ in held[:1]] + [at for at, _ in visible])
        batches = cut_batches([body for _, body in held], serial)
        if len(batches) <= 1 and oldest + SYNC_WINDOW_SECONDS >= clock.now + STEP_SECONDS:
            return
        queued = {f"msg-{number}": at for number, (at, _) in enumerate(held, serial)}
        held = []
        ticks[:] = [pair for pair in ticks if pair not in visible]
        for batch in batches:
            serial += len(batch)
            applied = sync.run(batch, queued=queued)
            run.invocations += 1
            if applied.failed:
                raise RuntimeError(f"the sync handed back {len(applied.failed)} messages")
        if not batches:  # the ticks came alone
            run.tick_invocations += 1
        flush_pass([tick for _, tick in visible])

    def drained() -> bool:
        with table.unmetered():  # (the simulation's own look: not billed)
            return not held and not outbox.waiting() and not any(g.first is not None for g in inbox.waiting())

    while pending is not None or not drained():
        if clock.now % 60 == 0:
            run.scheduled_invocations += 1
            flush_pass([])
        advance()
        if clock.now > run.last_arrival + 48 * 3600:
            raise RuntimeError("the outbox did not drain in 48 simulated hours")
    run.drained_at = clock.now
    window_minimum, whole_minimum = windows.finish(), whole.finish()
    calls = {kind: criteo_emulator.count(kind) for kind in CALL_KINDS}
    peak, over_limit = _per_minute(run.patches_at)
    peer = peer_calls(peer_input) if peer_input else None
    before = before_patches(peer_input) if burst and peer_input else None
    drain = run.drained_at - run.last_arrival
    last_window_minutes = windows.last_window_patches / BUDGET_PER_MINUTE
    billed = table.billed
    # Identifiers Criteo holds that the stream says it must not / lacks that it must, from the whole-stream
    # minimum's per-(audience, user) states (on disk for the 10M streams).
    exactness = dict(zip(("wrong", "lost"), membership_errors(criteo_emulator, whole), strict=True))
    if any(exactness.values()):
        raise RuntimeError(f"{spec.label}: Criteo's segments are not what the stream says ({exactness})")
    return {
        "sqs_messages": serial,
        "identifiers_sent": run.identifiers_sent,
        "dynamodb_calls": dict(sorted(billed.items())),
        "stream": spec.label,
        "mode": "burst" if burst else "steady",
        "changes": spec.changes,
        "audiences": spec.audiences,
        "arrival_seconds": round(duration, 1),
        "invocations": run.invocations,
        "tick_invocations": run.tick_invocations,
        "ticks_sent": run.ticks_sent,
        "scheduled_invocations": run.scheduled_invocations,
        "calls": {**calls, "total": sum(calls.values())},
        "window_minimum": window_minimum,
        "windows": windows.windows,
        "whole_stream_minimum": whole_minimum,
        "patch_ratio": round(calls["patch"] / max(1, window_minimum), 3),
        "patch_ratio_whole_stream": round(calls["patch"] / max(1, whole_minimum), 3),
        "before_patches": before,
        "peer_patches": peer.patch if peer else None,
        "peer_total": peer.total if peer else None,
        "peak_calls_per_minute": peak,
        "share_over_criteo_limit": round(over_limit, 4),
        "latency_p50_s": round(_percentile(run.waited, 0.5), 1),
        "latency_p99_s": round(_percentile(run.waited, 0.99), 1),
        "drain_after_last_arrival_s": round(drain, 1),
        "last_window_minimum_s": round(last_window_minutes * 60, 1),
        "largest_audience_flush": run.largest_audience_flush,
        "patch_rounds": run.patch_rounds,
        "spec_violations": len(criteo_emulator.spec_violations),
        **exactness,
    }


def membership_errors(criteo_emulator: CriteoEmulator, minimum: WindowMinimum) -> tuple[int, int]:
    """What the segments hold against what a minimum fed the whole stream says Criteo must hold
    (devtools.minimum's rules, not the ledger's code): identifiers wrong (held, not due), lost (due, not held)."""
    prefix = SyncOptions().name_prefix
    expected: dict[tuple[str, str], set[str]] = {}
    for (audience, _), held_by_user in minimum.must_hold():
        for id_type, identifiers in held_by_user.items():
            expected.setdefault((prefix + audience, id_type), set()).update(identifiers)
    held = {
        (name, id_type): members
        for name, segment in criteo_emulator.segments().items()
        for id_type, members in segment["members"].items()
    }
    keys = expected.keys() | held.keys()
    wrong = sum(len(held.get(k, set()) - expected.get(k, set())) for k in keys)
    lost = sum(len(expected.get(k, set()) - held.get(k, set())) for k in keys)
    return wrong, lost


def before_patches(changes: list[AudienceChange]) -> int:
    """The PATCHes of the design before the outbox: the minimum per delivered invocation (each invocation
    PATCHed what it held; the run of 2026-11-30 measured exactly this on every stream of 1k-1M x 1-200)."""
    return minimum_calls(
        changes, [[c for _, body in b for c in unpack_changes(body)] for b in sync_batches(changes)]
    ).patches_per_batch


def one_stream(spec: StreamSpec, burst: bool, steady_seconds: float = STEADY_SECONDS) -> dict[str, Any]:
    """One stream against its own emulator (a process of its own when the run has several jobs)."""
    began = time.monotonic()
    with new_emulator() as criteo_emulator:
        result = simulate(criteo_emulator, spec, burst, steady_seconds)
    result["seconds"] = round(time.monotonic() - began, 1)
    print(f"[bench] criteo_calls {result['stream']} {result['mode']}: {result}", flush=True)
    return result


def run(quick: bool, max_changes: int = 10_000_000, jobs: int = 1) -> list[dict[str, Any]]:
    """Every stream of the benchmark up to `max_changes` (1k and 10k over 1 and 20 audiences, steady ones over 10
    minutes, in quick mode), `jobs` at a time (each stream runs alone on its simulated clock, so its figures do
    not depend on that)."""
    sizes = (1_000, 10_000) if quick else tuple(n for n in (1_000, 100_000, 1_000_000, 10_000_000) if n <= max_changes)
    audiences = (1, 20) if quick else (1, 20, 200, 2_000)
    steady = QUICK_STEADY_SECONDS if quick else STEADY_SECONDS
    streams = [(StreamSpec(n, a), burst, steady) for n in sizes for a in audiences for burst in (True, False)]
    if jobs <= 1:
        return [one_stream(*stream) for stream in streams]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one_stream, *zip(*streams, strict=True)))
