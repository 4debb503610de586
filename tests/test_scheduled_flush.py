"""The minute schedule's flush invocation: it stays while something waits and no one else flushes (Lambda bills
its sleeps between passes), and leaves the flushing to the sync invocations that come while changes flow, unless
the budget is what holds the changes back. The real sync handler on moto server and the Criteo emulator; the
other invocation is a second holder of the real flusher lease."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from audience_sync.ledger import Ledger
from devtools.criteo_emulator import CriteoEmulator
from devtools.lambda_runtime import FakeContext
from devtools.local_aws import MotoServer
from devtools.poller import SCHEDULED_EVENT
from tests.conftest import AUDIENCE_PREFIX, Stack, make_stack
from tests.segment_events import answer, audience_event, sha, signed

# Changes wait a minute for others to share their calls; a scheduled invocation looks every second for 6 s.
WAITING = {"FLUSH_INTERVAL_SECONDS": "60", "FLUSH_SECONDS": "6", "FLUSH_POLL_SECONDS": "1"}
# Changes go at once, but the budget (12 calls in the bucket, 2 a second) holds the 17 calls of 8 new audiences.
BUDGET_BOUND = {"FLUSH_INTERVAL_SECONDS": "0", "FLUSH_SECONDS": "30", "FLUSH_POLL_SECONDS": "1"}
BUDGET_BOUND["CRITEO_CALLS_PER_MINUTE"] = "120"


def queue(stack: Stack, audiences: list[str]) -> None:
    """One member entering each audience, applied by a sync invocation (which makes its own pass)."""
    for i, audience in enumerate(audiences):
        event = audience_event(f"m{i}", audience, True, email=f"u{i}@example.com", user_id=f"u{i}")
        assert answer(stack.invoke_ingest(signed(event)))[0] == 200
    assert stack.poller().poll_once() == len(audiences)


def run_scheduled(stack: Stack, other_flushes: bool) -> dict[str, Any]:
    """The scheduled invocation; with `other_flushes`, another invocation takes the flusher lease (and gives it
    back) once, as soon as the scheduled one has given it back after a pass."""
    answered: dict[str, Any] = {}
    scheduled = threading.Thread(
        target=lambda: answered.update(stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=120)))
    )
    scheduled.start()
    dynamodb = stack.aws.client("dynamodb")
    other = Ledger(dynamodb, stack.aws.ledger_table, 60)
    while other_flushes and scheduled.is_alive():
        lease = dynamodb.get_item(
            TableName=stack.aws.ledger_table, Key={"pk": {"S": "flusher"}, "sk": {"S": "lock"}}, ConsistentRead=True
        ).get("Item", {})
        given_back = lease.get("expires", {}).get("N") == "0" and lease["owner"]["S"] != other.owner
        if given_back and other.acquire_flusher() is not None:
            other.release_flusher()
            break
        time.sleep(0.02)
    scheduled.join(timeout=100)
    return answered


@pytest.fixture
def waiting_stack(moto_server: MotoServer, criteo: CriteoEmulator) -> Stack:
    return make_stack(moto_server, criteo, env=WAITING)


def test_a_scheduled_flush_stays_while_changes_wait_and_no_one_else_flushes(waiting_stack: Stack) -> None:
    queue(waiting_stack, ["cart"])
    answered = run_scheduled(waiting_stack, other_flushes=False)
    assert answered["inbox_groups"] == 1  # not due within its 6 s
    assert answered["flush_passes"] >= 4


def test_a_scheduled_flush_leaves_the_flushing_to_sync_invocations_while_changes_flow(waiting_stack: Stack) -> None:
    # Before, it stayed its 6 s (in the template 50 s of every minute, billed) while each sync batch was
    # skipping its own pass for want of the lease.
    queue(waiting_stack, ["cart"])
    answered = run_scheduled(waiting_stack, other_flushes=True)
    assert answered["inbox_groups"] == 1
    assert answered["flush_passes"] == 1


def test_a_scheduled_flush_held_back_by_the_budget_stays_though_another_invocation_flushed(
    moto_server: MotoServer, criteo: CriteoEmulator
) -> None:
    stack = make_stack(moto_server, criteo, env=BUDGET_BOUND)
    audiences = [f"a{i}" for i in range(8)]
    queue(stack, audiences)
    assert sum(bool(stack.members(a)) for a in audiences) < len(audiences)  # the sync's pass ran out of budget
    answered = run_scheduled(stack, other_flushes=True)
    assert answered["outbox_audiences"] == 0
    assert answered["flush_passes"] >= 2
    for i, audience in enumerate(audiences):
        assert stack.criteo.segments()[AUDIENCE_PREFIX + audience]["members"]["email"] == {sha(f"u{i}@example.com")}


def test_a_scheduled_flush_waits_for_the_last_pass_of_the_one_before_it(waiting_stack: Stack) -> None:
    # The one before passes until 55 s of its minute; skipping this minute for its last pass would leave a
    # backlog unsent for a minute.
    queue(waiting_stack, ["cart"])
    before = Ledger(waiting_stack.aws.client("dynamodb"), waiting_stack.aws.ledger_table, 60)
    assert before.acquire_flusher() is not None
    threading.Timer(0.5, before.release_flusher).start()
    answered = waiting_stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=120))
    assert answered["flush_passes"] >= 1
