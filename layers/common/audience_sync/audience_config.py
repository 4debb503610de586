"""Settings per audience: one JSON document (an SSM parameter), changeable without a redeploy.

    {"defaults": {"identifier_types": ["email", "madid"]},
     "advertisers": {"brand_eu": {"calls_per_minute": 100}},
     "audiences": {"cart_abandoners": {"segment_name": "Cart abandoners", "description": "From Engage",
                                       "identifier_types": ["email"], "paused": false},
                   "vip": {"segment_id": "5567", "lookalike": {"target_size": 500000}},
                   "eu_buyers": {"advertiser": "brand_eu"}},
     "rules": [{"event": "Order Completed", "remove_from": ["cart_abandoners"], "cool_down_hours": 72},
               {"event": "Trial Started", "add_to": "trial_users", "remove_from": ["prospects"]}]}

An audience not named gets the defaults; an empty document (or none) is the deployment's behaviour without one.
Advertisers other than `default` (the deployment's Criteo secret) each have their own secret, named after
them (`<AdvertiserSecretsPrefix><name>`).
A document that does not validate is a configuration error naming the path of the bad field; the last good
document stays in use (`ConfigSource`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from audience_sync.identifiers import IDENTIFIER_TYPES
from audience_sync.observability import logger
from audience_sync.records import ALL_AUDIENCES

_SETTINGS = {"segment_name", "description", "segment_id", "identifier_types", "paused", "lookalike", "advertiser"}
_PER_AUDIENCE = {"segment_name", "segment_id", "lookalike"}
MAX_NAME_LENGTH = 255
DEFAULT_ADVERTISER = "default"  # the deployment's own Criteo secret
_ADVERTISER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ConfigError(ValueError):
    """The document is not valid; the message names the path of the first bad field."""


@dataclass(frozen=True)
class Lookalike:
    """A Criteo lookalike segment seeded from the audience's contact list, created once and kept."""

    segment_name: str | None = None  # default: the contact list's name + " (lookalike)"
    target_size: int | None = None  # Criteo's `targetSize`; None: Criteo's default


@dataclass(frozen=True)
class AudienceSettings:
    """How one audience is synced (None: the deployment's default)."""

    segment_name: str | None = None  # the Criteo segment's name (default: AUDIENCE_NAME_PREFIX + audience key)
    description: str | None = None  # its description (our ownership marker is appended)
    segment_id: str | None = None  # an existing Criteo segment to populate instead of one found or created by name
    identifier_types: frozenset[str] | None = None  # the types added to Criteo (removes always go)
    paused: bool = False  # changes are kept in the ledger and the outbox, and sent when resumed
    lookalike: Lookalike | None = None
    advertiser: str = DEFAULT_ADVERTISER  # whose Criteo account the segment is in


@dataclass(frozen=True)
class Rule:
    """On a track event named `event`: enter `add_to`, leave `remove_from` (ALL_AUDIENCES: every audience the
    ledger holds the user in), and stay out of those for `cool_down_seconds` after the event."""

    event: str
    add_to: str | None = None
    remove_from: tuple[str, ...] = ()
    cool_down_seconds: int = 0


@dataclass(frozen=True)
class AudienceConfig:
    """The validated document."""

    defaults: AudienceSettings = field(default_factory=AudienceSettings)
    audiences: Mapping[str, AudienceSettings] = field(default_factory=dict)
    calls_per_minute: Mapping[str, int] = field(default_factory=dict)  # advertiser -> its app's budget, if set
    rules: Mapping[str, Rule] = field(default_factory=dict)  # by event name

    def settings(self, audience_key: str) -> AudienceSettings:
        """The audience's settings: its own where given, else the defaults."""
        return self.audiences.get(audience_key, self.defaults)

    def advertisers(self) -> list[str]:
        """`default` and every advertiser the settings name (for an audience, the defaults or a budget)."""
        named = {self.defaults.advertiser, *(s.advertiser for s in self.audiences.values()), *self.calls_per_minute}
        return sorted({DEFAULT_ADVERTISER, *named})

    def rate(self, advertiser: str, default: int) -> int:
        """The calls per minute of the advertiser's app: its setting, else `default`."""
        return self.calls_per_minute.get(advertiser, default)

    @property
    def suppresses_everywhere(self) -> bool:
        """A rule removes users from every audience (the sync then checks enters against suppressions)."""
        return any(ALL_AUDIENCES in rule.remove_from for rule in self.rules.values())


