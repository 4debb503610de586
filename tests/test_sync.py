"""Sync handler against moto server and the Criteo emulator: exact membership with the fewest calls."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from audience_sync.inbox import group_of
from audience_sync.records import AudienceChange, pack_changes
from devtools.lambda_runtime import FakeContext
from devtools.poller import esm_attributes, outbox_waiting
from tests.conftest import AUDIENCE_PREFIX, Stack, make_stack
from tests.segment_events import audience_event, sha, signed, user_hash


def enqueue(stack: Stack, changes: list[AudienceChange], per_message: int = 1000) -> None:
    """Put records on the queue the way ingest does (packed messages)."""
    sqs = stack.aws.client("sqs")
    bodies = []
    for start in range(0, len(changes), per_message):
        bodies.extend(pack_changes(changes[start : start + per_message], max_bytes=1024 * 1024))
    for body in bodies:
        sqs.send_message(QueueUrl=stack.aws.queue_url, MessageBody=body)


def change(audience: str, op: str, email: str, ts: int, mid: str) -> AudienceChange:
    """A record as ingest queues it for the user whose only identifier is `email` (exits carry it too)."""
    return AudienceChange(audience, "", op, user_hash(f"user-of-{email}"), ts, mid, {"email": [sha(email)]})


def test_sample_flow_ingest_to_criteo(stack: Stack) -> None:
    events = [
        audience_event("e1", "cart", True, email="a@example.com", madid="6D92078A-8246-4BA4-AE5B-76104861E7DC"),
        audience_event("e2", "cart", True, email="b@example.com"),
        audience_event("e3", "vip", True, email="c@example.com"),
        audience_event("e4", "cart", False, email="b@example.com", timestamp="2026-11-20T11:00:00Z"),
    ]
    assert stack.invoke_ingest(signed(events))["statusCode"] == 200
    stack.poller().drain()
    assert stack.members("cart") == {sha("a@example.com")}
    assert stack.members("cart", "madid") == {"6d92078a-8246-4ba4-ae5b-76104861e7dc"}
    assert stack.members("vip") == {sha("c@example.com")}
    # 1 token + 1 search + 2 creates + 3 PATCHes (cart/add/email, cart/add/madid, vip/add/email);
    # b's enter and exit net to one remove, which is its own PATCH.
    assert stack.criteo.count("token") == 1
    assert stack.criteo.count("search") == 1
    assert stack.criteo.count("create") == 2
    assert stack.criteo.count("patch") == 4


def test_call_count_is_the_minimum_for_50k_plus_one_adds_and_10_removes(moto_server, criteo) -> None:  # type: ignore[no-untyped-def]
    # Visibility beyond the batch's duration, as in the template (6x the function timeout): moto needs minutes
    # here, and a message shown again while its first delivery still runs would re-send its adds.
    stack = make_stack(moto_server, criteo, visibility_timeout=900)
    adds = [change("big", "add", f"user{i}@example.com", 1000 + i, f"a{i}") for i in range(50_001)]
    removes = [change("small", "remove", f"gone{i}@example.com", 1000 + i, f"r{i}") for i in range(10)]
    enqueue(stack, adds + removes, per_message=5000)
    # Generous budgets: the count is what is checked, however slow moto is on this machine.
    stack.poller(batch_size=10_000, function_timeout_seconds=900).drain(max_seconds=1800)
    assert stack.criteo.count("patch") == 2 + 1  # 50,000 + 1 adds (Criteo's limit per call); the exits: 1
    assert len(stack.members("big")) == 50_001
    assert stack.criteo.count("token") == 1


def test_token_fetched_once_across_warm_invocations(stack: Stack) -> None:
    for i in range(5):
        enqueue(stack, [change("a", "add", f"u{i}@example.com", 1000 + i, f"m{i}")])
        stack.poller().drain()
    assert stack.criteo.count("token") == 1
    assert stack.criteo.count("search") == 1
    assert stack.criteo.count("patch") == 5


def test_exit_then_late_enter_in_a_later_batch_stays_out(stack: Stack) -> None:
    enqueue(stack, [change("a", "add", "u@example.com", 1000, "m1")])
    stack.poller().drain()
    enqueue(stack, [change("a", "remove", "u@example.com", 3000, "m3")])
    stack.poller().drain()
    enqueue(stack, [change("a", "add", "u@example.com", 2000, "m2")])  # delivered late
    stack.poller().drain()
    assert stack.members("a") == set()


def truth(changes: list[AudienceChange]) -> dict[str, set[str]]:
    """One email per user here, so the newest change per (audience, user) decides."""
    newest: dict[tuple[str, str], AudienceChange] = {}
    for c in changes:
        key = (c.audience_key, c.identifiers["email"][0])
        if key not in newest or (c.timestamp_ms, c.message_id) > (newest[key].timestamp_ms, newest[key].message_id):
            newest[key] = c
    result: dict[str, set[str]] = {}
    for (audience, identifier), c in newest.items():
        result.setdefault(audience, set())
        if c.operation == "add":
            result[audience].add(identifier)
    return result


def test_shuffled_duplicated_split_stream_with_faults_ends_exact(stack: Stack) -> None:
    rng = random.Random(7)
    changes = []
    for i in range(3000):
        audience = f"aud{i % 5}"
        email = f"user{rng.randrange(600)}@example.com"
        changes.append(change(audience, rng.choice(["add", "remove"]), email, rng.randrange(10**6), f"m{i}"))
    stream = changes + rng.sample(changes, 600)  # duplicates
    rng.shuffle(stream)
    stack.criteo.faults.error_rate = 0.2
    stack.criteo.faults.error_status = 503
    stack.criteo.faults.seed = 3
    stack.criteo.faults.fail_next = [429, 503]
    for start in range(0, len(stream), 400):
        enqueue(stack, stream[start : start + 400], per_message=100)
        if start == 1200:
            stack.criteo.expire_tokens()
        stack.poller(batch_size=rng.choice([3, 10, 40])).drain()
    expected = truth(changes)
    for audience, emails in expected.items():
        assert stack.members(audience) == emails, audience
    assert stack.queued_bodies(stack.aws.dead_letter_queue_url) == []


def test_a_patch_criteo_refuses_is_parked_with_its_reason_and_a_redrive_sends_it(stack: Stack) -> None:
    enqueue(stack, [change("a", "add", "first@example.com", 1000, "m0")])
    stack.poller().drain()
    stack.criteo.faults.fail_next = [400]
    enqueue(stack, [change("a", "add", "u@example.com", 1000, "m1")])
    stack.poller().drain()
    assert stack.members("a") == {sha("first@example.com")}
    [parked] = stack.queued_bodies(stack.aws.dead_letter_queue_url)
    assert "400" in parked["attributes"]["reason"]["StringValue"]
    assert parked["body"]["p"] == ["a", "", "add", "email", [sha("u@example.com")]]
    # Moved back to the queue (what `make redrive` does), it goes into the outbox again and reaches Criteo.
    stack.aws.client("sqs").send_message(QueueUrl=stack.aws.queue_url, MessageBody=json.dumps(parked["body"]))
    stack.poller().drain()
    assert stack.members("a") == {sha("first@example.com"), sha("u@example.com")}


def test_poison_message_goes_to_dlq_and_the_rest_syncs(stack: Stack) -> None:
    sqs = stack.aws.client("sqs")
    sqs.send_message(QueueUrl=stack.aws.queue_url, MessageBody="not json at all")
    enqueue(stack, [change("a", "add", "u@example.com", 1000, "m1")])
    stack.poller().drain()
    assert stack.members("a") == {sha("u@example.com")}
    parked = stack.aws.client("sqs").receive_message(
        QueueUrl=stack.aws.dead_letter_queue_url, MessageAttributeNames=["All"]
    )["Messages"]
    assert parked[0]["Body"] == "not json at all"
    assert "undecodable" in parked[0]["MessageAttributes"]["reason"]["StringValue"]


def test_a_criteo_outage_keeps_changes_in_the_outbox_and_sends_them_when_back(stack: Stack) -> None:
    enqueue(stack, [change("a", "add", "u1@example.com", 1000, "m1")])
    stack.poller().drain()
    stack.criteo.faults.down = True
    enqueue(stack, [change("a", "add", "u2@example.com", 1000, "m2")])
    poller = stack.poller(function_timeout_seconds=8)
    poller.poll_once()
    assert poller.stats.failed == 0 and poller.backlog() == 0  # applied and queued in the outbox: SQS is done
    assert poller.scheduled() == 1  # still waiting while Criteo is down
    stack.criteo.faults.down = False
    assert poller.scheduled() == 0
    assert stack.members("a") == {sha("u1@example.com"), sha("u2@example.com")}


def test_deleted_segment_is_re_resolved_once(stack: Stack) -> None:
    enqueue(stack, [change("a", "add", "u1@example.com", 1000, "m1")])
    stack.poller().drain()
    stack.criteo.delete_segment(AUDIENCE_PREFIX + "a")  # gone on Criteo's side; our cache still has its id
    enqueue(stack, [change("a", "add", "u2@example.com", 2000, "m2")])
    stack.poller().drain()
    assert stack.members("a") == {sha("u2@example.com")}
    # the PATCH to the cached id got 404, then one search, one create and the PATCH again
    assert (stack.criteo.count("patch"), stack.criteo.count("search"), stack.criteo.count("create")) == (3, 2, 2)


def test_invalid_client_is_a_configuration_error_not_a_crash(moto_server, criteo, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(
        moto_server,
        criteo,
        criteo_credentials={"client_id": "x", "client_secret": "s3cr3t-value", "advertiser_id": "12345"},
    )
    enqueue(stack, [change("a", "add", "u@example.com", 1000, "m1")])
    poller = stack.poller(function_timeout_seconds=10)
    poller.poll_once()
    assert poller.stats.failed == 0 and poller.scheduled() == 1  # the change waits for valid credentials
    output = capsys.readouterr().out + caplog.text
    assert '"criteo_credentials_errors":[1.0]' in output and "Criteo credentials rejected" in output
    assert "s3cr3t-value" not in output


def test_invalid_identifiers_are_counted_not_retried(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    bad = AudienceChange("a", "", "add", user_hash("bad"), 1000, "m1", {"email": ["definitely not valid"]})
    enqueue(stack, [bad, change("a", "add", "ok@example.com", 1000, "m2")])
    stack.poller().drain()
    metrics: list[dict[str, Any]] = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    assert sum(sum(m.get("invalid_identifiers", [0])) for m in metrics) == 1
    assert stack.criteo.count("patch") == 1
    assert "definitely not valid" not in json.dumps(metrics)


def test_an_incomplete_criteo_secret_keeps_changes_waiting_and_says_so(moto_server, criteo, capsys) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo, criteo_credentials={"client_id": "only-this"})
    enqueue(stack, [change("a", "add", "u@example.com", 1000, "m1")])
    poller = stack.poller(function_timeout_seconds=10)
    poller.poll_once()
    assert poller.stats.failed == 0 and poller.scheduled() == 1
    assert '"criteo_credentials_errors":[1.0]' in capsys.readouterr().out
    assert stack.criteo.count("token") == 0 and stack.queued_bodies(stack.aws.dead_letter_queue_url) == []


class OneAudienceContext(FakeContext):
    """A Lambda context whose time runs out once one more audience has something in the outbox."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.waiting = self._waiting()
        super().__init__(timeout_seconds=60)

    def _waiting(self) -> int:
        return outbox_waiting(self.stack.aws.client("dynamodb"), self.stack.aws.ledger_table)

    def get_remaining_time_in_millis(self) -> int:
        return 60_000 if self._waiting() == self.waiting else 1_000


