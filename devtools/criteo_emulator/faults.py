"""Fault injection for the Criteo emulator: rate limits, 5xx, latency, outages, deprecation, token expiry, and
Criteo's "partial success" 200 answer to a refused create."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

NOMINAL_RATE_LIMIT = 250  # Criteo's documented limit, reported when `fail_next` injects a 429


@dataclass
class Faults:
    """Faults of API calls (and of /oauth2/token with `token_errors`), decided before any body is applied.

    Set the public fields directly in tests or over HTTP with `POST /__admin/faults` and a JSON object.
    Order per call: latency, down, rate limit, fail_next, error_rate.
    """

    rate_limit: int = 0  # calls allowed per window (0: unlimited, no x-ratelimit-* headers)
    rate_window_s: float = 60.0
    error_rate: float = 0.0  # share of calls answered with `error_status`, drawn from random.Random(seed)
    error_status: int = 503
    seed: int = 0
    fail_next: list[int] = field(default_factory=list)  # statuses for the next calls, in order
    latency_s: float = 0.0
    down: bool = False  # every call answers 503
    deprecated: bool = False  # versioned responses carry Deprecation/Sunset headers
    token_errors: bool = False  # apply these faults to /oauth2/token too
    create_refusals_as_200: bool = False  # create names refused items in a 200's `errors` (partial success), not 4xx
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _rng: random.Random | None = field(default=None, init=False, repr=False, compare=False)
    _rng_seed: int | None = field(default=None, init=False, repr=False, compare=False)
    _window_start: float = field(default=-math.inf, init=False, repr=False, compare=False)
    _window_calls: int = field(default=0, init=False, repr=False, compare=False)
    _token_epoch: int = field(default=0, init=False, repr=False, compare=False)

    def settings(self) -> dict[str, Any]:
        """The public fields as JSON-ready values."""
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self) if f.init}

    def update(self, settings: Mapping[str, Any]) -> None:
        """Set public fields from a JSON object: all or nothing; ValueError names the first bad entry."""
        checked = {name: self._checked(name, value) for name, value in settings.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def clear(self) -> None:
        """Back to no faults (issued tokens stay expired if they were)."""
        defaults = Faults()
        with self._lock:
            for name, value in defaults.settings().items():
                setattr(self, name, value)
            self._rng = self._rng_seed = None
            self._window_start, self._window_calls = -math.inf, 0

    def expire_tokens(self) -> None:
        """Every token issued so far answers `authorization-token-expired` from now on."""
        with self._lock:
            self._token_epoch += 1

    @property
    def token_epoch(self) -> int:
        """Tokens issued in an older epoch are expired."""
        return self._token_epoch

    def count_call(self, now: float) -> tuple[bool, dict[str, str]]:
        """Count one call against the rate limit: (over the limit?, x-ratelimit-* headers)."""
        if self.rate_limit <= 0:
            return False, {}
        with self._lock:
            if now >= self._window_start + self.rate_window_s:
                self._window_start, self._window_calls = now, 0
            self._window_calls += 1
            reset = math.ceil(self._window_start + self.rate_window_s)
            remaining = max(0, self.rate_limit - self._window_calls)
            return self._window_calls > self.rate_limit, rate_limit_headers(self.rate_limit, remaining, reset)

    def next_failure(self) -> int | None:
        """The status this call must fail with: the next `fail_next` entry, else maybe `error_status`."""
        with self._lock:
            if self.fail_next:
                return self.fail_next.pop(0)
            if self.error_rate <= 0:
                return None
            if self._rng is None or self._rng_seed != self.seed:
                self._rng, self._rng_seed = random.Random(self.seed), self.seed
            return self.error_status if self._rng.random() < self.error_rate else None

    def _checked(self, name: str, value: Any) -> Any:
        """`value` converted to the field's type, or ValueError."""
        if name not in self.settings():
            raise ValueError(f"unknown fault setting {name!r}")
        current = getattr(self, name)
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, float):
            ok = _is_number(value) and value >= 0
            value = float(value) if ok else value
        elif isinstance(current, int):
            ok = _is_int(value) and value >= 0
        else:
            ok = isinstance(value, list) and all(_is_int(v) and 400 <= v <= 599 for v in value)
        if name == "error_rate":
            ok = ok and value <= 1
        if name == "error_status":
            ok = ok and 400 <= value <= 599
        if not ok:
            raise ValueError(f"bad value for {name}: {value!r}")
        return list(value) if isinstance(value, list) else value


def rate_limit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    """Criteo's rate-limit headers (`reset` in unix seconds)."""
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(reset)}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
