"""The chaos soak's truth (devtools/chaos_events.py) on small hand-written Segment events, one rule per
test, and its generator: deterministic, and producing every kind of chaos at the CI size."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from typing import Any

from devtools.chaos_events import (
    KINDS,
    TIMELINE_END_MS,
    ZERO_MADID,
    carried,
    consent_granted,
    criteo_identifier,
    effective_ms,
    expected_members,
    generate,
    iso_ms,
    members_in,
    single_batch_patches,
    timeline_ms,
    user_key,
)

CI_EVENTS, CI_AUDIENCES = 2000, 3  # the CI-sized soak (tests/test_chaos.py), seed 1 (the default)
# Criteo's worked example (help centre, "Pass phone numbers"): digits only, no '+', SHA-256.
PHONE = "+33 1 40 40 22 90"
PHONE_HASH = "fda66831d0cb0eb4bffb21bc795308d69921c211c57be0ae15702071e3b9e988"
JANE = hashlib.sha256(b"jane.doe@example.com").hexdigest()
JANE_NEW = hashlib.sha256(b"jane@new.example").hexdigest()
JANE_WORK = hashlib.sha256(b"jane@work.example").hexdigest()
MADID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
GRANT = {"Advertising": True, "Analytics": False}
DENY = {"Advertising": False, "Analytics": True}
EMPTY: dict[str, set[str]] = {"email": set(), "madid": set(), "phoneNumber": set(), "identityLink": set()}


def event(
    message_id: str,
    at: str,
    name: str = "Audience Entered",
    *,
    user: str | None = "u1",
    anonymous: str | None = None,
    audience: str = "aud",
    traits: dict[str, str] | None = None,
    device: dict[str, Any] | None = None,
    consent: dict[str, bool] | None = None,
    received: str | None = None,
) -> dict[str, Any]:
    """A Segment track event at `at` (HH:MM:SS on 2026-11-20, or a full ISO time), received 999 ms later unless told."""
    timestamp = at if "T" in at else f"2026-11-20T{at}.000Z"
    body: dict[str, Any] = {
        "type": "track",
        "event": name,
        "messageId": message_id,
        "timestamp": timestamp,
        "receivedAt": received or timestamp.replace(".000Z", ".999Z"),
        "properties": {"audience_key": audience} if name.startswith("Audience") else {},
        "context": {"traits": traits or {}},
    }
    if user:
        body["userId"] = user
    if anonymous:
        body["anonymousId"] = anonymous
    if device is not None:
        body["context"]["device"] = device
    if consent is not None:
        body["context"]["consent"] = {"categoryPreferences": consent}
    return body


def consent_update(message_id: str, at: str, preferences: dict[str, bool], user: str = "u1") -> dict[str, Any]:
    return event(message_id, at, "Segment Consent Preference Updated", user=user, consent=preferences)


def members(events: list[dict[str, Any]], audience: str = "aud") -> dict[str, set[str]]:
    return expected_members(events)[f"segment_{audience}"]


def test_criteo_forms_follow_criteos_documented_examples() -> None:
    assert criteo_identifier("phoneNumber", PHONE) == PHONE_HASH
    assert criteo_identifier("phoneNumber", "1 (234) 567-8910") == (
        "63640264849a87c90356129d99ea165e37aa5fabc1fea46906df1a7ca50db492"
    )
    assert criteo_identifier("email", "  Jane.Doe@Example.COM ") == JANE
    assert criteo_identifier("madid", MADID.upper()) == MADID
    assert criteo_identifier("identityLink", "XY000000000001LR") == "XY000000000001LR"


def test_an_enter_grants_its_identifiers_and_an_exit_removes_every_one_even_those_it_did_not_carry() -> None:
    enter = event(
        "m1", "10:00:00", traits={"email": "Jane.Doe@Example.com", "phone": PHONE}, device={"advertisingId": MADID}
    )
    assert members([consent_update("c", "09:00:00", GRANT), enter]) == {
        "email": {JANE},
        "madid": {MADID},
        "phoneNumber": {PHONE_HASH},
        "identityLink": set(),
    }
    exit_with_email_only = event("m2", "10:05:00", "Audience Exited", traits={"email": "jane.doe@example.com"})
    assert members([consent_update("c", "09:00:00", GRANT), enter, exit_with_email_only]) == EMPTY
    exit_with_user_id_only = event("m2", "10:05:00", "Audience Exited")
    assert members([consent_update("c", "09:00:00", GRANT), enter, exit_with_user_id_only]) == EMPTY
    # Back in with the email only: the madid and phone of before the exit do not come back.
    again = event("m3", "10:10:00", traits={"email": "jane.doe@example.com"})
    assert members([consent_update("c", "09:00:00", GRANT), enter, exit_with_user_id_only, again]) == {
        **EMPTY,
        "email": {JANE},
    }
    # An exit older than the enter changes nothing, in whatever order they arrive.
    old_exit = event("m0", "09:59:59", "Audience Exited")
    assert members([enter, old_exit, consent_update("c", "09:00:00", GRANT)])["email"] == {JANE}


def test_a_newer_enter_with_another_email_replaces_the_email_and_keeps_what_it_did_not_carry() -> None:
    events = [
        consent_update("c", "09:00:00", GRANT),
        event("m1", "10:00:00", traits={"email": "jane.doe@example.com", "phone": PHONE}),
        event("m2", "11:00:00", traits={"email": " Jane@New.Example "}),
    ]
    assert members(events) == {**EMPTY, "email": {JANE_NEW}, "phoneNumber": {PHONE_HASH}}
    assert members(events[::-1]) == members(events)  # arrival order does not matter


def test_same_timestamp_siblings_are_united_per_identifier_type() -> None:
    events = [
        consent_update("c", "09:00:00", GRANT),
        event("old", "09:30:00", traits={"email": "old@example.com"}),
        event("s-a", "10:00:00", traits={"email": "jane.doe@example.com"}),
        event("s-b", "10:00:00", traits={"email": "jane@work.example"}),
        event("s-c", "10:00:00", device={"advertisingId": MADID}),
        event("s-d", "10:00:00", traits={"phone": PHONE}),
    ]
    assert members(events) == {
        "email": {JANE, JANE_WORK},
        "madid": {MADID},
        "phoneNumber": {PHONE_HASH},
        "identityLink": set(),
    }


def test_a_future_timestamp_is_clamped_to_received_at_and_a_small_skew_is_kept() -> None:
    grant = consent_update("c", "09:00:00", GRANT)
    future_enter = event(
        "m1", "2099-11-20T10:00:00.000Z", traits={"email": "jane.doe@example.com"}, received="2026-11-20T10:00:01.000Z"
    )
    assert effective_ms(future_enter) == iso_ms("2026-11-20T10:00:01Z")
    exit_later = event("m2", "10:05:00", "Audience Exited")
    assert members([grant, future_enter, exit_later]) == EMPTY  # unclamped, the 2099 enter would win
    # 299 s ahead of receipt is trusted as is: this enter is newer than the 10:05 exit.
    skewed = event("m3", "10:06:00", traits={"email": "jane.doe@example.com"}, received="2026-11-20T10:01:01.000Z")
    assert effective_ms(skewed) == iso_ms("2026-11-20T10:06:00Z")
    assert members([grant, exit_later, skewed])["email"] == {JANE}
    # 301 s ahead is not: clamped to 10:00:59, older than the exit.
    too_far = event("m3", "10:06:00", traits={"email": "jane.doe@example.com"}, received="2026-11-20T10:00:59.000Z")
    assert members([grant, exit_later, too_far]) == EMPTY


def test_equal_times_are_ordered_by_message_id() -> None:
    grant = consent_update("c", "09:00:00", GRANT)
    enter = event("m-b", "10:00:00", traits={"email": "jane.doe@example.com"})
    assert members([grant, enter, event("m-a", "10:00:00", "Audience Exited")])["email"] == {JANE}
    assert members([grant, enter, event("m-c", "10:00:00", "Audience Exited")])["email"] == set()


def test_a_zero_or_limited_advertising_id_removes_the_madid() -> None:
    grant = consent_update("c", "09:00:00", GRANT)
    with_madid = event(
        "m1", "10:00:00", traits={"email": "jane.doe@example.com"}, device={"advertisingId": MADID.upper()}
    )
    zero = event("m2", "10:01:00", device={"advertisingId": ZERO_MADID})
    limited = event("m2", "10:01:00", device={"advertisingId": MADID, "adTrackingEnabled": False})
    no_device = event("m2", "10:01:00", traits={"email": "jane.doe@example.com"})
    assert carried(zero) == carried(limited) == {"madid": set()}
    assert members([grant, with_madid]) == {**EMPTY, "email": {JANE}, "madid": {MADID}}
    assert members([grant, with_madid, zero]) == {**EMPTY, "email": {JANE}}
    assert members([grant, with_madid, limited]) == {**EMPTY, "email": {JANE}}
    assert members([grant, with_madid, no_device]) == {**EMPTY, "email": {JANE}, "madid": {MADID}}
    tracking_again = event("m3", "10:02:00", device={"advertisingId": MADID, "adTrackingEnabled": True})
    assert members([grant, with_madid, limited, tracking_again])["madid"] == {MADID}
    # A zero id never becomes a member, even alone.
    assert members([grant, event("m4", "11:00:00", device={"advertisingId": ZERO_MADID})]) == EMPTY


def test_consent_missing_refused_withdrawn_and_granted_again() -> None:
    enter = event("m1", "10:00:00", traits={"email": "jane.doe@example.com"})
    assert consent_granted([enter]) == {}
    assert members([enter]) == EMPTY  # never any consent information: not granted
    assert members([enter, consent_update("c1", "09:00:00", DENY)]) == EMPTY  # Analytics alone is not enough
    assert members([enter, consent_update("c1", "09:00:00", {"Analytics": True})]) == EMPTY  # category missing
    granted_on_the_enter = event("m1", "10:00:00", traits={"email": "jane.doe@example.com"}, consent=GRANT)
    assert members([granted_on_the_enter])["email"] == {JANE}
    withdrawn = consent_update("c2", "12:00:00", {"Advertising": False, "Analytics": False})
    assert consent_granted([granted_on_the_enter, withdrawn]) == {"u1": False}
    assert members([granted_on_the_enter, withdrawn]) == EMPTY
    regranted = consent_update("c3", "13:00:00", GRANT)
    assert members([regranted, withdrawn, granted_on_the_enter])["email"] == {JANE}
    # An event without preferences neither grants nor withdraws; the newest with them decides.
    assert (
        members([granted_on_the_enter, withdrawn, event("m2", "14:00:00", traits={"email": "x@example.com"})]) == EMPTY
    )
    # Consent is per user, for every audience: a grant on one audience's event serves another's.
    other = event("m5", "10:30:00", audience="other", traits={"email": "jane.doe@example.com"})
    assert expected_members([granted_on_the_enter, other])["segment_other"]["email"] == {JANE}
    # ...and one user's consent is not another's.
    bob = event("b1", "10:00:00", user="u2", traits={"email": "jane@work.example"})
    assert members([granted_on_the_enter, bob])["email"] == {JANE}


def test_a_user_is_its_user_id_else_its_anonymous_id() -> None:
    grant_anonymous = event(
        "c", "09:00:00", "Segment Consent Preference Updated", user=None, anonymous="a1", consent=GRANT
    )
    anonymous_enter = event("m1", "10:00:00", user=None, anonymous="a1", traits={"email": "jane@new.example"})
    assert user_key(anonymous_enter) == "a1"
    assert members([grant_anonymous, anonymous_enter])["email"] == {JANE_NEW}
    anonymous_exit = event("m2", "10:05:00", "Audience Exited", user=None, anonymous="a1")
    assert members([grant_anonymous, anonymous_enter, anonymous_exit]) == EMPTY
    # A known user that also carries anonymousId a1 is user u1: a1's exit and consent are not u1's.
    known = event("m3", "10:01:00", anonymous="a1", traits={"email": "jane.doe@example.com"})
    assert user_key(known) == "u1"
    assert members([grant_anonymous, known, anonymous_exit]) == EMPTY  # u1 never granted
    grant_u1 = consent_update("c1", "09:00:00", GRANT)
    assert members([grant_u1, known, anonymous_exit])["email"] == {JANE}


def test_the_identify_form_counts_like_the_track_form() -> None:
    identify = {
        "type": "identify",
        "messageId": "i1",
        "userId": "u1",
        "timestamp": "2026-11-20T10:00:00.000Z",
        "receivedAt": "2026-11-20T10:00:00.500Z",
        "traits": {"aud": True, "email": "jane.doe@example.com", "phone": PHONE, "identity_link": "XY1LR"},
        "context": {"personas": {"computation_key": "aud"}, "consent": {"categoryPreferences": GRANT}},
    }
    assert members([identify]) == {
        "email": {JANE},
        "madid": set(),
        "phoneNumber": {PHONE_HASH},
        "identityLink": {"XY1LR"},
    }
    leave = {
        **identify,
        "messageId": "i2",
        "timestamp": "2026-11-20T11:00:00.000Z",
        "receivedAt": "2026-11-20T11:00:01Z",
    }
    leave["traits"] = {"aud": False}
    assert members([identify, leave]) == EMPTY


def test_single_batch_patches_is_one_add_per_non_empty_segment_and_type() -> None:
    events = [
        consent_update("c", "09:00:00", GRANT),
        event("m1", "10:00:00", traits={"email": "jane.doe@example.com", "phone": PHONE}),
        event("m2", "10:00:00", audience="other", traits={"email": "jane.doe@example.com"}),
        event("m3", "10:00:00", audience="empty", traits={"email": "jane.doe@example.com"}),
        event("m4", "10:01:00", "Audience Exited", audience="empty"),
    ]
    assert expected_members(events)["segment_empty"] == EMPTY
    assert single_batch_patches(events) == 3


def test_the_generator_is_deterministic_and_makes_every_kind_at_ci_size() -> None:
    count, audiences = CI_EVENTS, CI_AUDIENCES
    stream = generate(count, audiences, seed=1)
    again = generate(count, audiences, seed=1)
    assert [e.payload() for e in stream.delivered] == [e.payload() for e in again.delivered]
    assert [e.payload() for e in generate(count, audiences, seed=2).events] != [e.payload() for e in stream.events]
    assert len(stream.events) == count and len({e.message_id for e in stream.events}) == count
    assert count * 0.08 <= len(stream.delivered) - count <= count * 0.12  # ~10% verbatim duplicates
    kinds = stream.kinds()
    assert all(kinds[kind] >= 3 for kind in KINDS), kinds
    # The truth has something to compare: members of every type in every segment, some users refused.
    expected = expected_members(stream.events)
    assert len(expected) == audiences and all(all(by_type.values()) for by_type in expected.values())
    assert False in consent_granted(stream.events).values()


def test_generated_events_keep_their_promises() -> None:
    count, audiences = CI_EVENTS, CI_AUDIENCES
    stream = generate(count, audiences, seed=1)
    keys: dict[str, set[str]] = defaultdict(set)  # user -> fields its events key on
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)  # (type, Criteo identifier) -> users
    types: dict[str, set[str]] = defaultdict(set)  # user -> identifier types it ever carries
    times: dict[tuple[str | None, str], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for chaos_event in stream.events:
        body = chaos_event.payload()
        user = user_key(body)
        assert user is not None and user == chaos_event.user
        keys[user].add("userId" if "userId" in body else "anonymousId")
        for id_type, values in carried(body).items():
            types[user].update([id_type] if values else [])
            for value in values:
                owners[(id_type, value)].add(user)
        assert iso_ms(body["receivedAt"]) >= iso_ms(body["timestamp"]) or {"future_dated", "clock_skew_kept"} & set(
            chaos_event.kinds
        )
        if chaos_event.audience is not None:
            times[(chaos_event.audience, user)][effective_ms(body)].add(
                "sibling" if "sibling" in chaos_event.kinds else chaos_event.message_id
            )
    assert all(len(fields) == 1 for fields in keys.values())  # a user always uses the same key
    assert {"userId"} in keys.values() and {"anonymousId"} in keys.values()
    assert all(len(users) == 1 for users in owners.values())  # identifiers are never shared between users
    assert all(len(t) <= 3 for t in types.values())  # email + 1-2 of madid, phoneNumber, identityLink
    assert sum(len(t) >= 2 for t in types.values()) > 0.8 * len(types)  # (some users' events carry fewer)
    # One event per time per (audience, user), except a split send's siblings.
    assert all(len(ids) == 1 for by_time in times.values() for ids in by_time.values())


def test_every_event_of_any_stream_size_was_received_before_the_soak_runs() -> None:
    # The pipeline trusts no receivedAt later than its own clock (it clamps to now), so a stream dated in
    # the future of the run would be ordered differently from its truth: a 1M-event timeline that ran past
    # the day of the soak failed it with 41,887 wrong and 31,978 lost members.
    now_ms = time.time() * 1000
    for count in (2000, 1_000_000, 10_000_000):
        first_ms, last_ms = timeline_ms(count)
        assert first_ms < last_ms == TIMELINE_END_MS < now_ms
    stream = generate(CI_EVENTS, CI_AUDIENCES, seed=1)
    assert max(iso_ms(e.payload()["receivedAt"]) for e in stream.events) <= timeline_ms(CI_EVENTS)[1]


RULES = [
    {"event": "Order Completed", "remove_from": ["aud"], "cool_down_hours": 1},
    {"event": "Subscription Started", "remove_from": "*"},
    {"event": "Trial Started", "add_to": "trial", "remove_from": ["aud"]},
]


def test_rules_exit_enter_and_hold_back_by_the_events_time() -> None:
    jane = {"email": "jane.doe@example.com"}
    entered = event("m1", "10:00:00", traits=jane, consent=GRANT)
    # A suppression at 11:00 with a one-hour cool-down: an enter at 11:30 is held back, one at 12:30 counts.
    suppressed = [entered, event("m2", "11:00:00", "Order Completed"), event("m3", "11:30:00", traits=jane)]
    assert members_in(suppressed, RULES) == {}
    assert members_in([*suppressed, event("m4", "12:30:00", traits=jane)], RULES) == {("aud", "u1"): {"email": {JANE}}}
    # Without the rules the same events are ordinary: the track event is ignored.
    assert members_in(suppressed) == {("aud", "u1"): {"email": {JANE}}}
    # "*" leaves every audience any event names, older enters included; a newer enter counts.
    everywhere = [
        entered,
        event("m5", "10:00:00", traits=jane, audience="other"),
        event("m6", "11:00:00", "Subscription Started"),
    ]
    assert members_in(everywhere, RULES) == {}
    assert members_in([*everywhere, event("m7", "11:00:01", traits=jane, audience="other")], RULES) == {
        ("other", "u1"): {"email": {JANE}}
    }
    # A lifecycle event enters one audience with the identifiers it carries and leaves the other.
    moved = [entered, event("m8", "12:00:00", "Trial Started", traits=jane)]
    assert members_in(moved, RULES) == {("trial", "u1"): {"email": {JANE}}}
    assert expected_members(moved, rules=RULES)["segment_trial"]["email"] == {JANE}