def test_an_audience_left_out_when_time_ran_out_is_queued_again_and_goes_first_next_time(stack: Stack) -> None:
    poller = stack.poller()

    def deliver(changes: list[AudienceChange]) -> None:
        """A new message, with whatever the queue holds (what the last delivery did not reach)."""
        bodies = [json.dumps(b["body"]) for b in stack.queued_bodies()] + list(pack_changes(changes))
        records = [{"messageId": f"m{i}", "body": b} for i, b in enumerate(bodies)]
        result = stack.sync.handler({"Records": records}, OneAudienceContext(stack))
        assert result["batchItemFailures"] == [], "the rest is queued again: no message comes back whole"
        assert poller.scheduled() == 0

    # Every delivery brings new work for "a"; in a fixed order "b" (after "a") would never get its turn.
    deliver([change("a", "add", "a1@example.com", 1, "e1"), change("b", "add", "b1@example.com", 1, "e2")])
    assert stack.members("a") == {sha("a1@example.com")} and stack.members("b") == set()
    assert stack.queue_length(stack.aws.queue_url) == 1  # b's change, in a message of its own
    deliver([change("a", "add", "a2@example.com", 2, "e3")])
    assert stack.members("b") == {sha("b1@example.com")}
    deliver([])
    assert stack.members("a") == {sha("a1@example.com"), sha("a2@example.com")}


