"""The per-user membership rules (pure): exits take everything, newer identifiers replace, any arrival order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.membership import Membership, difference
from audience_sync.records import ADD, REMOVE, AudienceChange

Ids = dict[str, list[str]]


def change(op: str, ts: int, mid: str, ids: Ids | None = None) -> AudienceChange:
    return AudienceChange("aud", "", op, "user", ts, mid, ids or {})


def fold(changes: list[AudienceChange], live: bool = True) -> Membership:
    state = Membership()
    for item in changes:
        state.apply(item)
    state.live = state.is_in and live
    return state


def test_an_exit_removes_every_identifier_held_whatever_it_carries() -> None:
    state = fold(
        [
            change(ADD, 1, "m1", {"email": ["e1"], "madid": ["d1"]}),
            change(REMOVE, 2, "m2", {"email": ["e1"]}),
        ]
    )
    assert not state.is_in and state.sent() == {}


def test_a_newer_enter_replaces_the_identifiers_of_a_type_it_carries() -> None:
    state = fold([change(ADD, 1, "m1", {"email": ["old"], "madid": ["d1"]}), change(ADD, 2, "m2", {"email": ["new"]})])
    assert state.sent() == {"email": {"new"}, "madid": {"d1"}}


def test_enters_at_the_same_time_add_up_in_any_order() -> None:
    one, two = change(ADD, 5, "m1", {"email": ["e1"]}), change(ADD, 5, "m2", {"email": ["e2"]})
    assert fold([one, two]).sent() == fold([two, one]).sent() == {"email": {"e1", "e2"}}


def test_an_older_enter_does_not_bring_back_a_replaced_identifier() -> None:
    state = fold([change(ADD, 2, "m2", {"email": ["new"]}), change(ADD, 1, "m1", {"email": ["old"]})])
    assert state.sent() == {"email": {"new"}}


def test_a_late_enter_older_than_the_exit_stays_out() -> None:
    state = fold(
        [change(ADD, 1, "m1", {"email": ["e"]}), change(REMOVE, 3, "m3"), change(ADD, 2, "m2", {"email": ["e"]})]
    )
    assert not state.is_in and state.sent() == {}


def test_an_empty_list_withdraws_a_type() -> None:
    state = fold([change(ADD, 1, "m1", {"email": ["e"], "madid": ["d"]}), change(ADD, 2, "m2", {"madid": []})])
    assert state.sent() == {"email": {"e"}}
    # and an older madid arriving late does not come back
    state.apply(change(ADD, 1, "m0", {"madid": ["d0"]}))
    assert state.sent() == {"email": {"e"}}


def test_duplicates_change_nothing_and_consent_gates_what_is_sent() -> None:
    enter = change(ADD, 1, "m1", {"email": ["e"]})
    state = fold([enter, enter])
    assert state.encode() == fold([enter]).encode()
    assert fold([enter], live=False).sent() == {}


def test_versions_order_dates_before_1970_like_after() -> None:
    before, after = change(ADD, -86_400_000, "m1", {"email": ["e"]}), change(REMOVE, 1_000, "m2")
    assert before.version < after.version
    assert not fold([after, before]).is_in


def test_difference() -> None:
    assert difference({"email": {"a", "b"}}, {"email": {"b", "c"}, "madid": {"d"}}) == (
        {"email": {"c"}, "madid": {"d"}},
        {"email": {"a"}},
    )


def expected(changes: list[AudienceChange]) -> dict[str, set[str]]:
    """The documented rules, computed from the whole set of changes at once (not by folding)."""
    exits = [c for c in changes if c.operation == REMOVE]
    enters = [c for c in changes if c.operation == ADD]
    last_exit = max((c.timestamp_ms, c.message_id) for c in exits) if exits else None
    if not enters or (last_exit and max((c.timestamp_ms, c.message_id) for c in enters) <= last_exit):
        return {}
    if max(c.timestamp_ms for c in enters) < max((c.hold_until_ms for c in exits), default=0):
        return {}  # the newest enter falls in a suppression's cool-down
    after = [c for c in enters if last_exit is None or (c.timestamp_ms, c.message_id) > last_exit]
    result: dict[str, set[str]] = {}
    for id_type in {t for c in after for t in c.identifiers}:
        carrying = [c for c in after if id_type in c.identifiers]
        newest = max(c.timestamp_ms for c in carrying)
        values = {i for c in carrying if c.timestamp_ms == newest for i in c.identifiers[id_type]}
        if values:
            result[id_type] = values
    return result


changes_strategy = st.lists(
    st.builds(
        lambda op, ts, n, ids, hold: change(op, ts, f"m{n}", ids)._replace(hold_until_ms=hold if op == REMOVE else 0),
        st.sampled_from([ADD, REMOVE]),
        st.integers(0, 6),
        st.integers(0, 3),
        st.dictionaries(st.sampled_from(["email", "madid"]), st.lists(st.sampled_from(["x", "y", "z"]), max_size=2)),
        st.sampled_from([0, 0, 4, 9]),  # a suppression's cool-down ends at this time (0: none)
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(changes_strategy, st.randoms())
def test_any_arrival_order_gives_the_documented_state(changes: list[AudienceChange], rng: object) -> None:
    # One event per messageId, as Segment sends them (a messageId re-sent is the same event).
    unique = list({c.message_id: c for c in changes}.values())
    shuffled = list(unique)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert fold(shuffled).sent() == expected(unique)
