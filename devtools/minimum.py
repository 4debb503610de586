"""The fewest Criteo PATCHes a stream of changes needs, computed without our planner, membership or ledger code.

Benchmarks and the chaos soak compare the calls we made with this, so it must not share the code it checks: it
reads only AudienceChange fields and applies the documented rules (docs/design.md, "Exact per user") directly,
per (audience, user), to the whole set of that pair's events seen so far (the rules do not depend on order):

- the newest event by (timestamp_ms, message_id) decides: an enter puts the user in, an exit takes them out;
- an out user holds nothing; an in user holds, per identifier type, the union of the identifiers carried by
  the enters after their last exit that carry the type with the largest timestamp (an empty list withdraws it);
- a user seen for the first time may be in Criteo from before the ledger (an adopted segment, a migration):
  if they end out, the identifiers their exits carry must be removed (nobody can know any others).

Per (audience, user): what Criteo must hold now against what it held before; the identifiers to add and to
remove are collected per (audience, operation, identifier type), distinct, and each group costs
ceil(n / MAX_IDENTIFIERS) PATCHes (the emulator's copy of Criteo's limit). Consent changes (grant/deny) are
not modelled: with consent enforced, adds of users who never granted are counted though never sent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING

from devtools.criteo_emulator.api import MAX_IDENTIFIERS

if TYPE_CHECKING:  # annotations only: callers that run this have the layer on sys.path
    from audience_sync.records import AudienceChange

# The record format's operations (audience_sync.records); consent's grant/deny are not modelled.
ADD = "add"
REMOVE = "remove"

Pair = tuple[str, str]  # (audience, user)
Group = tuple[str, str, str]  # (audience, operation, identifier type)
Held = dict[str, set[str]]  # identifier type -> identifiers


def patches_for(group_sizes: Iterable[int]) -> int:
    """PATCHes for groups of these sizes: each group chunked at Criteo's limit."""
    return sum(math.ceil(size / MAX_IDENTIFIERS) for size in group_sizes)


Order = tuple[int, str]  # (timestamp_ms, message_id)


def _order(change: AudienceChange) -> Order:
    return change.timestamp_ms, change.message_id


class PairState:
    """The rules above for one (audience, user), kept as the little they need instead of every event: the
    newest event, the newest exit, and per type the identifiers of the newest enters after that exit (with
    each identifier's newest order, so a later-arriving exit can still cut them)."""

    __slots__ = ("exit", "held", "newest", "newest_in")

    def __init__(self) -> None:
        self.newest: Order | None = None
        self.newest_in = False
        self.exit: Order | None = None
        self.held: dict[str, tuple[int, dict[str, Order]]] = {}  # type -> (timestamp, identifier -> order)

    def add(self, change: AudienceChange) -> None:
        """Take one more event into account (any arrival order)."""
        order = _order(change)
        if self.newest is None or order > self.newest:
            self.newest, self.newest_in = order, change.operation == ADD
        if change.operation == REMOVE:
            if self.exit is None or order > self.exit:
                self.exit = order
                for id_type, (ts, ids) in list(self.held.items()):
                    kept = {i: o for i, o in ids.items() if o > order}
                    if kept or not ids:
                        self.held[id_type] = (ts, kept)
                    else:
                        del self.held[id_type]
            return
        if self.exit is not None and order < self.exit:
            return
        for id_type, identifiers in change.identifiers.items():
            current = self.held.get(id_type)
            if current is None or change.timestamp_ms > current[0]:
                self.held[id_type] = (change.timestamp_ms, {i: order for i in identifiers})
            elif change.timestamp_ms == current[0]:
                for identifier in identifiers:
                    current[1][identifier] = max(order, current[1].get(identifier, order))

    def must_hold(self) -> Held:
        """What Criteo must hold for the pair now."""
        if not self.newest_in:
            return {}
        return {t: set(ids) for t, (_, ids) in self.held.items() if ids}


class Replay:
    """Batches applied one after another, each starting from what the earlier ones left in Criteo."""

    def __init__(self) -> None:
        self._states: dict[Pair, PairState] = {}

    def batch(self, changes: Iterable[AudienceChange]) -> Counter[Group]:
        """Distinct identifiers to send per (audience, operation, identifier type) for this batch."""
        touched: dict[Pair, list[AudienceChange]] = {}
        for change in changes:
            if change.operation in (ADD, REMOVE):
                touched.setdefault((change.audience_key, change.user), []).append(change)
        groups: dict[Group, set[str]] = {}
        for pair, new in touched.items():
            state = self._states.get(pair)
            seen = state is not None
            if state is None:
                state = self._states[pair] = PairState()
            before = state.must_hold()
            for change in new:
                state.add(change)
            after = state.must_hold()
            if not seen and not after:
                before = _carried_by_exits(new)
            for operation, sending, against in ((ADD, after, before), (REMOVE, before, after)):
                for id_type, identifiers in sending.items():
                    if difference := identifiers - against.get(id_type, set()):
                        groups.setdefault((pair[0], operation, id_type), set()).update(difference)
        return Counter({group: len(identifiers) for group, identifiers in groups.items()})


