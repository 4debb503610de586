"""The inbox against moto server and the Criteo emulator: one entry per group of audiences and sync batch, the
groups' leases, and the flusher gathering groups into the audiences' outboxes when they are due."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from botocore.exceptions import EndpointConnectionError

from audience_sync.flush import FlushPolicy
from audience_sync.inbox import GROUPS, Inbox, Slice, group_of
from audience_sync.ledger import Ledger
from audience_sync.outbox import Waiting
from audience_sync.plan import net
from audience_sync.queue import QueueWriter
from audience_sync.records import ADD, AudienceChange, pack_changes
from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions
from tests.conftest import Stack
from tests.segment_events import sha, user_hash
from tests.test_flush import (
    START,
    Clock,
    adds,
    aws_stack,
    cold_segment_cache,
    email,
    emails,
    new_flusher,
    new_outbox,
    removes,
)

__all__ = ["aws_stack", "cold_segment_cache"]  # the fixtures, shared with test_flush


def new_inbox(stack: Stack, clock: Any = time.time) -> Inbox:
    return Inbox(stack.aws.client("dynamodb"), stack.aws.ledger_table, 60, clock)


def new_sync(stack: Stack, seconds_left: Any = lambda: 60.0) -> AudienceSync:
    dynamodb, table = stack.aws.client("dynamodb"), stack.aws.ledger_table
    dead_letters = DeadLetters(QueueWriter(stack.aws.client("sqs"), stack.aws.dead_letter_queue_url))
    return AudienceSync(Ledger(dynamodb, table, 60), new_inbox(stack), dead_letters, SyncOptions(), seconds_left)


def enter(audience: str, n: int) -> AudienceChange:
    """User n enters the audience with their email (address u<n>@example.com, hashed as Criteo documents)."""
    return AudienceChange(
        audience, audience.title(), ADD, user_hash(f"u{n}"), 1_000 + n, f"e{n}", {"email": [sha(f"u{n}@example.com")]}
    )


def gathered(result: tuple[list[Waiting], bool]) -> tuple[list[str], bool]:
    """A gathering's result as the audiences written and whether the group is empty."""
    return [w.audience_key for w in result[0]], result[1]


def entry_expiries(stack: Stack) -> list[int]:
    """The `ttl` of every inbox entry."""
    items = stack.aws.client("dynamodb").scan(TableName=stack.aws.ledger_table)["Items"]
    return [int(item["ttl"]["N"]) for item in items if item["pk"]["S"].startswith("in#")]


def partitions(stack: Stack) -> dict[str, int]:
    """Items per partition key prefix (`in#`, `out#`) or partition (`inbox`, `outbox`)."""
    found: dict[str, int] = {}
    dynamodb = stack.aws.client("dynamodb")
    for page in dynamodb.get_paginator("scan").paginate(TableName=stack.aws.ledger_table):
        for item in page["Items"]:
            pk = item["pk"]["S"]
            kind = pk[: pk.index("#") + 1] if pk.startswith(("in#", "out#")) else pk
            found[kind] = found.get(kind, 0) + 1
    return found


def test_a_batch_over_many_audiences_writes_one_entry_per_group_and_nothing_per_audience(aws_stack: Stack) -> None:
    # The cost issue 12 names: every (audience, invocation) pair paid a lease, an entry, its summary and its
    # deletion, two thirds of the DynamoDB bill on a steady stream over 2,000 audiences.
    audiences = [f"aud{k}" for k in range(40)]
    changes = [enter(audience, n) for n, audience in enumerate(audiences)]
    report = new_sync(aws_stack).run([("m1", *pack_changes(changes))])
    assert not report.failed and report.counts["identifiers_queued"] == 40
    items = partitions(aws_stack)
    assert items["in#"] == items["inbox"] == GROUPS  # every group touched: one entry and one item each
    assert "out#" not in items and "outbox" not in items
    flusher = new_flusher(aws_stack, FlushPolicy(interval_seconds=0, calls_per_minute=6000), burst=10_000)
    assert flusher.tick().counts["audiences_gathered"] == 40
    for _ in range(40):  # the rest as the budget refills
        if not new_outbox(aws_stack).waiting():
            break
        time.sleep(0.25)
        flusher.tick()
    assert all(aws_stack.members(audience) == {sha(f"u{n}@example.com")} for n, audience in enumerate(audiences))
    # Gathered entries are not deleted (a delete is billed like a write): they expire in two weeks, for free.
    assert partitions(aws_stack)["in#"] == GROUPS
    assert all(14 * 86400 - 600 < expiry - time.time() <= 14 * 86400 for expiry in entry_expiries(aws_stack))
    assert all(g.first is None for g in new_inbox(aws_stack).waiting())
    assert aws_stack.criteo.count("patch") == 40