def parse(document: str) -> AudienceConfig:
    """The document, validated (ConfigError names the bad field's path)."""
    try:
        data = json.loads(document) if document.strip() else {}
    except json.JSONDecodeError as error:
        raise ConfigError(f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    root = _object(data, "(document)", {"defaults", "audiences", "advertisers", "rules"})
    rates = _advertisers(root.get("advertisers", {}))
    defaults = _settings(root.get("defaults", {}), "defaults", AudienceSettings(), allow_segment=False)
    audiences = {
        str(key): _settings(value, f"audiences.{key}", defaults, allow_segment=True)
        for key, value in _object(root.get("audiences", {}), "audiences", None).items()
    }
    known = {DEFAULT_ADVERTISER, *rates}
    for path, settings in [("defaults", defaults), *((f"audiences.{k}", v) for k, v in audiences.items())]:
        if settings.advertiser not in known:
            raise ConfigError(
                f"{path}.advertiser: {settings.advertiser!r} is not in advertisers ({', '.join(sorted(known))})"
            )
    ids = [(s.advertiser, s.segment_id) for s in audiences.values() if s.segment_id]
    if len(ids) != len(set(ids)):
        raise ConfigError("audiences: two audiences name the same segment_id")
    rules = _rules(root.get("rules", []))
    return AudienceConfig(defaults, audiences, {k: v for k, v in rates.items() if v is not None}, rules)


def _rules(value: Any) -> dict[str, Rule]:
    if not isinstance(value, list):
        raise ConfigError("rules: must be a list")
    rules: dict[str, Rule] = {}
    for index, given in enumerate(value):
        path = f"rules[{index}]"
        given = _object(given, path, {"event", "add_to", "remove_from", "cool_down_hours"})
        if "event" not in given:
            raise ConfigError(f"{path}.event: required (the name of a Segment track event)")
        event = _text(given["event"], f"{path}.event")
        if event in rules:
            raise ConfigError(f"{path}.event: another rule is for {event!r}")
        add_to = _text(given["add_to"], f"{path}.add_to") if "add_to" in given else None
        remove = given.get("remove_from", [])
        if remove == ALL_AUDIENCES:
            if add_to:
                raise ConfigError(f'{path}.remove_from: "*" can\'t go with add_to (it would remove that one too)')
            remove_from: tuple[str, ...] = (ALL_AUDIENCES,)
        elif isinstance(remove, list):
            remove_from = tuple(_text(key, f"{path}.remove_from[{n}]") for n, key in enumerate(remove))
        else:
            raise ConfigError(f'{path}.remove_from: must be a list of audience keys or "*"')
        if add_to in remove_from:
            raise ConfigError(f"{path}.remove_from: names add_to ({add_to!r})")
        if not add_to and not remove_from:
            raise ConfigError(f"{path}: give add_to, remove_from or both")
        hours = given.get("cool_down_hours", 0)
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 <= hours <= 24 * 365:
            raise ConfigError(f"{path}.cool_down_hours: must be a number of hours from 0 to 8760")
        if hours and not remove_from:
            raise ConfigError(f"{path}.cool_down_hours: needs remove_from (it holds back re-entry to those)")
        rules[event] = Rule(event, add_to, remove_from, int(hours * 3600))
    return rules


def _advertisers(value: Any) -> dict[str, int | None]:
    """Advertiser name -> the calls per minute of its app, if given."""
    rates: dict[str, int | None] = {}
    for name, given in _object(value, "advertisers", None).items():
        path = f"advertisers.{name}"
        if not _ADVERTISER_NAME.fullmatch(name):
            raise ConfigError(f"{path}: a name is 1-64 letters, digits, '-' or '_' (it names the secret)")
        rate = _object(given, path, {"calls_per_minute"}).get("calls_per_minute")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 10_000):
            raise ConfigError(f"{path}.calls_per_minute: must be a whole number from 1 to 10000")
        rates[name] = rate
    return rates