def _carried_by_exits(changes: list[AudienceChange]) -> Held:
    carried: Held = {}
    for change in changes:
        if change.operation == REMOVE:
            for id_type, identifiers in change.identifiers.items():
                carried.setdefault(id_type, set()).update(identifiers)
    return carried


class _PairWindow:
    """One (audience, user) in a WindowMinimum: its state, and what it contributes to the window it was last
    seen in (`window`): what Criteo held at that window's start (None: never seen, Criteo may hold what its
    exits carry), those exits' identifiers, and its share of the window's groups."""

    __slots__ = ("before", "carried", "contribution", "state", "window")

    def __init__(self, window: int) -> None:
        self.state = PairState()
        self.window = window
        self.before: Held | None = None
        self.carried: Held = {}
        self.contribution: Counter[Group] = Counter()


class WindowMinimum:
    """The fewest PATCHes when changes arriving within one flush interval share calls, and a window that
    can't be sent within its span at `per_minute` calls grows until it can (a burst faster than the budget
    is one window). Fed in arrival order; per window, per (audience, user): what Criteo must hold at its end
    against what it held at its start. Group sizes add up per user (the benchmark streams share no
    identifier between users), kept incrementally. `pairs` holds the per-(audience, user) records (a dict
    unless given; a value read is stored back after each change, so a mapping on disk does too)."""

    def __init__(
        self, interval_seconds: float, per_minute: float, pairs: MutableMapping[Pair, _PairWindow] | None = None
    ) -> None:
        self.interval = interval_seconds
        self.per_minute = per_minute
        self.pairs: MutableMapping[Pair, _PairWindow] = {} if pairs is None else pairs
        self.patches = 0  # closed windows
        self.windows = 0
        self.last_window_patches = 0
        self._start = self._end = 0.0
        self._open = False
        self._sizes: Counter[Group] = Counter()
        self._calls = 0

    def add(self, at: float, change: AudienceChange) -> None:
        """One change arriving at `at` (seconds, non-decreasing)."""
        if change.operation not in (ADD, REMOVE):
            return
        if not self._open:
            self._start, self._end, self._open = at, at + self.interval, True
        elif at >= self._end:
            sendable = self.per_minute * (self._end - self._start) / 60.0
            if self._calls > sendable:
                self._end = max(self._end, self._start + self._calls * 60.0 / self.per_minute)
            if at >= self._end:
                self._close()
                self._start, self._end, self._open = at, at + self.interval, True
        pair = (change.audience_key, change.user)
        record = self.pairs.get(pair)
        if record is None:
            record = _PairWindow(self.windows)
        elif record.window != self.windows:  # first seen in this window
            record.window, record.before = self.windows, record.state.must_hold()
            record.carried, record.contribution = {}, Counter()
        if change.operation == REMOVE and record.before is None:
            for id_type, identifiers in change.identifiers.items():
                record.carried.setdefault(id_type, set()).update(identifiers)
        record.state.add(change)
        self._recount(pair, record)
        self.pairs[pair] = record

    def _recount(self, pair: Pair, record: _PairWindow) -> None:
        after = record.state.must_hold()
        before = record.before
        if before is None:
            before = {} if after else record.carried
        new: Counter[Group] = Counter()
        for operation, sending, against in ((ADD, after, before), (REMOVE, before, after)):
            for id_type, identifiers in sending.items():
                n = len(identifiers - against.get(id_type, set()))
                if n:
                    new[(pair[0], operation, id_type)] = n
        old = record.contribution
        for group in set(old) | set(new):
            size = self._sizes[group]
            self._calls -= math.ceil(size / MAX_IDENTIFIERS)
            size += new[group] - old[group]
            self._sizes[group] = size
            self._calls += math.ceil(size / MAX_IDENTIFIERS)
        record.contribution = new

    def _close(self) -> None:
        self.patches += self._calls
        self.windows += 1
        self.last_window_patches = self._calls
        self._sizes, self._calls = Counter(), 0

    def must_hold(self) -> Iterator[tuple[Pair, Held]]:
        """Per (audience, user) seen: what Criteo must hold after every change so far."""
        for pair, record in self.pairs.items():
            yield pair, record.state.must_hold()

    def finish(self) -> int:
        """Close the last window; the total."""
        if self._open:
            self._close()
            self._open = False
        return self.patches


def minimum_patches(changes: Iterable[AudienceChange]) -> int:
    """The fewest PATCHes for these changes delivered in one batch to a ledger that knows none of their users."""
    return patches_for(Replay().batch(changes).values())
