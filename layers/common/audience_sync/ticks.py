"""Flush ticks: while anything waits, a flush pass is followed by another one a few seconds later, brought by a
delayed message in the audience-changes queue instead of by an invocation sleeping between its passes.

Lambda bills a sleeping invocation by the second (~29 GB-s a minute at 512 MB), and under a backlog the call
budget holds back, the minute schedule's invocation used to stay awake for as long as the backlog lasted. Now a
pass that leaves anything waiting arms one tick: a message the event source mapping delivers after a delay, whose
invocation makes the next pass (and arms the next tick while anything still waits).

At most one tick is pending. The flusher lease's item records until when the armed one counts (`tick`: its due
time plus GRACE_SECONDS), written by the update that gives the lease back, so arming costs no write of its own.
A pass arms a tick only when none is pending or when it is the pending tick's own pass. A tick lost (its send
failed, its invocation crashed) stops counting once it is GRACE_SECONDS overdue: the next pass, at the latest the
minute schedule's, arms another.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from audience_sync.queue import number_attribute, number_of

TICK_ATTRIBUTE = "flush_tick"
TICK_BODY = "flush tick"
GRACE_SECONDS = 30.0
MAX_DELAY_SECONDS = 900  # SQS's longest DelaySeconds


class Tick(NamedTuple):
    """What a pass does with the flusher lease's tick as it gives the lease back."""

    arm: float | None = None  # a new tick, pending until this time (its due time plus the grace)
    clear: bool = False  # the pending tick was the one that brought this pass, and nothing waits any more


KEEP = Tick()


def next_tick(waiting: bool, pending: float | None, carried: Collection[float], now: float, delay_seconds: int) -> Tick:
    """After a pass. `waiting`: anything left that this invocation could send; `pending`: the tick the lease's
    item records (None: none); `carried`: the ticks in the batch that brought this invocation."""
    own = pending is not None and pending in carried
    live = pending is not None and pending > now and not own
    if waiting:
        return KEEP if live else Tick(arm=round(now + delay_seconds + GRACE_SECONDS, 3))
    return Tick(clear=True) if own else KEEP


def tick_delay(poll_seconds: int, batching_window_seconds: int) -> int:
    """The DelaySeconds that brings the next pass `poll_seconds` after this one: the event source mapping holds
    a message for its batching window before it invokes."""
    return max(0, min(MAX_DELAY_SECONDS, poll_seconds - batching_window_seconds))


def tick_attributes(tick: float) -> dict[str, Any]:
    """The message attributes of a tick (SendMessage's form)."""
    return number_attribute(TICK_ATTRIBUTE, tick)


def split_ticks(records: list[dict[str, Any]]) -> tuple[list[float], list[dict[str, Any]]]:
    """An SQS batch (the event source mapping's form): the ticks it carries, and its other records."""
    ticks, others = [], []
    for record in records:
        tick = number_of(record, TICK_ATTRIBUTE)
        if tick is None:
            others.append(record)
        else:
            ticks.append(tick)
    return ticks, others
