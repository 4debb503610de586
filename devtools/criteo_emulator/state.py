"""What the emulated Criteo account holds: contact-list segments with their members, and issued tokens."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from devtools.criteo_emulator.identifiers import IDENTIFIER_TYPES

TOKEN_LIFETIME_S = 900
FIRST_SEGMENT_ID = 100001

TokenStatus = Literal["ok", "expired", "invalid"]


def iso_timestamp(unix_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, as Criteo writes dates."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Segment:
    """One audience segment: a contact list (`members` maps identifier type to the identifiers as sent) or, with a
    `seed` contact list, a lookalike."""

    id: str
    name: str
    advertiser_id: str
    description: str | None
    created_at: str
    updated_at: str
    members: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in IDENTIFIER_TYPES})
    seed: str | None = None
    target_size: int | None = None

    @property
    def kind(self) -> str:
        """Its type as the API names it."""
        return "Lookalike" if self.seed else "ContactList"


@dataclass(frozen=True)
class _Token:
    expires_at: float
    epoch: int
    client_id: str


class AccountState:
    """Segments by id and issued tokens; `clock` (unix seconds) can be replaced to fake time.

    Every method is thread-safe; callers that combine several reads and writes hold `lock` (re-entrant).
    Segment ids keep increasing across `clear()`, so an id cached before a reset never points at a new segment.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.segments: dict[str, Segment] = {}
        self._tokens: dict[str, _Token] = {}
        self._ids = itertools.count(FIRST_SEGMENT_ID)

    def clear(self) -> None:
        """Forget every segment and token."""
        with self.lock:
            self.segments.clear()
            self._tokens.clear()

    def issued_tokens(self) -> list[str]:
        """Every bearer token handed out since the last `clear()` (for leak scans of our logs)."""
        with self.lock:
            return list(self._tokens)

    def issue_token(self, epoch: int, client_id: str) -> str:
        """A new bearer token of an app, valid for TOKEN_LIFETIME_S while the token epoch stays `epoch`."""
        token = secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[token] = _Token(self.clock() + TOKEN_LIFETIME_S, epoch, client_id)
        return token

    def token_status(self, token: str, epoch: int) -> tuple[TokenStatus, str]:
        """('invalid', '') for a token never issued, 'expired' when too old or issued before a newer epoch;
        with the app (client id) it was issued to."""
        with self.lock:
            issued = self._tokens.get(token)
        if issued is None:
            return "invalid", ""
        fresh = issued.epoch >= epoch and self.clock() < issued.expires_at
        return ("ok" if fresh else "expired"), issued.client_id

    def find(self, advertiser_id: str, name: str) -> Segment | None:
        """The advertiser's segment with that name, if any."""
        with self.lock:
            return next((s for s in self.segments.values() if (s.advertiser_id, s.name) == (advertiser_id, name)), None)

    def create(
        self,
        advertiser_id: str,
        name: str,
        description: str | None,
        seed: str | None = None,
        target_size: int | None = None,
    ) -> Segment | None:
        """A new segment (a lookalike of `seed`), or None when the advertiser already has one with that name."""
        with self.lock:
            if self.find(advertiser_id, name):
                return None
            now = iso_timestamp(self.clock())
            segment = Segment(str(next(self._ids)), name, advertiser_id, description, now, now)
            segment.seed, segment.target_size = seed, target_size
            self.segments[segment.id] = segment
            return segment

    def owned_by(self, *advertiser_ids: str) -> list[Segment]:
        """The segments of these advertisers, oldest first."""
        with self.lock:
            return [s for s in self.segments.values() if s.advertiser_id in advertiser_ids]

    def delete(self, advertiser_id: str, name: str) -> bool:
        """Remove the advertiser's segment with that name; whether there was one."""
        with self.lock:
            segment = self.find(advertiser_id, name)
            if segment:
                del self.segments[segment.id]
            return segment is not None

    def describe(self, segment: Segment, description: str | None) -> None:
        """Replace the description."""
        with self.lock:
            segment.description = description
            segment.updated_at = iso_timestamp(self.clock())

    def rename(self, segment: Segment, name: str) -> bool:
        """Rename, unless another of the advertiser's segments has the name; whether it was renamed."""
        with self.lock:
            other = self.find(segment.advertiser_id, name)
            if other is not None and other is not segment:
                return False
            segment.name = name
            segment.updated_at = iso_timestamp(self.clock())
            return True

    def amend(self, segment: Segment, operation: str, identifier_type: str, identifiers: Iterable[str]) -> None:
        """Add or remove identifiers of one type."""
        with self.lock:
            members = segment.members[identifier_type]
            if operation == "add":
                members.update(identifiers)
            else:
                members.difference_update(identifiers)
            segment.updated_at = iso_timestamp(self.clock())

    def empty(self, segment: Segment) -> None:
        """Remove every member."""
        with self.lock:
            for members in segment.members.values():
                members.clear()
            segment.updated_at = iso_timestamp(self.clock())
