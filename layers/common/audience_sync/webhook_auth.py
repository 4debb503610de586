"""Authenticate Segment's calls: `X-Signature` (hex HMAC-SHA1 of the raw body) or a bearer token."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from audience_sync.errors import ConfigurationError

# How often a failed check may force a fresh read of the secret (so a rotation applies at once,
# while a flood of bad signatures can't turn into a flood of Secrets Manager calls).
FORCED_REFRESH_INTERVAL_SECONDS = 30.0


class Unauthorized(PermissionError):
    """The caller did not prove it knows the shared secret (401)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def signature_of(body: bytes, secret: str) -> str:
    """Segment's signature: hex HMAC-SHA1 of the exact body bytes."""
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


class WebhookAuthenticator:
    """Checks a request against the (cached, rotatable) shared secret in constant time."""

    def __init__(
        self,
        load_secret: Callable[[bool], str | None],
        allow_bearer_token: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_secret = load_secret
        self._allow_bearer = allow_bearer_token
        self._clock = clock
        self._last_forced = -FORCED_REFRESH_INTERVAL_SECONDS

    def verify(self, body: bytes, headers: dict[str, str]) -> None:
        """Raise Unauthorized unless the request is signed (or carries the bearer token)."""
        signature = headers.get("x-signature", "").strip().lower()
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
        if not signature and not (self._allow_bearer and token):
            hint = "an X-Signature header" + (" or a bearer token" if self._allow_bearer else "")
            raise Unauthorized("missing_signature", f"the request must carry {hint}")
        if self._matches(self._secret(False), body, signature, token):
            return
        now = self._clock()
        if now - self._last_forced >= FORCED_REFRESH_INTERVAL_SECONDS:
            self._last_forced = now
            if self._matches(self._secret(True), body, signature, token):
                return
        raise Unauthorized("invalid_signature", "the signature or token does not match the shared secret")

    def _secret(self, force: bool) -> str:
        secret = self._load_secret(force)
        if not secret:
            raise ConfigurationError("the webhook shared secret is not configured; refusing unsigned requests")
        return secret

    def _matches(self, secret: str, body: bytes, signature: str, token: str) -> bool:
        # Bytes, not str: compare_digest refuses non-ASCII strings, and the header is attacker-controlled.
        if signature and hmac.compare_digest(signature_of(body, secret).encode(), signature.encode(errors="replace")):
            return True
        return bool(
            self._allow_bearer and token and hmac.compare_digest(token.encode(errors="replace"), secret.encode())
        )
