"""The fewest Criteo PATCHes a set of changes needs, computed without our planner (audience_sync.plan).

Benchmarks and the chaos soak compare the calls we made with this, so it must not share the code it checks:
the newest change per (audience, identifier type, identifier) wins, then one PATCH per (audience,
operation, identifier type) per MAX_IDENTIFIERS identifiers (the emulator's copy of Criteo's limit).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from devtools.criteo_emulator.api import MAX_IDENTIFIERS

if TYPE_CHECKING:  # annotations only: callers that run it have the layer on sys.path
    from audience_sync.records import AudienceChange

UserKey = tuple[str, str, str]  # (audience, identifier type, identifier)


def patches_for(group_sizes: Iterable[int]) -> int:
    """PATCHes for groups of these sizes: each group chunked at Criteo's limit."""
    return sum(math.ceil(size / MAX_IDENTIFIERS) for size in group_sizes)


def newest_per_user(changes: Iterable[AudienceChange]) -> dict[UserKey, AudienceChange]:
    """The newest change per (audience, type, identifier), by (timestamp, messageId)."""
    newest: dict[UserKey, AudienceChange] = {}
    for change in changes:
        key = (change.audience_key, change.identifier_type, change.identifier)
        held = newest.get(key)
        if held is None or (change.timestamp_ms, change.message_id) > (held.timestamp_ms, held.message_id):
            newest[key] = change
    return newest


def group_sizes(changes: Iterable[AudienceChange]) -> Counter[tuple[str, str, str]]:
    """Identifiers per (audience, operation, identifier type)."""
    return Counter((c.audience_key, c.operation, c.identifier_type) for c in changes)


def minimum_patches(changes: Iterable[AudienceChange]) -> int:
    """The fewest PATCHes for these changes delivered in one batch."""
    return patches_for(group_sizes(newest_per_user(changes).values()).values())