class OneVisitContext(FakeContext):
    """A Lambda context with time for one group of audiences: it runs out once the sync has released one group's
    lease
    (a batch too big for one invocation, as moto made the 1M-change chaos soak's batches of 200 audiences)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        super().__init__(timeout_seconds=60)
        self.began = time.time()  # (the ledger's clock, as in the items' `synced`)

    def get_remaining_time_in_millis(self) -> int:
        items = self.stack.aws.client("dynamodb").query(
            TableName=self.stack.aws.ledger_table,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "inbox"}},
        )["Items"]
        visited = sum(float(item.get("synced", {}).get("N", "0")) >= self.began for item in items)
        return 60_000 if visited == 0 else 1_000


def test_a_message_too_big_for_one_invocation_progresses_instead_of_ending_in_the_dlq(stack: Stack) -> None:
    # Handed back whole, a message needs all its audiences done in one delivery: one that never fits came
    # back until its fifth delivery parked it. The audiences not reached now go back to the queue by themselves.
    audiences = [name for k in range(100) if group_of(name := f"aud{k}") not in {group_of(f"aud{j}") for j in range(k)}]
    assert len(audiences) >= 7
    audiences = audiences[:7]  # in seven groups of audiences: one per invocation
    changes = [change(audience, "add", f"u{k}@example.com", 1, f"e{k}") for k, audience in enumerate(audiences)]
    enqueue(stack, changes)  # one message, seven audiences
    poller = stack.poller(context=lambda: OneVisitContext(stack))
    poller.drain()
    assert stack.queue_length(stack.aws.dead_letter_queue_url) == 0
    for k, audience in enumerate(audiences):
        assert stack.members(audience) == {sha(f"u{k}@example.com")}
    assert poller.stats.invocations == 7 and poller.stats.failed == 0


def test_a_consent_withdrawal_too_big_for_one_invocation_progresses_instead_of_ending_in_the_dlq(
    moto_server,
    criteo,  # type: ignore[no-untyped-def]
) -> None:
    # A withdrawal re-evaluates every audience of the user; handed back whole when the time ran out, each delivery
    # started again from all of them, and a user in more audiences than deliveries allowed was parked.
    stack = make_stack(moto_server, criteo, env={"CONSENT_CATEGORIES": "Advertising"}, max_receive_count=3)
    user = user_hash("user-of-u@example.com")
    grant = AudienceChange("", "", "grant", user, 1, "g1", {})
    enqueue(stack, [grant] + [change(f"aud{k}", "add", "u@example.com", 2, f"e{k}") for k in range(7)])
    stack.poller().drain()
    assert all(stack.members(f"aud{k}") == {sha("u@example.com")} for k in range(7))
    enqueue(stack, [AudienceChange("", "", "deny", user, 3, "d1", {})])
    poller = stack.poller(context=lambda: OneVisitContext(stack))
    poller.drain()
    assert stack.queue_length(stack.aws.dead_letter_queue_url) == 0
    assert all(stack.members(f"aud{k}") == set() for k in range(7))
    assert poller.stats.failed == 0


def test_changes_sent_back_to_the_queue_keep_when_they_were_first_queued(stack: Stack) -> None:
    # A requeued message has a new SentTimestamp: without the original time the flush would take its changes for
    # new ones and hold them up to one more flush interval.
    enqueue(stack, [change("a", "add", "a@example.com", 1, "e1"), change("b", "add", "b@example.com", 1, "e2")])
    sqs = stack.aws.client("sqs")
    [message] = sqs.receive_message(QueueUrl=stack.aws.queue_url, AttributeNames=["All"])["Messages"]
    sent = int(message["Attributes"]["SentTimestamp"]) / 1000
    record = {"messageId": "m", "body": message["Body"], "attributes": message["Attributes"]}
    assert stack.sync.handler({"Records": [record]}, OneAudienceContext(stack))["batchItemFailures"] == []
    sqs.delete_message(QueueUrl=stack.aws.queue_url, ReceiptHandle=message["ReceiptHandle"])
    [requeued] = stack.queued_bodies()
    assert float(requeued["attributes"]["queued"]["StringValue"]) == pytest.approx(sent, abs=0.001)
    # Sent back once more, it still says the first time (the event source mapping's attribute format).
    records = [
        {
            "messageId": "r",
            "body": json.dumps(requeued["body"]),
            "messageAttributes": esm_attributes(requeued["attributes"]),
        }
    ]
    no_time = FakeContext(timeout_seconds=1)  # nothing is reached: all of it goes back
    assert stack.sync.handler({"Records": records}, no_time)["batchItemFailures"] == []
    [again] = stack.queued_bodies()
    assert float(again["attributes"]["queued"]["StringValue"]) == pytest.approx(sent, abs=0.001)
