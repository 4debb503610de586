"""Exact membership per user, end to end on moto server + the Criteo emulator (issue: membership ledger).

Each test reproduces one defect found when the sync tracked identifiers instead of users; expected
identifiers are written out or computed from Criteo's documented rules with hashlib, never with our code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from audience_sync.inbox import group_of
from devtools.criteo_emulator import CriteoEmulator
from devtools.lambda_runtime import FakeContext
from devtools.local_aws import DEV_CRITEO, MotoServer
from tests.conftest import AUDIENCE_PREFIX, Stack, make_stack
from tests.segment_events import answer, audience_event, sha, signed

MADID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
ZERO = "00000000-0000-0000-0000-000000000000"


def sync(stack: Stack, *payloads: Any) -> list[dict[str, Any]]:
    """Ingest each payload in turn, draining the queue into Criteo after each; the ingest answers."""
    answers = []
    for payload in payloads:
        status, body = answer(stack.invoke_ingest(signed(payload)))
        answers.append({"status": status, **body})
        stack.poller().drain()
    return answers


def enter(mid: str, user: str, ts: str = "2026-11-20T10:00:00Z", **ids: Any) -> dict[str, Any]:
    return audience_event(mid, "cart", True, timestamp=ts, email=ids.pop("email", None), user_id=user, **ids)


def leave(mid: str, user: str, ts: str = "2026-11-20T12:00:00Z", **ids: Any) -> dict[str, Any]:
    return audience_event(mid, "cart", False, timestamp=ts, email=ids.pop("email", None), user_id=user, **ids)


# 1. Timestamps ------------------------------------------------------------------------------------------


def test_a_future_dated_enter_does_not_freeze_the_user(stack: Stack) -> None:
    future = enter("m1", "u1", ts="2099-01-01T00:00:00Z", email="a@example.com")
    future["receivedAt"] = "2026-11-20T10:00:00Z"
    answers = sync(stack, future, leave("m2", "u1", ts="2026-11-20T11:00:00Z"))
    assert stack.members("cart") == set()
    assert answers[0]["accepted"] == 1


def test_a_future_dated_exit_does_not_block_re_entry(stack: Stack) -> None:
    first = enter("m1", "u1", ts="2026-11-20T09:00:00Z", email="a@example.com")
    future_exit = leave("m2", "u1", ts="2099-01-01T00:00:00Z")
    future_exit["receivedAt"] = "2026-11-20T10:00:00Z"
    sync(stack, first, future_exit, enter("m3", "u1", ts="2026-11-20T11:00:00Z", email="a@example.com"))
    assert stack.members("cart") == {sha("a@example.com")}


def test_a_timestamp_after_our_own_clock_is_clamped_without_receivedat(stack: Stack) -> None:
    sync(stack, enter("m1", "u1", ts="2099-01-01T00:00:00Z", email="a@example.com"))
    # An exit stamped now-ish (the real clock) must win against the clamped enter.
    sync(stack, leave("m2", "u1", ts="2030-01-01T00:00:00Z"))
    assert stack.members("cart") == set()


def test_a_received_at_after_our_own_clock_is_not_trusted_either(stack: Stack) -> None:
    # Segment stamps receivedAt on receipt, so one ahead of our clock is a replay or a relay's clock: the
    # enter is dated now, and an exit stamped after it (clamped to a later now) wins.
    future = enter("m1", "u1", ts="2099-01-01T00:00:00Z", email="a@example.com")
    future["receivedAt"] = "2099-01-01T00:00:00Z"
    sync(stack, future)
    sync(stack, leave("m2", "u1", ts="2030-01-01T00:00:00Z"))
    assert stack.members("cart") == set()


def test_dates_before_1970_order_across_batches_like_within(stack: Stack) -> None:
    sync(stack, leave("m2", "u1", ts="1969-12-31T00:00:00Z"))
    sync(stack, enter("m1", "u1", ts="1969-06-01T00:00:00Z", email="a@example.com"))  # older: stays out
    assert stack.members("cart") == set()
    sync(stack, enter("m3", "u1", ts="1970-01-02T00:00:00Z", email="a@example.com"))
    assert stack.members("cart") == {sha("a@example.com")}


# 2. Per user, not per identifier ------------------------------------------------------------------------


def test_an_exit_with_email_only_removes_the_madid_too(stack: Stack) -> None:
    sync(stack, enter("m1", "u1", email="a@example.com", madid=MADID), leave("m2", "u1", email="a@example.com"))
    assert stack.members("cart") == set()
    assert stack.members("cart", "madid") == set()


def test_an_email_changed_between_enter_and_exit_leaves_nothing_behind(stack: Stack) -> None:
    sync(
        stack,
        enter("m1", "u1", ts="2026-11-20T10:00:00Z", email="old@example.com"),
        enter("m2", "u1", ts="2026-11-20T11:00:00Z", email="new@example.com"),
    )
    assert stack.members("cart") == {sha("new@example.com")}  # the old email left the profile
    sync(stack, leave("m3", "u1", ts="2026-11-20T12:00:00Z", email="new@example.com"))
    assert stack.members("cart") == set()


def test_one_event_per_identifier_adds_up_and_other_users_stay(stack: Stack) -> None:
    sync(
        stack,
        [
            enter("m1", "u1", email="a1@example.com"),
            enter("m2", "u1", email="a2@example.com"),
            enter("m3", "u2", email="b@example.com"),
        ],
    )
    assert stack.members("cart") == {sha("a1@example.com"), sha("a2@example.com"), sha("b@example.com")}
    sync(stack, leave("m4", "u1"))
    assert stack.members("cart") == {sha("b@example.com")}


# 3. An exit with only a user id ------------------------------------------------------------------------


def test_an_exit_with_only_a_user_id_is_accepted_and_applied(stack: Stack) -> None:
    answers = sync(stack, enter("m1", "u1", email="a@example.com", madid=MADID), leave("m2", "u1"))
    assert answers[1]["status"] == 200 and answers[1]["accepted"] == 1
    assert stack.members("cart") == set() and stack.members("cart", "madid") == set()


def test_an_anonymous_user_is_tracked_by_anonymous_id(stack: Stack) -> None:
    first = enter("m1", "x", email="a@example.com")
    del first["userId"]
    first["anonymousId"] = "anon-1"
    exit_event = leave("m2", "x")
    del exit_event["userId"]
    exit_event["anonymousId"] = "anon-1"
    sync(stack, first, exit_event)
    assert stack.members("cart") == set()


def test_an_event_with_neither_user_id_is_rejected_with_a_reason(stack: Stack) -> None:
    event = leave("m1", "x", email="a@example.com")
    del event["userId"]
    status, body = answer(stack.invoke_ingest(signed(event)))
    assert status == 400 and "userId" in body["errors"][0]["reason"]


# 4. Phone numbers as Criteo documents them -----------------------------------------------------------------


def test_a_phone_number_reaches_criteo_in_its_documented_hashed_form(
    moto_server: MotoServer, criteo: CriteoEmulator
) -> None:
    stack = make_stack(moto_server, criteo, env={"IDENTIFIER_TYPES": "email,phoneNumber"})
    event = enter("m1", "u1")
    event["context"]["traits"] = {"phone": "+33 1 40 40 22 90"}
    sync(stack, event)
    # Criteo's worked example: sha256("33140402290"), no "+".
    assert stack.members("cart", "phoneNumber") == {"fda66831d0cb0eb4bffb21bc795308d69921c211c57be0ae15702071e3b9e988"}


# 5. One bad field does not sink the event ------------------------------------------------------------------


def test_a_bad_identifier_field_does_not_reject_good_ones(moto_server: MotoServer, criteo: CriteoEmulator) -> None:
    stack = make_stack(moto_server, criteo, env={"IDENTIFIER_TYPES": "email,madid,phoneNumber"})
    numeric_phone = enter("m1", "u1", email="a@example.com", madid=MADID)
    numeric_phone["context"]["traits"]["phone"] = 14155550123
    false_email = enter("m2", "u2")
    false_email["context"]["traits"]["email"] = False
    false_email["properties"]["email"] = "b@example.com"  # the next path still counts
    answers = sync(stack, [numeric_phone, false_email])
    assert answers[0]["accepted"] == 2 and answers[0]["rejected"] == 0
    assert stack.members("cart") == {sha("a@example.com"), sha("b@example.com")}
    assert stack.members("cart", "madid") == {MADID.lower()}


# 6. Opted-out and zero device ids ----------------------------------------------------------------------------


def test_zero_and_limited_tracking_madids_are_never_sent(stack: Stack) -> None:
    zero = enter("m1", "u1", email="a@example.com", madid=ZERO)
    limited = enter("m2", "u2", email="b@example.com", madid=MADID)
    limited["context"]["device"]["adTrackingEnabled"] = False
    sync(stack, [zero, limited])
    assert stack.members("cart", "madid") == set()
    assert stack.members("cart") == {sha("a@example.com"), sha("b@example.com")}


def test_limiting_ad_tracking_later_removes_the_madid(stack: Stack) -> None:
    sync(stack, enter("m1", "u1", ts="2026-11-20T10:00:00Z", email="a@example.com", madid=MADID))
    limited = enter("m2", "u1", ts="2026-11-20T11:00:00Z", email="a@example.com", madid=MADID)
    limited["context"]["device"]["adTrackingEnabled"] = False
    sync(stack, limited)
    assert stack.members("cart", "madid") == set()
    assert stack.members("cart") == {sha("a@example.com")}


# 9. The batch envelope's shared context ------------------------------------------------------------------------


def test_the_batch_context_is_merged_into_each_event(stack: Stack) -> None:
    bare = enter("m1", "u1")
    del bare["context"]["traits"]
    answers = sync(stack, {"batch": [bare], "context": {"traits": {"email": "shared@example.com"}}})
    assert answers[0]["accepted"] == 1
    assert stack.members("cart") == {sha("shared@example.com")}


# 10. gum ---------------------------------------------------------------------------------------------------------


def test_gum_identifiers_are_sent_with_the_caller_id(moto_server: MotoServer, criteo: CriteoEmulator) -> None:
    stack = make_stack(moto_server, criteo, env={"IDENTIFIER_TYPES": "email,gum", "GUM_CALLER_ID": "42"})
    event = enter("m1", "u1", email="a@example.com")
    event["context"]["traits"]["gum_id"] = "1234567890"
    sync(stack, event)
    assert stack.members("cart", "gum") == {"1234567890"}
    assert criteo.spec_violations == []


# Consent ------------------------------------------------------------------------------------------------------------


def consented(event: dict[str, Any], advertising: bool) -> dict[str, Any]:
    event["context"]["consent"] = {"categoryPreferences": {"Advertising": advertising, "Analytics": True}}
    return event


def preference_update(mid: str, user: str, ts: str, advertising: bool) -> dict[str, Any]:
    event = {
        "type": "track",
        "event": "Segment Consent Preference Updated",
        "messageId": mid,
        "timestamp": ts,
        "userId": user,
        "context": {},
    }
    return consented(event, advertising)


@pytest.fixture
def consent_stack(moto_server: MotoServer, criteo: CriteoEmulator) -> Stack:
    return make_stack(moto_server, criteo, env={"CONSENT_CATEGORIES": "Advertising"})


def test_without_advertising_consent_a_user_is_not_added(consent_stack: Stack) -> None:
    stack = consent_stack
    sync(
        stack,
        [
            consented(enter("m1", "u1", email="yes@example.com"), True),
            consented(enter("m2", "u2", email="no@example.com"), False),
            enter("m3", "u3", email="unknown@example.com"),  # no consent information: not granted
        ],
    )
    assert stack.members("cart") == {sha("yes@example.com")}
    # Their first grant, later and without an audience event, adds them with the identifiers held.
    sync(stack, preference_update("m4", "u3", "2026-11-21T10:00:00Z", True))
    assert stack.members("cart") == {sha("yes@example.com"), sha("unknown@example.com")}


def test_withdrawing_consent_removes_the_user_everywhere_and_granting_adds_them(consent_stack: Stack) -> None:
    stack = consent_stack
    vip = audience_event("m2", "vip", True, email="a@example.com", user_id="u1")
    sync(stack, [consented(enter("m1", "u1", email="a@example.com"), True), vip])
    assert stack.members("cart") == stack.members("vip") == {sha("a@example.com")}
    answers = sync(stack, preference_update("m3", "u1", "2026-11-21T10:00:00Z", False))
    assert answers[0]["accepted"] == 1
    assert stack.members("cart") == stack.members("vip") == set()
    sync(stack, preference_update("m4", "u1", "2026-11-22T10:00:00Z", True))
    assert stack.members("cart") == stack.members("vip") == {sha("a@example.com")}
    # an older withdrawal delivered late changes nothing
    sync(stack, preference_update("m5", "u1", "2026-11-21T12:00:00Z", False))
    assert stack.members("cart") == {sha("a@example.com")}


# Every rejection is visible ------------------------------------------------------------------------------------------


def test_rejections_are_counted_by_reason_and_logged_without_pii(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    no_user = leave("m1", "x", email="secret.person@example.com")
    del no_user["userId"]
    bad_email = enter("m2", "u2")
    bad_email["context"]["traits"]["email"] = "not-an-email"
    status, body = answer(stack.invoke_ingest(signed([no_user, bad_email, enter("m3", "u3", email="c@example.com")])))
    assert status == 200 and body["rejected"] == 2
    records = {record.getMessage(): vars(record) for record in caplog.records}
    emitted = records["delivery handled"]  # the handler logs exactly the counts it emits as metrics
    assert emitted["exits_rejected"] == 1
    assert emitted["rejected_no_user"] == 1 and emitted["rejected_no_identifier"] == 1
    assert emitted["dropped_invalid_email"] == 1
    assert {"reason": "no_user", "audience": "cart", "operation": "remove", "count": 1} in records["events rejected"][
        "rejected"
    ]
    logged = repr([vars(record) for record in caplog.records])
    assert "secret.person" not in logged and "not-an-email" not in logged


# 8. Segments owned by another deployment ------------------------------------------------------------------------------


def test_a_segment_another_deployment_owns_is_refused_until_adopted(
    moto_server: MotoServer, criteo: CriteoEmulator
) -> None:
    production = make_stack(moto_server, criteo, env={"DEPLOYMENT_ID": "prod"})
    sync(production, enter("m1", "u1", email="prod@example.com"))
    staging = make_stack(moto_server, criteo, env={"DEPLOYMENT_ID": "staging"})
    staging.invoke_ingest(signed(leave("m2", "u1", email="prod@example.com")))
    sqs = staging.aws.client("sqs")
    messages = sqs.receive_message(QueueUrl=staging.aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]
    result = staging.sync.handler({"Records": records}, FakeContext(timeout_seconds=10))
    assert result["batchItemFailures"] == []  # applied to staging's ledger; its outbox keeps the exit
    assert staging.poller().scheduled() == 1  # the flush refuses the segment, again and again
    assert production.members("cart") == {sha("prod@example.com")}  # staging's exit did not touch production's member
    # Adopting it (e.g. after migrating from Segment's own destination) is an explicit setting.
    adopting = make_stack(moto_server, criteo, env={"DEPLOYMENT_ID": "staging", "ADOPT_SEGMENTS": "segment_cart"})
    sync(adopting, enter("m3", "u9", email="adopted@example.com"))
    assert adopting.members("cart") == {sha("prod@example.com"), sha("adopted@example.com")}


def test_a_segment_created_by_segments_own_destination_is_refused_with_a_clear_reason(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.criteo.state.create(DEV_CRITEO["advertiser_id"], "segment_cart", "Segment Engage audience")
    stack.invoke_ingest(signed(enter("m1", "u1", email="a@example.com")))
    sqs = stack.aws.client("sqs")
    messages = sqs.receive_message(QueueUrl=stack.aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]
    assert stack.sync.handler({"Records": records}, FakeContext(timeout_seconds=10))["batchItemFailures"] == []
    assert stack.poller().scheduled() == 1 and stack.members("cart") == set()
    reasons = [getattr(r, "reason", "") for r in caplog.records if "owned by another deployment" in r.getMessage()]
    assert reasons and "ADOPT_SEGMENTS" in reasons[0]


def hold_lease(stack: Stack, audience: str) -> None:
    """Another (crashed) invocation's lease on an audience's group, for a minute."""
    stack.aws.client("dynamodb").put_item(
        TableName=stack.aws.ledger_table,
        Item={
            "pk": {"S": "inbox"},
            "sk": {"S": group_of(audience)},
            "owner": {"S": "someone-else"},
            "expires": {"N": str(int(time.time()) + 60)},
        },
    )


def test_a_withdrawal_whose_re_evaluation_failed_is_finished_by_the_next_consent_change(consent_stack: Stack) -> None:
    stack = consent_stack
    sync(stack, consented(enter("m1", "u1", email="a@example.com"), True))
    stack.invoke_ingest(signed(preference_update("m2", "u1", "2026-11-21T10:00:00Z", False)))
    sqs = stack.aws.client("sqs")
    [message] = sqs.receive_message(QueueUrl=stack.aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    hold_lease(stack, "cart")  # re-evaluating "cart" fails: the withdrawal is stored, marked pending
    result = stack.sync.handler({"Records": [{"messageId": "x", "body": message["Body"]}]}, FakeContext(8))
    assert result["batchItemFailures"] == [{"itemIdentifier": "x"}]
    sqs.delete_message(QueueUrl=stack.aws.queue_url, ReceiptHandle=message["ReceiptHandle"])  # e.g. parked
    stack.aws.client("dynamodb").delete_item(
        TableName=stack.aws.ledger_table, Key={"pk": {"S": "inbox"}, "sk": {"S": group_of("cart")}}
    )
    assert stack.members("cart") == {sha("a@example.com")}
    # A later consent event with the same answer changes nothing by itself, but the pending one is finished.
    sync(stack, preference_update("m3", "u1", "2026-11-21T11:00:00Z", False))
    assert stack.members("cart") == set()


def test_adds_are_queued_again_when_their_message_comes_back(stack: Stack) -> None:
    """The ledger records a user's new identifiers before their outbox entry (so a sync that dies in between
    can't leave them unknown); a message delivered again may come from such a sync, so its adds are queued
    again even though the ledger already holds them."""
    stack.invoke_ingest(signed(enter("m1", "u1", email="a@example.com")))
    sqs = stack.aws.client("sqs")
    [message] = sqs.receive_message(QueueUrl=stack.aws.queue_url, MaxNumberOfMessages=10)["Messages"]

    def deliver(count: int) -> dict[str, Any]:
        record = {"messageId": "x", "body": message["Body"], "attributes": {"ApproximateReceiveCount": str(count)}}
        result: dict[str, Any] = stack.sync.handler({"Records": [record]}, FakeContext(8))
        return result

    assert deliver(1)["batchItemFailures"] == []
    stack.criteo.delete_segment(AUDIENCE_PREFIX + "cart")  # as if the first delivery had died before its entry
    assert deliver(1)["batchItemFailures"] == [] and stack.members("cart") == set()  # a duplicate: nothing new
    assert deliver(2)["batchItemFailures"] == []  # delivered again: its adds go out again
    assert stack.members("cart") == {sha("a@example.com")}
    sqs.delete_message(QueueUrl=stack.aws.queue_url, ReceiptHandle=message["ReceiptHandle"])  # done, as the ESM does
    # A newer exit then takes out what the ledger wrote ahead, whatever Criteo had received.
    sync(stack, leave("m2", "u1"))
    assert stack.members("cart") == set()
