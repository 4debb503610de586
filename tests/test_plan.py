"""Pure planning: newest change wins, groups per (audience, op, type), 50,000 per PATCH, never empty."""

from __future__ import annotations

from audience_sync.plan import (
    MAX_IDENTIFIERS_PER_PATCH,
    Sourced,
    minimum_patch_calls,
    newest_per_identity,
    plan_contact_list_patches,
)
from audience_sync.records import AudienceChange, PoisonMessage, pack_changes, unpack_changes


def c(audience: str, op: str, ident: str, ts: int, mid: str, id_type: str = "email") -> Sourced:
    return Sourced(AudienceChange(audience, "", op, id_type, ident, ts, mid), f"sqs-{mid}")


def test_newest_change_per_identity_wins_whatever_the_order() -> None:
    items = [c("a", "remove", "x", 300, "m3"), c("a", "add", "x", 100, "m1"), c("a", "add", "x", 200, "m2")]
    for ordering in (items, items[::-1]):
        newest = newest_per_identity(ordering)
        assert [(s.change.operation, s.change.timestamp_ms) for s in newest.values()] == [("remove", 300)]


def test_same_timestamp_breaks_ties_on_message_id_and_duplicates_collapse() -> None:
    items = [c("a", "add", "x", 100, "m1"), c("a", "remove", "x", 100, "m2"), c("a", "add", "x", 100, "m1")]
    newest = newest_per_identity(items)
    assert len(newest) == 1 and next(iter(newest.values())).change.message_id == "m2"


def test_groups_by_audience_operation_and_type_and_chunks_at_50k() -> None:
    adds = [c("big", "add", f"u{i}", i, f"a{i}") for i in range(120_000)]
    removes = [c("small", "remove", f"r{i}", i, f"r{i}") for i in range(10)]
    madids = [c("big", "add", f"d{i}", i, f"d{i}", id_type="madid") for i in range(5)]
    plans = plan_contact_list_patches(adds + removes + madids)
    assert [(p.audience_key, p.operation, p.identifier_type, len(p.items)) for p in plans] == [
        ("big", "add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("big", "add", "email", MAX_IDENTIFIERS_PER_PATCH),
        ("big", "add", "email", 20_000),
        ("big", "add", "madid", 5),
        ("small", "remove", "email", 10),
    ]
    assert minimum_patch_calls(adds + removes) == 4
    assert plan_contact_list_patches([]) == []


def test_plan_tracks_the_sqs_messages_to_hand_back() -> None:
    plan = plan_contact_list_patches([c("a", "add", "x", 1, "m1"), c("a", "add", "y", 1, "m2")])[0]
    assert plan.message_ids == {"sqs-m1", "sqs-m2"} and plan.identifiers == ["x", "y"]


def test_pack_and_unpack_round_trip_within_size() -> None:
    changes = [AudienceChange("aud", "Name é", "add", "email", f"{i:064x}", i, f"m{i}") for i in range(2000)]
    bodies = list(pack_changes(changes, max_bytes=16_384))
    assert all(len(b.encode()) <= 16_384 for b in bodies) and len(bodies) > 1
    assert [x for b in bodies for x in unpack_changes(b)] == changes


def test_unpack_rejects_poison() -> None:
    for body in (
        "nope",
        "[]",
        '{"v": 2, "r": []}',
        '{"v": 1, "r": [["a"]]}',
        '{"v":1,"r":[["a","","upsert","email","x",1,"m"]]}',
    ):
        try:
            unpack_changes(body)
        except PoisonMessage:
            continue
        raise AssertionError(f"accepted {body!r}")
