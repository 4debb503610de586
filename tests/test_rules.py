"""Suppression and lifecycle rules (issue: beyond the peers): ordinary Segment track events, matched by name by
the real ingest handler, become audience changes dated like the event; the real sync folds them into the
ledger (moto server) and the emulator shows the result."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from audience_sync.audience_config import ConfigError, Rule, parse
from audience_sync.inbox import Inbox
from audience_sync.ledger import Ledger
from audience_sync.membership import Membership
from audience_sync.queue import QueueWriter
from audience_sync.records import ADD, REMOVE, AudienceChange, PoisonMessage, pack_changes, unpack_changes
from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions, SyncReport
from tests.conftest import Stack
from tests.segment_events import answer, audience_event, sha, signed, user_hash
from tests.test_audience_settings import configure

HOUR_MS = 3_600_000


def track(message_id: str, name: str, user: str, timestamp: str, email: str | None = None) -> dict[str, Any]:
    """An ordinary track call as Segment's spec shows it (not sent by Engage)."""
    event: dict[str, Any] = {
        "type": "track",
        "event": name,
        "messageId": message_id,
        "timestamp": timestamp,
        "userId": user,
        "properties": {"revenue": 42.0},
        "context": {"traits": {"email": email} if email else {}},
    }
    return event


def enter(mid: str, audience: str, user: str, timestamp: str, email: str) -> dict[str, Any]:
    return audience_event(mid, audience, True, timestamp=timestamp, email=email, user_id=user)


def deliver(stack: Stack, *events: dict[str, Any]) -> dict[str, Any]:
    """One Segment request per event, in the order given; then the sync drains the queue."""
    answers = []
    for event in events:
        status, body = answer(stack.invoke_ingest(signed(event)))
        assert status == 200, body
        answers.append(body)
    stack.poller().drain()
    return answers[-1]


# --- the rules in the document -----------------------------------------------------------------------------


