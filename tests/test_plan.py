"""Pure planning and records: outbox entries, netting, PATCHes of ≤50,000 per (op, type), never empty."""

from __future__ import annotations

from audience_sync.plan import MAX_IDENTIFIERS_PER_PATCH, Entry, net, outbox_entry, patches, remainder
from audience_sync.records import (
    AudienceChange,
    Parked,
    PoisonMessage,
    pack_changes,
    pack_parked,
    unpack,
    unpack_changes,
)


def test_groups_by_operation_and_type_chunks_at_50k_and_removes_go_first() -> None:
    differences = {f"u{i}": ({"email": {f"e{i}"}}, {}) for i in range(120_000)}
    differences.update({f"d{i}": ({"madid": {f"d{i}"}}, {}) for i in range(5)})
    differences.update({f"r{i}": ({}, {"email": {f"r{i}"}}) for i in range(10)})
    plans = patches("big", outbox_entry(differences))
    assert [(p.operation, p.identifier_type, len(p.identifiers)) for p in plans] == [
        ("remove", "email", 10),
        ("add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("add", "email", 20_000),
        ("add", "madid", 5),
    ]
    assert [p.full for p in plans] == [False, True, True, False, False]
    assert patches("a", outbox_entry({})) == [] and not outbox_entry({})


def test_an_identifier_two_users_share_is_sent_once() -> None:
    [plan] = patches("a", outbox_entry({"u1": ({"email": {"x", "y"}}, {}), "u2": ({"email": {"x"}}, {})}))
    assert plan.identifiers == ["x", "y"]


def test_netting_keeps_each_identifiers_last_operation() -> None:
    entries = [
        Entry({}, {"email": {"a", "b", "c"}}),
        Entry({"email": {"b", "d"}}, {}),  # b added then removed; d only removed
        Entry({"email": {"c"}}, {"email": {"c", "e"}}),  # c removed then added back in one batch
        Entry({"email": {"f"}}, {}),
        Entry({}, {"email": {"f"}}),
    ]
    assert net(entries) == Entry({"email": {"b", "d"}}, {"email": {"a", "c", "e", "f"}})


def test_a_precautionary_remove_then_an_add_ends_added() -> None:
    # The exit of a user the ledger never saw removes what it carries (Criteo may not have it), then the
    # user enters: inferring "Criteo had it" from the first operation would never add it.
    assert net([Entry({"email": {"x"}}, {}), Entry({}, {"email": {"x"}})]) == Entry({}, {"email": {"x"}})


def test_the_remainder_of_unsent_patches_nets_like_the_entries_it_replaces() -> None:
    entry = Entry({"email": {"r"}}, {"email": {"a", "b"}, "madid": {"m"}})
    plans = patches("a", entry)
    assert remainder(plans[1:]) == Entry({}, {"email": {"a", "b"}, "madid": {"m"}})
    assert net([remainder(plans)]) == entry


def test_a_parked_patch_round_trips_and_is_not_records() -> None:
    parked = Parked("aud", "Name", "remove", "email", ["x" * 64])
    assert unpack(pack_parked(parked)) == parked
    try:
        unpack_changes(pack_parked(parked))
    except PoisonMessage:
        return
    raise AssertionError("a parked PATCH decoded as records")


def test_pack_and_unpack_round_trip_within_size() -> None:
    changes = [
        AudienceChange("aud", "Name é", "add", f"user{i}", i, f"m{i}", {"email": [f"{i:064x}"], "madid": []})
        for i in range(2000)
    ]
    changes.append(AudienceChange("", "", "deny", "user1", 5, "c1", {}))
    bodies = list(pack_changes(changes, max_bytes=16_384))
    assert all(len(b.encode()) <= 16_384 for b in bodies) and len(bodies) > 1
    assert [x for b in bodies for x in unpack_changes(b)] == changes


def test_unpack_rejects_poison() -> None:
    for body in (
        "nope",
        "[]",
        '{"v": 1, "r": []}',  # the per-identifier format before the membership ledger
        '{"v": 2, "r": [["a"]]}',
        '{"v":2,"r":[["a","","upsert","u",1,"m",{}]]}',
        '{"v":2,"r":[["a","","add","u",1,"m",{"email":"x"}]]}',
        '{"v":2,"r":[["a","","add","",1,"m",{}]]}',
        '{"v":2,"r":[["","","grant","u",1,"m",{"email":["x"]}]]}',  # consent carries no identifiers
        '{"v":2,"p":["a","","upsert","email",["x"]]}',
        '{"v":2,"p":["a","","add","email",[""]]}',
    ):
        try:
            unpack(body)
        except PoisonMessage:
            continue
        raise AssertionError(f"accepted {body!r}")
