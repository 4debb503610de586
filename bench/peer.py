"""Segment's own Criteo destination, modelled from its public source (shared peers.md), on the same streams.

Per delivered batch (≤1,000 events of one action, Add or Remove): a new OAuth token, a search page by page
(100 per page) until the audience's name is found (a create when it is missing), then one PATCH with every
identifier of the batch, no dedupe, no 50,000 chunking. One Engage audience per destination instance, so
we give it one instance per audience: its best correct configuration.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from audience_sync.records import AudienceChange

PEER_BATCH_EVENTS = 1_000
SEARCH_PAGE = 100


@dataclass(frozen=True)
class PeerCalls:
    """Calls the peer makes on a stream, by kind."""

    token: int
    search: int
    create: int
    patch: int

    @property
    def total(self) -> int:
        """All calls."""
        return self.token + self.search + self.create + self.patch


def peer_calls(changes: Iterable[AudienceChange]) -> PeerCalls:
    """Count the peer's calls for a stream in arrival order."""
    pending: Counter[tuple[str, str]] = Counter()
    created: list[str] = []  # segment names in creation order: search finds them on that page
    token = search = create = patch = 0

    def flush(audience: str) -> None:
        nonlocal token, search, create, patch
        token += 1
        if audience in created:
            search += created.index(audience) // SEARCH_PAGE + 1
        else:
            search += max(1, math.ceil(len(created) / SEARCH_PAGE))
            create += 1
            created.append(audience)
        patch += 1

    for change in changes:
        key = (change.audience_key, change.operation)
        pending[key] += 1
        if pending[key] == PEER_BATCH_EVENTS:
            flush(change.audience_key)
            pending[key] = 0
    for (audience, _), count in pending.items():
        if count:
            flush(audience)
    return PeerCalls(token, search, create, patch)
