"""Fault injection for the Criteo emulator: rate limits, 5xx, latency, outages, token expiry."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    """Settable per test (attributes) or over HTTP (`POST /__admin/faults` with a JSON object)."""

    rate_limit: int = 0  # calls allowed per window; 0 = unlimited
    rate_window_s: float = 60.0
    error_rate: float = 0.0  # share of API calls answered with `error_status`
    error_status: int = 503
    seed: int = 0  # makes `error_rate` repeatable
    fail_next: list[int] = field(default_factory=list)  # statuses for the next API calls, in order
    latency_s: float = 0.0
    down: bool = False  # every API call answers 503
    deprecated: bool = False  # responses carry Deprecation/Sunset headers
    token_errors: bool = False  # apply error_rate/fail_next/down to /oauth2/token too
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _calls: int = 0
    _window_start: float = 0.0
    _window_calls: int = 0

    def update(self, settings: dict[str, Any]) -> None:
        """Set public fields from a JSON object; unknown names raise KeyError."""
        public = {f.name for f in fields(self) if not f.name.startswith("_")}
        for name, value in settings.items():
            if name not in public:
                raise KeyError(name)
            setattr(self, name, value)

    def rate_limited(self) -> tuple[bool, dict[str, str]]:
        """Count one call in the current window; (over the limit?, x-ratelimit-* headers)."""
        if not self.rate_limit:
            return False, {}
        with self._lock:
            now = time.time()
            if now >= self._window_start + self.rate_window_s:
                self._window_start, self._window_calls = now, 0
            self._window_calls += 1
            remaining = max(0, self.rate_limit - self._window_calls)
            headers = {
                "x-ratelimit-limit": str(self.rate_limit),
                "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-reset": str(int(self._window_start + self.rate_window_s) + 1),
            }
            return self._window_calls > self.rate_limit, headers

    def injected_status(self) -> int | None:
        """The error status this call must get, if any (fail_next first, then down, then error_rate)."""
        with self._lock:
            self._calls += 1
            if self.fail_next:
                return self.fail_next.pop(0)
            if self.down:
                return 503
            if self.error_rate:
                digest = hashlib.sha256(f"{self.seed}:{self._calls}".encode()).digest()
                if int.from_bytes(digest[:8], "big") / 2**64 < self.error_rate:
                    return self.error_status
        return None
