"""Audience name → Criteo segment id: found by search or created, owned by one deployment, cached per container.

Several deployments (e.g. prod and staging stacks) may share one Criteo app. Each writes only into segments whose
description carries its marker `[segment-criteo-sync deployment=<id>]`, set when it creates or adopts them.
"""

from __future__ import annotations

import re

from audience_sync.criteo.client import CriteoClient, FoundSegment
from audience_sync.criteo.errors import NameNotUnique, SegmentOwnedElsewhere
from audience_sync.observability import logger

ANY = "*"
_MARKER = re.compile(r"\s*\[segment-criteo-sync deployment=([^\s\[\]]+)\]")
_DEPLOYMENT = re.compile(r"[^\s\[\]]+")

# Module level on purpose: a warm container searches once per advertiser, not once per batch.
SEGMENT_IDS: dict[tuple[str, str], str] = {}
LOOKALIKE_IDS: dict[tuple[str, str], str] = {}  # (advertiser, seed segment id) -> lookalike segment id


def owner(description: str) -> str | None:
    """The deployment whose marker a segment description carries (the last one), if any."""
    found = _MARKER.findall(description)
    return str(found[-1]) if found else None


class SegmentDirectory:
    """Finds, creates or adopts the contact-list segment of an audience name; caches ids of segments we own.

    A segment found by name without our marker is adopted (our marker replaces the previous owner's) when `adopt`
    holds its name or "*"; otherwise `resolve` raises SegmentOwnedElsewhere.
    """

    def __init__(
        self,
        client: CriteoClient,
        deployment: str,
        adopt: frozenset[str],
        cache: dict[tuple[str, str], str] = SEGMENT_IDS,
    ) -> None:
        if not _DEPLOYMENT.fullmatch(deployment):
            raise ValueError(f"deployment id must be non-empty, without spaces or brackets: {deployment!r}")
        self.client = client
        self.deployment = deployment
        self.adopt = adopt
        self.cache = cache
        self.advertiser_id = client.credentials.advertiser_id
        self._others: dict[str, FoundSegment] = {}  # found by the last search, not ours
        self._searched = False
        self._lookalikes_searched = False

    def resolve(self, name: str, description: str) -> str:
        """The segment id for `name`: cache, then one search pass per invocation, then create (or adopt)."""
        key = (self.advertiser_id, name)
        if key not in self.cache and not self._searched:
            self._search()
        if key not in self.cache and name not in self._others:
            try:
                self.cache[key] = self.client.create_contact_list(name, self._marked(description))
            except NameNotUnique:
                self._search()
                if key not in self.cache and name not in self._others:
                    raise
        if key not in self.cache:
            self._adopt(self._others.pop(name))
        return self.cache[key]

    def renamed(self, old: str, new: str, segment_id: str) -> None:
        """A segment of ours was renamed: cache its id under the new name."""
        self.cache.pop((self.advertiser_id, old), None)
        self.cache[(self.advertiser_id, new)] = segment_id

    def lookalike(self, seed_id: str, name: str, description: str, target_size: int | None) -> str:
        """The lookalike segment seeded from our segment `seed_id`: cached, else found by its seed (one search
        pass per invocation, like `resolve`), else created."""
        key = (self.advertiser_id, seed_id)
        if key not in LOOKALIKE_IDS and not self._lookalikes_searched:
            self._search_lookalikes()
        if key not in LOOKALIKE_IDS:
            try:
                LOOKALIKE_IDS[key] = self.client.create_lookalike(name, self._marked(description), seed_id, target_size)
            except NameNotUnique:
                self._search_lookalikes()
                if key not in LOOKALIKE_IDS:
                    raise
        return LOOKALIKE_IDS[key]

    def ours(self) -> dict[str, str]:
        """Name -> id of every contact list this deployment owns, as one search finds them now."""
        return self._search()

    def lookalikes(self) -> dict[str, str]:
        """Seed contact list id -> id of every lookalike this deployment owns, as one search finds them now."""
        return self._search_lookalikes()

    def _search_lookalikes(self) -> dict[str, str]:
        found_now = {
            found.seed: found.id
            for found in self.client.search_segments("Lookalike")
            if found.seed and owner(found.description) == self.deployment
        }
        LOOKALIKE_IDS.update({(self.advertiser_id, seed): segment_id for seed, segment_id in found_now.items()})
        self._lookalikes_searched = True
        return found_now

    def forget(self, name: str) -> None:
        """Drop a cached id that Criteo no longer accepts, so the next resolve searches again."""
        self.cache.pop((self.advertiser_id, name), None)
        self._searched = False

    def _search(self) -> dict[str, str]:
        self._others = {}
        ours: dict[str, str] = {}
        for found in self.client.search_segments():
            key = (self.advertiser_id, found.name)
            if owner(found.description) == self.deployment:
                self.cache[key] = ours[found.name] = found.id
            else:
                self.cache.pop(key, None)  # adopted by another deployment since we cached it
                self._others[found.name] = found
        self._searched = True
        return ours

    def _adopt(self, found: FoundSegment) -> None:
        previous = owner(found.description)
        if not {found.name, ANY} & self.adopt:
            raise SegmentOwnedElsewhere(found.name, previous)
        self.client.update_segment(found.id, description=self._marked(found.description))
        self.cache[(self.advertiser_id, found.name)] = found.id
        logger.warning("adopted a Criteo segment", extra={"segment": found.name, "previous_owner": previous})

    def _marked(self, description: str) -> str:
        """`description` with our marker instead of any other."""
        return f"{_MARKER.sub('', description)} [segment-criteo-sync deployment={self.deployment}]".strip()
