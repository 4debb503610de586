"""OAuth client-credentials token, cached for the life of the Lambda container."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Refresh this long before `expires_in` runs out, so a token never expires mid-call.
REFRESH_MARGIN_SECONDS = 60.0


@dataclass(frozen=True)
class CriteoCredentials:
    """The contents of the Criteo secret."""

    client_id: str
    client_secret: str
    advertiser_id: str

    def __repr__(self) -> str:
        return f"CriteoCredentials(client_id={self.client_id!r}, advertiser_id={self.advertiser_id!r})"

    @classmethod
    def from_secret(cls, secret: object) -> CriteoCredentials:
        """The credentials in a Criteo secret's JSON document (ValueError saying what is wrong with it)."""
        if not isinstance(secret, dict):
            raise ValueError("the Criteo secret must be a JSON object")
        try:
            return cls(str(secret["client_id"]), str(secret["client_secret"]), str(secret["advertiser_id"]))
        except KeyError:
            raise ValueError("the Criteo secret needs client_id, client_secret and advertiser_id") from None


class TokenCache:
    """Holds one bearer token per client id until shortly before it expires."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, client_id: str) -> str | None:
        """A still-fresh token, or None."""
        with self._lock:
            entry = self._tokens.get(client_id)
        if entry and self._clock() < entry[1]:
            return entry[0]
        return None

    def put(self, client_id: str, token: str, expires_in: float) -> None:
        """Remember a new token."""
        with self._lock:
            self._tokens[client_id] = (token, self._clock() + max(0.0, expires_in - REFRESH_MARGIN_SECONDS))

    def drop(self, client_id: str) -> None:
        """Forget the token (Criteo said it expired or is invalid)."""
        with self._lock:
            self._tokens.pop(client_id, None)


# Module level on purpose: survives across invocations of a warm container.
TOKENS = TokenCache()
