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
from collections.abc import Iterable
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


def _order(change: AudienceChange) -> tuple[int, str]:
    return change.timestamp_ms, change.message_id


def must_hold(events: list[AudienceChange]) -> Held:
    """What Criteo must hold for one (audience, user) after these enters and exits (in any order)."""
    newest = max(events, key=_order)
    if newest.operation != ADD:
        return {}
    exits = [_order(e) for e in events if e.operation == REMOVE]
    last_exit = max(exits) if exits else None
    enters = [e for e in events if e.operation == ADD and (last_exit is None or _order(e) > last_exit)]
    held: Held = {}
    for id_type in {t for e in enters for t in e.identifiers}:
        carrying = [e for e in enters if id_type in e.identifiers]
        latest = max(e.timestamp_ms for e in carrying)
        identifiers = {i for e in carrying if e.timestamp_ms == latest for i in e.identifiers[id_type]}
        if identifiers:
            held[id_type] = identifiers
    return held


class Replay:
    """Batches applied one after another, each starting from what the earlier ones left in Criteo."""

    def __init__(self) -> None:
        self._events: dict[Pair, list[AudienceChange]] = {}
        self._held: dict[Pair, Held] = {}

    def batch(self, changes: Iterable[AudienceChange]) -> Counter[Group]:
        """Distinct identifiers to send per (audience, operation, identifier type) for this batch."""
        touched: dict[Pair, list[AudienceChange]] = {}
        for change in changes:
            if change.operation in (ADD, REMOVE):
                touched.setdefault((change.audience_key, change.user), []).append(change)
        groups: dict[Group, set[str]] = {}
        for pair, new in touched.items():
            seen = pair in self._events
            before = self._held.get(pair, {})
            events = self._events.setdefault(pair, [])
            events.extend(new)
            after = self._held[pair] = must_hold(events)
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


def minimum_patches(changes: Iterable[AudienceChange]) -> int:
    """The fewest PATCHes for these changes delivered in one batch to a ledger that knows none of their users."""
    return patches_for(Replay().batch(changes).values())
