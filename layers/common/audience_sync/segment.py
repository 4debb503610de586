"""Turn Segment (Engage) payloads into changes per user, with a precise reason for every rejection."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audience_sync.audience_config import Rule
from audience_sync.identifiers import (
    EMAIL,
    GUM,
    IDENTITY_LINK,
    MADID,
    PHONE,
    ZERO_MADID,
    InvalidIdentifier,
    normalize,
)
from audience_sync.records import ADD, DENY, GRANT, REMOVE, AudienceChange, Identifiers

AUDIENCE_EVENTS = {"Audience Entered": ADD, "Audience Exited": REMOVE}
MAX_EVENTS_PER_REQUEST = 10_000
MAX_KEY_LENGTH = 255


class RequestError(ValueError):
    """The whole request is unusable (4xx); `code` is machine-readable, the message says why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class EventRejected(ValueError):
    """One event can't be synced: `code` for metrics, the message says why (never echoing PII)."""

    def __init__(self, code: str, message: str, audience: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.audience = audience
        self.operation = operation


class EventIgnored(Exception):
    """A valid Segment event that is not an audience change."""


@dataclass
class ParseResult:
    """Outcome of one request: the changes to queue plus per-event accounting (no PII)."""

    changes: list[AudienceChange] = field(default_factory=list)
    accepted: int = 0
    ignored: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # (reason code, audience, operation) -> events rejected / identifiers dropped
    rejected: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    dropped: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    clamped_timestamps: int = 0
    consent_changes: int = 0
    rule_events: int = 0  # ordinary track events a rule turned into changes


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` on top, recursively (the event's own values win)."""
    merged = dict(base)
    for key, value in override.items():
        held = merged.get(key)
        merged[key] = _merged(held, value) if isinstance(held, dict) and isinstance(value, dict) else value
    return merged


def parse_events(body: bytes | str) -> list[Any]:
    """A single event, a JSON array, or Segment's `{"batch": [...], "context": {...}}` → list of events.

    The envelope's `context` applies to every event in it (Segment merges it; the event's own keys win).
    """
    try:
        document = json.loads(body)
    except RecursionError:
        raise RequestError(400, "malformed_json", "body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, "malformed_json", f"body is not valid JSON: {getattr(error, 'msg', error)}") from None
    shared: Any = None
    if isinstance(document, dict) and "batch" in document:
        shared = document.get("context")
        document = document["batch"]
        if not isinstance(document, list):
            raise RequestError(400, "invalid_batch", "`batch` must be an array of events")
        if shared is not None and not isinstance(shared, dict):
            raise RequestError(400, "invalid_batch", "the batch's `context` must be an object")
    events = document if isinstance(document, list) else [document]
    if not events:
        raise RequestError(400, "empty_batch", "the request holds no events")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise RequestError(413, "too_many_events", f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    if shared:
        events = [_with_context(event, shared) for event in events]
    return events


def _with_context(event: Any, shared: dict[str, Any]) -> Any:
    if not isinstance(event, dict):
        return event
    own = event.get("context")
    return {**event, "context": _merged(shared, own) if isinstance(own, dict) else shared}


def _at(container: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(container, dict):
            return None
        container = container.get(key)
    return container


def _moment_ms(raw: Any, name: str) -> int:
    if not isinstance(raw, str):
        raise EventRejected("invalid_timestamp", f"`{name}` is missing or not a string")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise EventRejected("invalid_timestamp", f"`{name}` is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise EventRejected("invalid_timestamp", f"`{name}` has no time zone")
    return int(moment.timestamp() * 1000)


def _audience_and_operation(event: dict[str, Any]) -> tuple[str, str]:
    kind = event.get("type")
    personas = _at(event, "context", "personas")
    if kind == "track":
        name = event.get("event")
        if name not in AUDIENCE_EVENTS:
            raise EventIgnored
        operation = AUDIENCE_EVENTS[name]
        key = _at(event, "properties", "audience_key") or _at(personas, "computation_key")
        if not isinstance(key, str) or not key.strip():
            raise EventRejected(
                "no_audience_key",
                "no audience key in `properties.audience_key` or `context.personas.computation_key`",
                operation=operation,
            )
        return key.strip(), operation
    if kind == "identify":
        key = _at(personas, "computation_key")
        if _at(personas, "computation_class") != "audience" or not key:
            raise EventIgnored
        if not isinstance(key, str) or not key.strip():
            raise EventRejected("no_audience_key", "`context.personas.computation_key` must be a non-empty string")
        member = _at(event, "traits", key)
        if not isinstance(member, bool):
            raise EventRejected("invalid_trait", f"identify trait `{key[:MAX_KEY_LENGTH]}` must be true or false")
        return key.strip(), ADD if member else REMOVE
    if isinstance(kind, str):
        raise EventIgnored
    raise EventRejected("invalid_type", "`type` is missing or not a string")


_IDENTIFIER_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    EMAIL: (("context", "traits", "email"), ("properties", "email"), ("traits", "email")),
    MADID: (("context", "device", "advertisingId"),),
    PHONE: (("context", "traits", "phone"), ("properties", "phone"), ("traits", "phone")),
    IDENTITY_LINK: (("context", "traits", "identity_link"), ("traits", "identity_link")),
    GUM: (("context", "traits", "gum_id"), ("properties", "gum_id"), ("traits", "gum_id")),
}


def user_key(event: dict[str, Any]) -> str | None:
    """Segment's userId, else anonymousId, hashed (the ledger's user; no user id is kept in clear)."""
    for field_name, prefix in (("userId", "u:"), ("anonymousId", "a:")):
        value = event.get(field_name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return hashlib.sha256((prefix + str(value).strip()).encode()).hexdigest()[:32]
    return None


@dataclass(frozen=True)
class ParserSettings:
    """What the parser needs from the deployment's settings."""

    identifier_types: frozenset[str]
    hash_pii: bool = True
    consent_categories: frozenset[str] = frozenset()  # empty: consent is not enforced
    max_clock_skew_ms: int = 300_000


def _consent_change(consent: str, user: str, timestamp_ms: int, message_id: str, result: ParseResult) -> AudienceChange:
    """The consent an event carries, as a change for every audience of the user (counted)."""
    result.consent_changes += 1
    return AudienceChange("", "", consent, user, timestamp_ms, message_id, {})


class SegmentEventParser:
    """Validates events and turns each into the changes it asks for (membership and consent)."""

    def __init__(
        self,
        settings: ParserSettings,
        clock: Callable[[], float] = time.time,
        rules: Callable[[], Mapping[str, Rule]] = dict,
    ) -> None:
        self.settings = settings
        self.rules = rules  # the current rules by event name (read only for track events Engage did not send)
        self.paths = {t: p for t, p in _IDENTIFIER_PATHS.items() if t in settings.identifier_types}
        self.clock = clock

    def parse(self, events: list[Any]) -> ParseResult:
        """Account for every event of a request: accepted, ignored or rejected with a reason."""
        result = ParseResult()
        for index, event in enumerate(events):
            try:
                changes = self._changes_of(event, result)
            except EventIgnored:
                result.ignored += 1
                continue
            except EventRejected as error:
                message_id = event.get("messageId") if isinstance(event, dict) else None
                message_id = message_id[:MAX_KEY_LENGTH] if isinstance(message_id, str) else None
                result.rejections.append({"index": index, "messageId": message_id, "reason": str(error)})
                result.rejected[(error.code, error.audience, error.operation)] += 1
                continue
            result.accepted += 1
            result.changes.extend(changes)
        return result

    def _changes_of(self, event: Any, result: ParseResult) -> list[AudienceChange]:
        """The changes one event asks for; raises EventIgnored or EventRejected."""
        if not isinstance(event, dict):
            raise EventRejected("not_an_object", "event must be a JSON object")
        message_id = event.get("messageId")
        if not isinstance(message_id, str) or not message_id.strip():
            raise EventRejected("invalid_message_id", "`messageId` is missing or not a string")
        if len(message_id) > MAX_KEY_LENGTH:
            raise EventRejected("invalid_message_id", f"`messageId` is longer than {MAX_KEY_LENGTH} characters")
        user = user_key(event)
        consent = self._consent_of(event)
        try:
            audience_key, operation = _audience_and_operation(event)
        except EventIgnored:
            name = event.get("event")
            rule = self.rules().get(name) if event.get("type") == "track" and isinstance(name, str) else None
            if rule is not None:
                return self._rule_changes(rule, event, user, message_id, consent, result)
            if consent is None or user is None:
                raise
            return [_consent_change(consent, user, self._timestamp_ms(event, result), message_id, result)]
        if len(audience_key) > MAX_KEY_LENGTH:
            raise EventRejected("invalid_audience_key", f"audience key is longer than {MAX_KEY_LENGTH} characters")
        try:
            timestamp_ms = self._timestamp_ms(event, result)
            if user is None:
                raise EventRejected("no_user", "neither `userId` nor `anonymousId` is present")
            identifiers = self._identifiers_of(event, audience_key, operation, result)
        except EventRejected as error:
            error.audience, error.operation = audience_key, operation
            raise
        if operation == ADD and not identifiers:
            raise EventRejected(
                "no_identifier", f"no usable identifier of {sorted(self.paths)}", audience_key, operation
            )
        display = _at(event, "properties", "audience_name")
        name = display.strip()[:MAX_KEY_LENGTH] if isinstance(display, str) else ""
        # An exit needs no identifier: the ledger removes everything it holds for the user.
        changes = [AudienceChange(audience_key, name, operation, user, timestamp_ms, message_id, identifiers)]
        if consent is not None:
            changes.append(_consent_change(consent, user, timestamp_ms, message_id, result))
        return changes

    def _rule_changes(
        self,
        rule: Rule,
        event: dict[str, Any],
        user: str | None,
        message_id: str,
        consent: str | None,
        result: ParseResult,
    ) -> list[AudienceChange]:
        """A rule's changes: its exits (holding re-entry back for the cool-down), then its enter, all dated
        like the event, so the ledger orders them with every other change of the user."""
        if user is None:
            raise EventRejected("no_user", "neither `userId` nor `anonymousId` is present")
        timestamp_ms = self._timestamp_ms(event, result)
        hold = timestamp_ms + rule.cool_down_seconds * 1000 if rule.cool_down_seconds else 0
        changes = [
            AudienceChange(key, "", REMOVE, user, timestamp_ms, message_id, {}, hold) for key in rule.remove_from
        ]
        if rule.add_to:
            identifiers = self._identifiers_of(event, rule.add_to, ADD, result)
            if not identifiers:
                detail = f"no usable identifier of {sorted(self.paths)} to enter {rule.add_to!r}"
                raise EventRejected("no_identifier", detail, rule.add_to, ADD)
            changes.append(AudienceChange(rule.add_to, "", ADD, user, timestamp_ms, message_id, identifiers))
        result.rule_events += 1
        if consent is not None:
            changes.append(_consent_change(consent, user, timestamp_ms, message_id, result))
        return changes

    def _timestamp_ms(self, event: dict[str, Any], result: ParseResult) -> int:
        """Event time, never later than its receipt (Segment's `receivedAt`, else now) plus the skew allowance."""
        timestamp_ms = _moment_ms(event.get("timestamp"), "timestamp")
        now_ms = int(self.clock() * 1000)
        try:
            received_ms = min(_moment_ms(event.get("receivedAt"), "receivedAt"), now_ms)
        except EventRejected:
            received_ms = now_ms
        if timestamp_ms > received_ms + self.settings.max_clock_skew_ms:
            result.clamped_timestamps += 1
            return received_ms
        return timestamp_ms

    def _consent_of(self, event: dict[str, Any]) -> str | None:
        """grant/deny when consent is enforced and the event carries Segment's consent preferences."""
        required = self.settings.consent_categories
        preferences = _at(event, "context", "consent", "categoryPreferences")
        if not required or not isinstance(preferences, dict):
            return None
        return GRANT if all(preferences.get(category) is True for category in required) else DENY

    def _identifiers_of(self, event: dict[str, Any], audience: str, operation: str, result: ParseResult) -> Identifiers:
        """Per type, the first valid value along its paths; invalid values are dropped and counted."""
        identifiers: Identifiers = {}
        for id_type, paths in self.paths.items():
            for path in paths:
                raw = _at(event, *path)
                if raw is None or (isinstance(raw, str) and not raw.strip()):
                    continue
                reason = self._unusable(id_type, raw, event)
                if reason is None:
                    try:
                        identifiers[id_type] = [normalize(id_type, raw, self.settings.hash_pii)]
                        break
                    except InvalidIdentifier:
                        reason = f"invalid_{id_type}"
                result.dropped[(reason, audience, operation)] += 1
                if reason in {"zero_madid", "ad_tracking_limited"}:
                    identifiers[id_type] = []  # withdraws a madid held from an older event
                    break
        return identifiers

    @staticmethod
    def _unusable(id_type: str, raw: Any, event: dict[str, Any]) -> str | None:
        if not isinstance(raw, str):
            return f"invalid_{id_type}"
        if id_type == MADID:
            if _at(event, "context", "device", "adTrackingEnabled") is False:
                return "ad_tracking_limited"
            if raw.strip().lower() == ZERO_MADID:
                return "zero_madid"
        return None
