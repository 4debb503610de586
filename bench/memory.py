"""Benchmark 8: peak memory of the three heaviest steps of one invocation, against the function's memory.

Python's allocations (tracemalloc) on top of what the container holds after init: one sync invocation of a
full 6 MB batch (~35k changes over 2,000 audiences: the ledger's reads and writes, one inbox entry per group),
one gathering of an inbox group read at its limit (`outbox.MAX_IDENTIFIERS_PER_FLUSH` identifiers over 100
audiences: decode, net per audience, write each audience's entry), and one flush of an audience read at that
limit (decode, net, chunk into PATCH bodies).
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, cast

from audience_sync.allowance import Allowance
from audience_sync.inbox import GroupWaiting, Inbox, Slice, group_of
from audience_sync.ledger import Ledger
from audience_sync.outbox import MAX_IDENTIFIERS_PER_FLUSH, MAX_IDENTIFIERS_PER_ITEM, Outbox
from audience_sync.plan import Entry, net, patches
from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions
from bench.memory_table import InMemoryTable
from bench.streams import StreamSpec, generate, sync_batches

FUNCTION_MEMORY_MB = 512  # template.yaml Globals: MemorySize
FLUSH_WORKERS = 8  # the Flusher's default
SEND_SECONDS = 1.0  # ten 50k-identifier PATCHes of one audience, eight at a time (bench/cost.py's assumptions)


def _peak_mb(step: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return round(peak / 1e6, 1)


def _apply(batch: list[tuple[str, str]]) -> None:
    table = cast(Any, InMemoryTable())
    sync = AudienceSync(
        Ledger(table, "m", 360), Inbox(table, "m", 360), DeadLetters(cast(Any, None)), SyncOptions(), lambda: 300.0
    )
    sync.run(batch)


def _flush_read(outbox: Outbox, audience: str = "big") -> list[str]:
    """An audience's waiting entries read, netted and made into PATCH bodies (held while they are sent)."""
    read, _ = outbox.oldest(audience, "")
    bodies = []
    for plan in patches(audience, net(s.entry for s in read)):
        attributes = {
            "operation": plan.operation,
            "identifierType": plan.identifier_type,
            "identifiers": plan.identifiers,
        }
        bodies.append(json.dumps({"data": {"type": "ContactlistAmendment", "attributes": attributes}}))
    return bodies


def _flush_pass(outbox: Outbox, audiences: list[str], each: int, allowance: Allowance) -> None:
    """Eight workers reading and planning eight audiences at once, each first taking what its audience holds from
    the shared allowance, as the Flusher's workers do."""

    def one(audience: str) -> None:
        with allowance.holding(each, lambda: True):
            bodies = _flush_read(outbox, audience)
            time.sleep(SEND_SECONDS)  # the PATCHes on their way: the bodies are held meanwhile
            del bodies

    with ThreadPoolExecutor(FLUSH_WORKERS) as pool:
        list(pool.map(one, audiences))


def _filled_group(identifiers: int, audiences: int = 100) -> tuple[Inbox, GroupWaiting]:
    """An inbox group holding `identifiers` adds over `audiences` audiences, one entry per 4,000."""
    table = cast(Any, InMemoryTable())
    inbox = Inbox(table, "m", 360)
    group = group_of("big")
    for start in range(0, identifiers, MAX_IDENTIFIERS_PER_ITEM):
        chunk = range(start, min(identifiers, start + MAX_IDENTIFIERS_PER_ITEM))
        slices = {
            f"a{n}": Slice(Entry({}, {"email": {f"{i:064x}" for i in chunk if i % audiences == n}}), "", 0.0)
            for n in range(audiences)
        }
        seq = inbox.acquire(group, 0) or 0
        inbox.release(group, inbox.append(group, seq, slices))
    return inbox, next(g for g in inbox.waiting() if g.group == group)


def run(quick: bool) -> dict[str, Any]:
    """Peak MB of each step, and the function's memory."""
    changes = 4_000 if quick else 40_000
    batch = sync_batches(generate(StreamSpec(changes, 2_000, seed=5)))[0]
    table = cast(Any, InMemoryTable())
    outbox = Outbox(table, "m")
    identifiers = 40_000 if quick else MAX_IDENTIFIERS_PER_FLUSH
    audiences = [f"big{n}" if n else "big" for n in range(FLUSH_WORKERS)]
    for audience in audiences:
        for start in range(0, identifiers, MAX_IDENTIFIERS_PER_ITEM):
            chunk = {f"{i:064x}" for i in range(start, min(identifiers, start + MAX_IDENTIFIERS_PER_ITEM))}
            outbox.append(audience, Entry({}, {"email": chunk}), audience, 0.0)
    pass_peak = {
        label: _peak_mb(partial(_flush_pass, outbox, audiences, identifiers, Allowance(total)))
        for label, total in (("shared_allowance", identifiers), ("no_allowance", FLUSH_WORKERS * identifiers))
    }
    inbox, group = _filled_group(identifiers)
    return {
        "function_memory_mb": FUNCTION_MEMORY_MB,
        "apply_invocation": {
            "changes": sum(b.count('"add"') + b.count('"remove"') for _, b in batch) or changes,
            "messages": len(batch),
            "peak_mb": _peak_mb(lambda: _apply(batch)),
        },
        "gather": {
            "identifiers": identifiers,
            "peak_mb": _peak_mb(lambda: inbox.gather(group, Outbox(cast(Any, InMemoryTable()), "m"))),
        },
        "flush_read": {"identifiers": identifiers, "peak_mb": _peak_mb(lambda: _flush_read(outbox))},
        "flush_pass": {"audiences": FLUSH_WORKERS, "identifiers_each": identifiers, **pass_peak},
    }
