"""Audience name → Criteo segment id, resolved by search, created when missing, cached per container."""

from __future__ import annotations

from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.errors import NameNotUnique

# Module level on purpose: a warm container searches once per advertiser, not once per batch.
SEGMENT_IDS: dict[tuple[str, str], str] = {}


class SegmentDirectory:
    """Finds (or creates) the contact-list segment for an audience name."""

    def __init__(self, client: CriteoClient, cache: dict[tuple[str, str], str] = SEGMENT_IDS) -> None:
        self.client = client
        self.cache = cache
        self.advertiser_id = client.credentials.advertiser_id
        self._searched = False

    def resolve(self, name: str, description: str) -> str:
        """The segment id for `name`: cache, then one search pass per invocation, then create."""
        key = (self.advertiser_id, name)
        if key not in self.cache and not self._searched:
            self._search()
        if key not in self.cache:
            try:
                self.cache[key] = self.client.create_contact_list(name, description)
            except NameNotUnique:
                self._search()
                if key not in self.cache:
                    raise
        return self.cache[key]

    def forget(self, name: str) -> None:
        """Drop a cached id that Criteo no longer accepts, so the next resolve searches again."""
        self.cache.pop((self.advertiser_id, name), None)
        self._searched = False

    def _search(self) -> None:
        for segment_id, name in self.client.search_contact_lists():
            self.cache[(self.advertiser_id, name)] = segment_id
        self._searched = True
