"""The flush's shared allowance of identifiers: bounded, first come first served, and a waiter can give up."""

from __future__ import annotations

import threading
import time

from audience_sync.allowance import Allowance


def test_a_caller_waits_until_the_allowance_has_room_and_gives_up_when_told_to() -> None:
    allowance = Allowance(100)
    with allowance.holding(80, lambda: True) as first:
        assert first
        with allowance.holding(30, lambda: False) as second:
            assert not second, "80 + 30 > 100: it may not wait, so it gets nothing"
        with allowance.holding(20, lambda: False) as third:
            assert third, "80 + 20 fits"
    with allowance.holding(500, lambda: False) as whole:
        assert whole, "more than the allowance takes all of it, once it is free"


def test_turns_are_first_come_first_served() -> None:
    allowance = Allowance(100)
    order: list[str] = []

    def take(name: str, identifiers: int) -> None:
        with allowance.holding(identifiers, lambda: True) as held:
            assert held
            order.append(name)

    with allowance.holding(60, lambda: True):
        big = threading.Thread(target=take, args=("big", 100))
        big.start()
        while not allowance._queue:  # the big caller is queued behind the holder
            time.sleep(0.01)
        small = threading.Thread(target=take, args=("small", 10))  # would fit now, but the big one asked first
        small.start()
        time.sleep(0.3)
        assert order == []
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]
