"""What the emulated Criteo account holds: contact-list segments and their members, and issued tokens."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOKEN_LIFETIME_S = 900

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HEX = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PHONE = re.compile(r"\+[0-9]{8,15}|[0-9a-f]{64}")
_TOKEN = re.compile(r"\S+")

VALIDATORS: dict[str, Callable[[str], bool]] = {
    "email": lambda v: bool(_EMAIL.fullmatch(v) and v == v.strip().lower()) or bool(_HEX.fullmatch(v)),
    "madid": lambda v: bool(_UUID.fullmatch(v)),
    "phoneNumber": lambda v: bool(_PHONE.fullmatch(v)),
    "identityLink": lambda v: bool(_TOKEN.fullmatch(v)),
    "gum": lambda v: bool(_TOKEN.fullmatch(v)),
}


@dataclass
class Segment:
    """One contact-list audience segment."""

    id: str
    name: str
    advertiser_id: str
    description: str
    created_at: str
    members: dict[str, set[str]] = field(default_factory=dict)


class AccountState:
    """Segments (by id), tokens, and a counter for new ids; every method is thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.segments: dict[str, Segment] = {}
        self.tokens: dict[str, float] = {}
        self._next_id = 100001

    def issue_token(self) -> str:
        """A new bearer token valid for 15 minutes."""
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.time() + TOKEN_LIFETIME_S
        return token

    def token_status(self, token: str) -> str:
        """'ok', 'expired' or 'invalid'."""
        with self.lock:
            expires = self.tokens.get(token)
        if expires is None:
            return "invalid"
        return "ok" if time.time() < expires else "expired"

    def expire_tokens(self) -> None:
        """Make every issued token expired."""
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def create(self, advertiser_id: str, name: str, description: str) -> Segment | None:
        """A new segment, or None when the name is taken for this advertiser."""
        with self.lock:
            if any(s.name == name and s.advertiser_id == advertiser_id for s in self.segments.values()):
                return None
            segment = Segment(
                str(self._next_id),
                name,
                advertiser_id,
                description,
                time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            )
            self._next_id += 1
            self.segments[segment.id] = segment
            return segment