def test_a_batch_over_many_audiences_reads_and_writes_the_ledger_per_group_not_per_audience(aws_stack: Stack) -> None:
    # One BatchGetItem and one BatchWriteItem per audience: a 2,000-audience stream made ~500 ledger calls per
    # sync invocation of ~280 changes (round trips the Lambda bill counts), where 100 keys or 25 items fit in one.
    audiences = [f"aud{k}" for k in range(120)]
    sync = new_sync(aws_stack)
    calls: list[tuple[str, int]] = []

    def on_ledger_call(params: dict[str, Any], model: Any, **_: Any) -> None:
        for request in params.get("RequestItems", {}).values():
            keys = request["Keys"] if isinstance(request, dict) else [w["PutRequest"]["Item"] for w in request]
            members = [key for key in keys if key["sk"]["S"].startswith("a#")]
            if members:
                calls.append((model.name, len(members)))

    sync.ledger.dynamodb.meta.events.register("provide-client-params.dynamodb", on_ledger_call)
    changes = [enter(audience, n) for n, audience in enumerate(audiences)]
    assert not sync.run([("m1", *pack_changes(changes))]).failed
    per_group = Counter(group_of(audience) for audience in audiences)
    reads = sorted(n for name, n in calls if name == "BatchGetItem")
    writes = [n for name, n in calls if name == "BatchWriteItem"]
    assert sum(reads) == sum(writes) == 120
    assert len(reads) == sum(-(-n // 100) for n in per_group.values())  # 100 keys a read, whatever the audience
    assert len(writes) == sum(-(-n // 25) for n in per_group.values())  # 25 items a write


def test_a_group_is_gathered_when_its_oldest_change_is_due_or_once_changes_stop(aws_stack: Stack) -> None:
    clock = Clock()
    inbox, outbox = new_inbox(aws_stack, clock), new_outbox(aws_stack, clock)
    policy = FlushPolicy(interval_seconds=60, quiet_seconds=15, calls_per_minute=6000)
    flusher = new_flusher(aws_stack, policy, clock)
    group = group_of("cart")

    def append(*ids: str) -> None:
        seq = inbox.acquire(group, 0) or 0
        inbox.release(group, inbox.append(group, seq, {"cart": Slice(adds(set(ids)), "Cart", clock())}))

    append(email(1))
    for _ in range(5):  # a change every 10 s: never quiet for 15 s
        clock.advance(10)
        assert flusher.tick().counts["audiences_gathered"] == 0
        append(email(2))
    clock.advance(10)  # the oldest is 60 s old: gathered (and sent: as old in the outbox)
    assert flusher.tick().counts["audiences_gathered"] == 1
    assert aws_stack.members("cart") == {email(1), email(2)}
    append(email(3))
    clock.advance(14)
    assert flusher.tick().counts["audiences_gathered"] == 0
    clock.advance(1)  # quiet for 15 s: gathered, though not 60 s old (it waits in the outbox for its time)
    assert flusher.tick().counts["audiences_gathered"] == 1
    assert aws_stack.members("cart") == {email(1), email(2)} and len(outbox.waiting()) == 1
    clock.advance(45)
    flusher.tick()
    assert aws_stack.members("cart") == {email(1), email(2), email(3)}
    assert aws_stack.criteo.count("patch") == 2


def test_a_gathering_nets_each_audience_in_order_and_leaves_what_it_did_not_read_due(aws_stack: Stack) -> None:
    clock = Clock()
    inbox, outbox = new_inbox(aws_stack, clock), new_outbox(aws_stack, clock)
    group = group_of("cart")
    assert group_of("vip") != group
    for entry in (adds(emails(0, 3)), removes({email(1)}), adds({email(1), email(9)})):
        seq = inbox.acquire(group, 0) or 0
        inbox.release(group, inbox.append(group, seq, {"cart": Slice(entry, "Cart", clock())}))
        clock.advance(1)
    [waiting] = [g for g in inbox.waiting() if g.first is not None]
    assert waiting.first == START
    first_read, complete = inbox.oldest(waiting, max_identifiers=4)
    assert [sk.split("#")[0] for sk, _ in first_read] == [f"{1:012d}", f"{2:012d}"] and not complete
    written, emptied = inbox.gather(waiting, outbox)
    assert emptied and written == outbox.waiting()  # the summaries it wrote, as a read finds them
    assert net(s.entry for s in outbox.entries("cart")) == adds({*emails(0, 3), email(9)})
    assert written[0].name == "Cart" and written[0].first == START and written[0].counts == {("add", "email"): 4}
    # The entries stay (until they expire), behind the group's cursor: the next gathering reads only what came
    # after them.
    seq = inbox.acquire(group, 0) or 0
    inbox.release(group, inbox.append(group, seq, {"cart": Slice(removes({email(9)}), "Cart", clock())}))
    [again] = [g for g in inbox.waiting() if g.first is not None]
    assert [sk.split("#")[0] for sk, _ in inbox.oldest(again)[0]] == [f"{4:012d}"]
    assert gathered(inbox.gather(again, outbox)) == (["cart"], True)
    assert [s.entry for s in outbox.entries("cart")][1:] == [removes({email(9)})]


def test_a_group_read_in_part_is_gathered_again_at_the_next_pass_not_an_interval_later(aws_stack: Stack) -> None:
    # A gathering reads at most MAX_IDENTIFIERS_PER_FLUSH identifiers; the rest is as old as it was.
    clock = Clock()
    inbox, outbox = new_inbox(aws_stack, clock), new_outbox(aws_stack, clock)
    group = group_of("cart")
    for start in (0, 10, 20):
        seq = inbox.acquire(group, 0) or 0
        inbox.release(group, inbox.append(group, seq, {"cart": Slice(adds(emails(start, start + 10)), "", clock())}))
    [waiting] = [g for g in inbox.waiting() if g.first is not None]
    assert gathered(inbox.gather(waiting, outbox, max_identifiers=15)) == (["cart"], False)
    [left] = [g for g in inbox.waiting() if g.first is not None]
    assert left.first == START
    assert gathered(inbox.gather(left, outbox)) == (["cart"], True)
    assert net(s.entry for s in outbox.entries("cart")) == adds(emails(0, 30))


def test_a_pass_that_gathers_sends_what_it_gathered_without_reading_the_summaries_again(aws_stack: Stack) -> None:
    # Each gathering answers with the audience's summary as written (the append's UpdateItem returns it, at no
    # cost), so the flusher keeps its summaries in step instead of querying them all again after gathering (a
    # query of every audience's summary; under a backlog gatherings are rare, so the saving is small there).
    clock = Clock()
    inbox, outbox = new_inbox(aws_stack, clock), new_outbox(aws_stack, clock)
    outbox.append("vip", adds({email(7)}), "VIP", queued=START - 120)  # waiting already
    flusher = new_flusher(aws_stack, FlushPolicy(interval_seconds=60, calls_per_minute=6000), clock, burst=100)
    reads: list[str] = []
    flusher.outbox.dynamodb.meta.events.register(
        "provide-client-params.dynamodb.Query",
        lambda params, **_: reads.append(params["ExpressionAttributeValues"][":p"]["S"]),
    )

    def append(audience: str, *ids: str) -> None:
        group = group_of(audience)
        seq = inbox.acquire(group, 0) or 0
        inbox.release(group, inbox.append(group, seq, {audience: Slice(adds(set(ids)), "Cart", clock() - 120)}))

    append("cart", email(1), email(2))
    assert flusher.tick().counts["audiences_gathered"] == 1  # gathered and, 120 s old, sent in the same pass
    assert aws_stack.members("cart") == {email(1), email(2)} and aws_stack.members("vip") == {email(7)}
    append("cart", email(3))
    clock.advance(5)
    searches = aws_stack.criteo.count("search")
    assert flusher.tick().counts["patches"] == 1  # to the segment its summary remembers: no look-up
    assert aws_stack.members("cart") == {email(1), email(2), email(3)}
    assert aws_stack.criteo.count("search") == searches and aws_stack.criteo.count("patch") == 3
    assert reads.count("outbox") == 1  # the first pass's; none after either gathering
    assert outbox.waiting() == []


def test_a_gathering_that_fails_midway_leaves_the_flusher_reading_what_it_had_written(aws_stack: Stack) -> None:
    # "bags" is appended, then DynamoDB fails on "cart"'s entry: the group's cursor stays (both are gathered
    # again), and the pass reads the summaries afresh, so "bags", written before the failure, goes now.
    clock = Clock()
    inbox = new_inbox(aws_stack, clock)
    assert group_of("bags") == group_of("cart")
    group = group_of("cart")
    seq = inbox.acquire(group, 0) or 0
    slices = {a: Slice(adds({email(n)}), a.title(), clock() - 120) for n, a in enumerate(("bags", "cart"))}
    inbox.release(group, inbox.append(group, seq, slices))
    flusher = new_flusher(aws_stack, FlushPolicy(interval_seconds=60, calls_per_minute=6000), clock, burst=100)
    entry_puts: list[str] = []

    def fail_cart_entry(params: dict[str, Any], **_: Any) -> None:
        [requests] = params["RequestItems"].values()
        keys = [r["PutRequest"]["Item"]["pk"]["S"] for r in requests if "PutRequest" in r]
        entry_puts.extend(keys)
        if keys == ["out#cart"] and entry_puts.count("out#cart") == 1:
            raise EndpointConnectionError(endpoint_url="http://dynamodb")

    flusher.outbox.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", fail_cart_entry)
    report = flusher.tick()
    assert report.counts["dependency_errors"] == 1 and report.counts["audiences_gathered"] == 0
    assert aws_stack.members("bags") == {email(0)} and aws_stack.members("cart") == set()
    clock.advance(5)
    assert flusher.tick().counts["audiences_gathered"] == 2  # the cursor had stayed: both again
    assert aws_stack.members("bags") == {email(0)} and aws_stack.members("cart") == {email(1)}
    assert new_outbox(aws_stack).waiting() == []


def test_a_group_another_invocation_holds_waits_until_the_other_groups_are_done(aws_stack: Stack) -> None:
    assert group_of("a") != group_of("b")
    holder = new_inbox(aws_stack)
    assert holder.acquire(group_of("a"), 0) is not None  # another invocation, mid-batch
    sync = new_sync(aws_stack, seconds_left=lambda: 6.5)  # ~1.5 s of waiting for a lease
    messages = [("ma", *pack_changes([enter("a", 1)])), ("mb", *pack_changes([enter("b", 2)]))]
    report = sync.run(messages)
    assert report.failed == {"ma": "another invocation held the audience's lease"}
    assert report.counts["lock_timeouts"] == 1
    ledger = Ledger(aws_stack.aws.client("dynamodb"), aws_stack.aws.ledger_table, 60)
    assert ledger.memberships("b", [user_hash("u2")])[user_hash("u2")].is_in
    assert not ledger.memberships("a", [user_hash("u1")])[user_hash("u1")].is_in
    holder.release(group_of("a"))
    assert not new_sync(aws_stack).run(messages[:1]).failed
    assert ledger.memberships("a", [user_hash("u1")])[user_hash("u1")].is_in
