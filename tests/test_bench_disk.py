"""The benchmark's on-disk dict gives back what was stored, deflated against the first value."""

from __future__ import annotations

import pickle

from bench.disk import DiskDict


def test_values_come_back_equal_and_resembling_ones_are_stored_smaller_than_their_pickle() -> None:
    store = DiskDict()
    values = {(f"audience_{i}", f"user_{i}"): {"held": {"email": {f"{i:064x}"}}, "window": i} for i in range(50)}
    for key, value in values.items():
        store[key] = value
    store[("audience_1", "user_1")] = {"held": {}, "window": 99}  # replaced
    values[("audience_1", "user_1")] = {"held": {}, "window": 99}
    del store[("audience_2", "user_2")]
    del values[("audience_2", "user_2")]
    assert dict(store.items()) == values and len(store) == len(values)
    assert store[("audience_3", "user_3")] == values[("audience_3", "user_3")]
    assert store.get(("audience_2", "user_2")) is None
    stored = store._db.execute("SELECT SUM(LENGTH(v)) FROM kv").fetchone()[0]
    assert stored < sum(len(pickle.dumps(v, pickle.HIGHEST_PROTOCOL)) for v in values.values()) / 2
