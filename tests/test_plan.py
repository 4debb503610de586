"""Pure planning and records: per-user differences grouped per (op, type), 50,000 per PATCH, never empty."""

from __future__ import annotations

from audience_sync.plan import MAX_IDENTIFIERS_PER_PATCH, plan_contact_list_patches
from audience_sync.records import AudienceChange, PoisonMessage, pack_changes, unpack_changes


def test_groups_by_operation_and_type_chunks_at_50k_and_removes_go_first() -> None:
    differences = {f"u{i}": ({"email": {f"e{i}"}}, {}) for i in range(120_000)}
    differences.update({f"d{i}": ({"madid": {f"d{i}"}}, {}) for i in range(5)})
    differences.update({f"r{i}": ({}, {"email": {f"r{i}"}}) for i in range(10)})
    plans = plan_contact_list_patches("big", differences)
    assert [(p.operation, p.identifier_type, len(p.identifiers)) for p in plans] == [
        ("remove", "email", 10),
        ("add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("add", "email", 20_000),
        ("add", "madid", 5),
    ]
    assert plan_contact_list_patches("a", {}) == []


def test_an_identifier_two_users_share_is_sent_once_and_both_users_depend_on_the_call() -> None:
    [plan] = plan_contact_list_patches("a", {"u1": ({"email": {"x", "y"}}, {}), "u2": ({"email": {"x"}}, {})})
    assert sorted(plan.identifiers) == ["x", "y"] and plan.users == {"u1", "u2"}


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
        '{"v":2,"r":[["a","","grant","u",1,"m",{}]]}',  # consent is for every audience: no audience key
    ):
        try:
            unpack_changes(body)
        except PoisonMessage:
            continue
        raise AssertionError(f"accepted {body!r}")