def _object(value: Any, path: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be an object")
    unknown = sorted(set(value) - allowed) if allowed is not None else []
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown setting (one of {', '.join(sorted(allowed or ()))})")
    return value


def _settings(value: Any, path: str, base: AudienceSettings, allow_segment: bool) -> AudienceSettings:
    given = _object(value, path, _SETTINGS if allow_segment else _SETTINGS - _PER_AUDIENCE)
    texts = [name for name in ("segment_name", "description", "segment_id") if name in given]
    changes: dict[str, Any] = {name: _text(given[name], f"{path}.{name}") for name in texts}
    if "segment_id" in changes and not changes["segment_id"].isdigit():
        raise ConfigError(f"{path}.segment_id: must be a Criteo segment id (digits)")
    if "identifier_types" in given:
        types = given["identifier_types"]
        if not isinstance(types, list) or not types or not all(t in IDENTIFIER_TYPES for t in types):
            raise ConfigError(f"{path}.identifier_types: must be a non-empty list of {sorted(IDENTIFIER_TYPES)}")
        changes["identifier_types"] = frozenset(types)
    if "paused" in given:
        if not isinstance(given["paused"], bool):
            raise ConfigError(f"{path}.paused: must be true or false")
        changes["paused"] = given["paused"]
    if "lookalike" in given:
        changes["lookalike"] = _lookalike(given["lookalike"], f"{path}.lookalike")
    if "advertiser" in given:
        if not isinstance(given["advertiser"], str):
            raise ConfigError(f"{path}.advertiser: must be the name of an advertiser")
        changes["advertiser"] = given["advertiser"]
    return replace(base, **changes)


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise ConfigError(f"{path}: must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    return value.strip()


def _lookalike(value: Any, path: str) -> Lookalike:
    given = _object(value, path, {"segment_name", "target_size"})
    size = given.get("target_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ConfigError(f"{path}.target_size: must be a positive whole number")
    name = _text(given["segment_name"], f"{path}.segment_name") if "segment_name" in given else None
    return Lookalike(name, size)


class ConfigSource:
    """The current document, from `fetch` (Powertools Parameters, which caches it for its max age); a bad or
    unreadable one is logged (with the path of the bad field) and the last good one stays in use. A bad
    document is parsed and logged once (until it changes); after a failed read, SSM is asked again only after
    `retry_seconds` (ingest consults the document for every track event)."""

    def __init__(
        self, fetch: Callable[[], str] | None, retry_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fetch = fetch
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.failing = False  # the document in SSM was refused or could not be read, the last time it was
        self._document = ""
        self._refused = ""
        self._retry_at = 0.0
        self._config = AudienceConfig()

    def current(self) -> AudienceConfig:
        """The last good document (the defaults until one was read)."""
        if self.fetch is None or self.clock() < self._retry_at:
            return self._config
        try:
            document = self.fetch()
        except GetParameterError as error:  # unreadable now (SSM down): keep the last good one
            self.failing, self._retry_at = True, self.clock() + self.retry_seconds
            logger.warning("audience configuration unreadable", extra={"reason": type(error).__name__})
            return self._config
        if document == self._refused:
            return self._config
        if document != self._document:
            try:
                self._config, self._document = parse(document), document
            except ConfigError as error:
                self.failing, self._refused = True, document
                logger.error(
                    "audience configuration refused; the last good one stays in use", extra={"reason": str(error)}
                )
                return self._config
        self.failing = False
        return self._config