def test_rules_are_parsed_by_event_name() -> None:
    config = parse(
        json.dumps(
            {
                "rules": [
                    {"event": "Order Completed", "remove_from": ["cart"], "cool_down_hours": 72},
                    {"event": "Subscription Started", "remove_from": "*"},
                    {"event": "Trial Started", "add_to": "trial", "remove_from": ["prospects"]},
                ]
            }
        )
    )
    assert config.rules["Order Completed"] == Rule("Order Completed", None, ("cart",), 72 * 3600)
    assert config.rules["Subscription Started"].remove_from == ("*",) and config.suppresses_everywhere
    assert config.rules["Trial Started"] == Rule("Trial Started", "trial", ("prospects",), 0)
    assert not parse("{}").suppresses_everywhere


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({}, "rules: must be a list"),
        ([{"remove_from": ["a"]}], "rules[0].event: required"),
        ([{"event": "X"}], "rules[0]: give add_to, remove_from or both"),
        ([{"event": "X", "add_to": "a"}, {"event": "X", "add_to": "b"}], "rules[1].event: another rule is for 'X'"),
        ([{"event": "X", "add_to": "a", "remove_from": "*"}], 'rules[0].remove_from: "*" can\'t go with add_to'),
        ([{"event": "X", "add_to": "a", "remove_from": ["a"]}], "rules[0].remove_from: names add_to ('a')"),
        ([{"event": "X", "remove_from": "a"}], 'rules[0].remove_from: must be a list of audience keys or "*"'),
        ([{"event": "X", "remove_from": ["a"], "cool_down_hours": -1}], "rules[0].cool_down_hours: must be"),
        ([{"event": "X", "add_to": "a", "cool_down_hours": 1}], "rules[0].cool_down_hours: needs remove_from"),
        ([{"event": "X", "add_to": "a", "when": 1}], "rules[0].when: unknown setting"),
    ],
)
def test_a_bad_rule_is_refused_with_its_path(rules: Any, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(json.dumps({"rules": rules}))
    assert message in str(refused.value)


def test_a_suppression_record_carries_its_hold_and_old_records_still_decode() -> None:
    # Bodies as written on the wire (records.py's format), not built by the packer under test.
    old = '{"v":2,"r":[["cart","Cart","remove","u1",1000,"m1",{}]]}'
    held = '{"v":2,"r":[["*","","remove","u1",1000,"m1",{},260200000]]}'
    assert unpack_changes(old)[0].hold_until_ms == 0
    (change,) = unpack_changes(held)
    assert (change.audience_key, change.hold_until_ms) == ("*", 260200000)
    with pytest.raises(PoisonMessage):
        unpack_changes('{"v":2,"r":[["cart","","add","u1",1000,"m1",{"email":["x"]},5]]}')  # only exits hold


# --- through the pipeline ----------------------------------------------------------------------------------


def test_an_event_no_rule_names_stays_ignored(stack: Stack) -> None:
    configure(stack, {"rules": [{"event": "Order Completed", "remove_from": ["cart"]}]})
    body = deliver(stack, track("m1", "Product Viewed", "u1", "2026-11-20T10:00:00Z", "a@example.com"))
    assert (body["accepted"], body["ignored"], body["records"]) == (0, 1, 0)


def test_suppression_removes_then_holds_back_enters_until_the_cool_down_ends(stack: Stack) -> None:
    configure(stack, {"rules": [{"event": "Order Completed", "remove_from": ["cart"], "cool_down_hours": 72}]})
    deliver(stack, enter("m1", "cart", "u1", "2026-11-20T10:00:00Z", "a@example.com"))
    assert stack.members("cart") == {sha("a@example.com")}
    body = deliver(stack, track("m2", "Order Completed", "u1", "2026-11-20T12:00:00Z"))
    assert (body["accepted"], body["records"]) == (1, 1)
    assert stack.members("cart") == set()
    # Engage puts the user back in the audience a day later: within the cool-down, held back.
    deliver(stack, enter("m3", "cart", "u1", "2026-11-21T12:00:00Z", "a@example.com"))
    assert stack.members("cart") == set()
    # Four days later (after the 72 h): in again.
    deliver(stack, enter("m4", "cart", "u1", "2026-11-24T12:00:00Z", "a@example.com"))
    assert stack.members("cart") == {sha("a@example.com")}


def test_suppression_from_every_audience_also_holds_back_an_older_enter_arriving_late(stack: Stack) -> None:
    configure(stack, {"rules": [{"event": "Subscription Started", "remove_from": "*"}]})
    deliver(
        stack,
        enter("m1", "cart", "u1", "2026-11-20T10:00:00Z", "a@example.com"),
        enter("m2", "winback", "u1", "2026-11-20T10:00:00Z", "a@example.com"),
        enter("m3", "cart", "u2", "2026-11-20T10:00:00Z", "b@example.com"),
    )
    deliver(stack, track("m4", "Subscription Started", "u1", "2026-11-20T12:00:00Z"))
    assert stack.members("cart") == {sha("b@example.com")} and stack.members("winback") == set()
    # An enter dated before the suppression, delivered after it, to an audience the ledger did not hold: out.
    deliver(stack, enter("m5", "promo", "u1", "2026-11-20T11:00:00Z", "a@example.com"))
    assert stack.members("promo") == set()
    # A newer enter (no cool-down) counts.
    deliver(stack, enter("m6", "promo", "u1", "2026-11-20T13:00:00Z", "a@example.com"))
    assert stack.members("promo") == {sha("a@example.com")}


def test_a_lifecycle_move_whose_events_arrive_out_of_order_ends_where_the_newest_says(stack: Stack) -> None:
    configure(
        stack,
        {
            "rules": [
                {"event": "Trial Started", "add_to": "trial", "remove_from": ["prospects"]},
                {"event": "Subscription Started", "add_to": "subscribers", "remove_from": ["trial"]},
            ]
        },
    )
    deliver(stack, enter("m1", "prospects", "u1", "2026-11-20T09:00:00Z", "a@example.com"))
    # The subscription (12:00) reaches us before the trial (10:00) that preceded it.
    deliver(stack, track("m3", "Subscription Started", "u1", "2026-11-20T12:00:00Z", "a@example.com"))
    deliver(stack, track("m2", "Trial Started", "u1", "2026-11-20T10:00:00Z", "a@example.com"))
    assert stack.members("subscribers") == {sha("a@example.com")}
    assert stack.members("trial") == set() and stack.members("prospects") == set()


def test_a_lifecycle_enter_without_an_identifier_is_rejected_with_a_reason(stack: Stack) -> None:
    configure(stack, {"rules": [{"event": "Trial Started", "add_to": "trial"}]})
    status, body = answer(stack.invoke_ingest(signed(track("m1", "Trial Started", "u1", "2026-11-20T10:00:00Z"))))
    assert status == 400 and "to enter 'trial'" in body["errors"][0]["reason"]


def test_a_suppression_stored_while_another_invocation_enters_the_user_is_caught_by_its_recheck(stack: Stack) -> None:
    """The race the re-check closes: invocation B reads the user's stored suppression (none yet), then A stores
    one and finds no audience of the user in the ledger, then B saves the user into a new audience."""
    dynamodb, table = stack.aws.client("dynamodb"), stack.aws.ledger_table
    dead_letters = DeadLetters(QueueWriter(stack.aws.client("sqs"), stack.aws.dead_letter_queue_url))
    user = user_hash("u1")
    suppression = AudienceChange("*", "", REMOVE, user, 2_000, "m-suppress", {}, 0)
    enter_promo = AudienceChange("promo", "Promo", ADD, user, 1_000, "m-enter", {"email": [sha("a@example.com")]})
    other = AudienceSync(
        Ledger(dynamodb, table, 60), Inbox(dynamodb, table, 60), dead_letters, SyncOptions(), lambda: 60.0, True
    )

    class SuppressedMeanwhile(Ledger):
        """B's ledger: the moment B reads the memberships it will fold, A runs to the end."""

        def memberships_of(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Membership]]:
            found = super().memberships_of(wanted)
            if not other.run([("a", *pack_changes([suppression]))]).failed:
                other.run = lambda *args, **kwargs: SyncReport()  # type: ignore[method-assign]
            return found

    racing = AudienceSync(
        SuppressedMeanwhile(dynamodb, table, 60),
        Inbox(dynamodb, table, 60),
        dead_letters,
        SyncOptions(),
        lambda: 60.0,
        True,
    )
    report = racing.run([("b", *pack_changes([enter_promo]))])
    assert not report.failed and report.counts["suppression_rechecks"] == 1
    assert not Ledger(dynamodb, table, 60).memberships("promo", [user])[user].is_in
    stack.poller().scheduled()
    assert stack.members("promo") == set()


def test_a_bad_or_unreadable_document_is_reported_once_not_for_every_event(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # Every track event may match a rule, so ingest consults the document for each: a bad one used to be
    # parsed and logged again for every event, an unreadable one read from SSM again for every event.
    conversions = {"batch": [track(f"m{i}", "Order Completed", f"u{i}", "2026-11-20T12:00:00Z") for i in range(25)]}
    configure(stack, {"rules": [{"event": "Order Completed", "remov_from": ["cart"]}]})
    with caplog.at_level("WARNING"):
        assert answer(stack.invoke_ingest(signed(conversions)))[0] == 200
        assert answer(stack.invoke_ingest(signed(conversions)))[0] == 200
    assert sum("configuration refused" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    stack.aws.client("ssm").delete_parameter(Name=stack.aws.audience_settings_parameter)
    stack.ingest.ssm().clear_cache()  # as when the cached copy's max age has passed
    with caplog.at_level("WARNING"):
        assert answer(stack.invoke_ingest(signed(conversions)))[0] == 200
    assert sum("configuration unreadable" in r.getMessage() for r in caplog.records) == 1
