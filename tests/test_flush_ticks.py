"""Flush ticks: while anything waits, a pass arms one delayed message in the queue whose invocation makes the next
pass, instead of a scheduled invocation sleeping between its passes (Lambda bills the sleep). The real sync
handler on moto server and the Criteo emulator, fed by the event source mapping stand-in."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from audience_sync.ledger import Ledger
from audience_sync.ticks import GRACE_SECONDS, KEEP, TICK_ATTRIBUTE, Tick, next_tick
from devtools.criteo_emulator import CriteoEmulator
from devtools.lambda_runtime import FakeContext
from devtools.local_aws import MotoServer
from devtools.poller import SCHEDULED_EVENT
from tests.conftest import AUDIENCE_PREFIX, Stack, make_stack
from tests.segment_events import answer, audience_event, sha, signed

# Changes wait a minute for others to share their calls; while they wait, a tick comes every second.
WAITING = {"FLUSH_INTERVAL_SECONDS": "60", "FLUSH_POLL_SECONDS": "1"}
# Changes go at once, but the budget (12 calls in the bucket, 2 a second) holds the 17 calls of 8 new audiences.
BUDGET_BOUND = {"FLUSH_INTERVAL_SECONDS": "0", "FLUSH_POLL_SECONDS": "1", "CRITEO_CALLS_PER_MINUTE": "120"}


def queue(stack: Stack, audiences: list[str], first: int = 0) -> None:
    """One member entering each audience, applied by a sync invocation (which makes its own pass)."""
    for i, audience in enumerate(audiences, first):
        event = audience_event(f"m{i}", audience, True, email=f"u{i}@example.com", user_id=f"u{i}")
        assert answer(stack.invoke_ingest(signed(event)))[0] == 200
    assert stack.poller().poll_once() == len(audiences)


def ticks_in_queue(stack: Stack) -> list[dict[str, Any]]:
    """Every message in the queue once the delayed ones are visible (received and deleted)."""
    time.sleep(1.2)
    return [m["attributes"] for m in stack.queued_bodies_raw()]


def lease(stack: Stack) -> dict[str, Any]:
    item: dict[str, Any] = (
        stack.aws.client("dynamodb")
        .get_item(
            TableName=stack.aws.ledger_table, Key={"pk": {"S": "flusher"}, "sk": {"S": "lock"}}, ConsistentRead=True
        )
        .get("Item", {})
    )
    return item


@pytest.fixture
def waiting_stack(moto_server: MotoServer, criteo: CriteoEmulator) -> Stack:
    return make_stack(moto_server, criteo, env=WAITING)


def test_a_pass_that_leaves_changes_waiting_arms_one_tick_however_many_passes_follow(waiting_stack: Stack) -> None:
    queue(waiting_stack, ["cart"])
    queue(waiting_stack, ["shop"], first=1)  # another sync invocation's pass while the tick is pending
    ticks = ticks_in_queue(waiting_stack)
    assert [set(t) for t in ticks] == [{TICK_ATTRIBUTE}]
    assert float(ticks[0][TICK_ATTRIBUTE]["StringValue"]) == float(lease(waiting_stack)["tick"]["N"])


def test_ticks_drain_a_backlog_the_budget_holds_back_without_any_scheduled_invocation(
    moto_server: MotoServer, criteo: CriteoEmulator
) -> None:
    stack = make_stack(moto_server, criteo, env=BUDGET_BOUND)
    audiences = [f"a{i}" for i in range(8)]
    queue(stack, audiences)
    assert sum(bool(stack.members(a)) for a in audiences) < len(audiences)  # the sync's pass ran out of budget
    poller = stack.poller()
    passes = 0
    give_up = time.monotonic() + 60
    while any(not stack.members(a) for a in audiences) and time.monotonic() < give_up:
        passes += poller.poll_once()  # each batch here is one tick
    for i, audience in enumerate(audiences):
        assert stack.criteo.segments()[AUDIENCE_PREFIX + audience]["members"]["email"] == {sha(f"u{i}@example.com")}
    assert passes >= 2
    # The last tick's pass found nothing waiting: it cleared the tick and armed none.
    while poller.poll_once():
        pass
    assert "tick" not in lease(stack)
    assert ticks_in_queue(stack) == []


def test_a_lost_tick_is_armed_again_once_overdue(waiting_stack: Stack) -> None:
    queue(waiting_stack, ["cart"])
    assert len(ticks_in_queue(waiting_stack)) == 1  # received and deleted: lost
    scheduled = waiting_stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=60))
    assert scheduled["flush_ticks_sent"] == 0  # it still counts as pending
    dynamodb = waiting_stack.aws.client("dynamodb")
    dynamodb.update_item(
        TableName=waiting_stack.aws.ledger_table,
        Key={"pk": {"S": "flusher"}, "sk": {"S": "lock"}},
        UpdateExpression="SET tick = :overdue",
        ExpressionAttributeValues={":overdue": {"N": str(time.time() - 1)}},
    )
    scheduled = waiting_stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=60))
    assert scheduled["flush_ticks_sent"] == 1
    assert len(ticks_in_queue(waiting_stack)) == 1


def test_a_tick_waits_for_the_pass_holding_the_lease_rather_than_end_the_chain(waiting_stack: Stack) -> None:
    queue(waiting_stack, ["cart"])
    other = Ledger(waiting_stack.aws.client("dynamodb"), waiting_stack.aws.ledger_table, 60)
    assert other.acquire_flusher() is not None  # another invocation's pass, when the tick comes
    threading.Timer(1.5, other.release_flusher).start()
    time.sleep(1.2)  # the tick's delay
    assert waiting_stack.poller().poll_once() == 1
    assert len(ticks_in_queue(waiting_stack)) == 1  # its pass came after the other one's, and armed the next


def test_a_scheduled_invocation_makes_one_pass_and_leaves(waiting_stack: Stack) -> None:
    # Before the ticks it stayed up to 58 s of its minute while anything waited, billed while it slept.
    queue(waiting_stack, ["cart"])
    started = time.monotonic()
    scheduled = waiting_stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=120))
    assert time.monotonic() - started < 5
    assert scheduled["flush_passes"] == 1
    assert scheduled["inbox_groups"] == 1  # not due for a minute


@pytest.mark.parametrize(
    ("waiting", "pending", "carried", "expected"),
    [
        (True, None, [], Tick(arm=100 + 5 + GRACE_SECONDS)),  # none pending
        (True, 120.0, [], KEEP),  # one pending: this pass came otherwise
        (True, 120.0, [120.0], Tick(arm=100 + 5 + GRACE_SECONDS)),  # this pass is the pending tick's own
        (True, 99.0, [], Tick(arm=100 + 5 + GRACE_SECONDS)),  # the pending one is overdue: lost
        (False, 120.0, [120.0], Tick(clear=True)),  # its own, and nothing waits
        (False, 120.0, [], KEEP),  # another pass's: that pass clears it
        (False, None, [], KEEP),
    ],
)
def test_a_pass_arms_a_tick_when_none_is_pending_or_it_was_the_pending_ones(
    waiting: bool, pending: float | None, carried: list[float], expected: Tick
) -> None:
    assert next_tick(waiting, pending, carried, now=100.0, delay_seconds=5) == expected
