"""Turn Segment (Engage) payloads into audience changes, with a precise reason for every rejection."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audience_sync.identifiers import EMAIL, IDENTITY_LINK, MADID, PHONE, InvalidIdentifier, normalize
from audience_sync.records import ADD, REMOVE, AudienceChange

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
    """One event can't be synced; the message says why (never echoing PII)."""


class EventIgnored(Exception):
    """A valid Segment event that is not an audience change."""


@dataclass
class ParseResult:
    """Outcome of one request: the changes to queue plus per-event accounting."""

    changes: list[AudienceChange] = field(default_factory=list)
    accepted: int = 0
    ignored: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)


def parse_events(body: bytes | str) -> list[Any]:
    """A single event, a JSON array, or Segment's `{"batch": [...]}` envelope → list of events."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise RequestError(400, "malformed_json", "body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, "malformed_json", f"body is not valid JSON: {getattr(error, 'msg', error)}") from None
    if isinstance(document, dict) and "batch" in document:
        document = document["batch"]
        if not isinstance(document, list):
            raise RequestError(400, "invalid_batch", "`batch` must be an array of events")
    events = document if isinstance(document, list) else [document]
    if not events:
        raise RequestError(400, "empty_batch", "the request holds no events")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise RequestError(413, "too_many_events", f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    return events


def _text(container: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(container, dict):
            return None
        container = container.get(key)
    return container


def _timestamp_ms(event: dict[str, Any]) -> int:
    raw = event.get("timestamp")
    if not isinstance(raw, str):
        raise EventRejected("`timestamp` is missing or not a string")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise EventRejected("`timestamp` is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise EventRejected("`timestamp` has no time zone")
    return int(moment.timestamp() * 1000)


def _audience_and_operation(event: dict[str, Any]) -> tuple[str, str]:
    kind = event.get("type")
    personas = _text(event, "context", "personas")
    if kind == "track":
        name = event.get("event")
        if name not in AUDIENCE_EVENTS:
            raise EventIgnored
        key = _text(event, "properties", "audience_key") or _text(personas, "computation_key")
        if not isinstance(key, str) or not key.strip():
            raise EventRejected("no audience key in `properties.audience_key` or `context.personas.computation_key`")
        return key.strip(), AUDIENCE_EVENTS[name]
    if kind == "identify":
        key = _text(personas, "computation_key")
        if _text(personas, "computation_class") != "audience" or not key:
            raise EventIgnored
        if not isinstance(key, str) or not key.strip():
            raise EventRejected("`context.personas.computation_key` must be a non-empty string")
        member = _text(event, "traits", key)
        if not isinstance(member, bool):
            raise EventRejected(f"identify trait `{key[:MAX_KEY_LENGTH]}` must be true or false")
        return key.strip(), ADD if member else REMOVE
    if isinstance(kind, str):
        raise EventIgnored
    raise EventRejected("`type` is missing or not a string")


def _first_string(event: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> str | None:
    for path in paths:
        value = _text(event, *path)
        if value is not None:
            if not isinstance(value, str):
                raise EventRejected(f"`{'.'.join(path)}` must be a string")
            if value.strip():
                return value
    return None


_IDENTIFIER_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    EMAIL: (("context", "traits", "email"), ("properties", "email"), ("traits", "email")),
    MADID: (("context", "device", "advertisingId"),),
    PHONE: (("context", "traits", "phone"), ("properties", "phone"), ("traits", "phone")),
    IDENTITY_LINK: (("context", "traits", "identity_link"), ("traits", "identity_link")),
}


class SegmentEventParser:
    """Validates events and extracts audience changes for the configured identifier types."""

    def __init__(self, identifier_types: frozenset[str], hash_pii: bool) -> None:
        self.paths = {t: p for t, p in _IDENTIFIER_PATHS.items() if t in identifier_types}
        self.hash_pii = hash_pii

    def changes_of(self, event: Any) -> list[AudienceChange]:
        """The changes one event asks for; raises EventIgnored or EventRejected."""
        if not isinstance(event, dict):
            raise EventRejected("event must be a JSON object")
        message_id = event.get("messageId")
        if not isinstance(message_id, str) or not message_id.strip():
            raise EventRejected("`messageId` is missing or not a string")
        if len(message_id) > MAX_KEY_LENGTH:
            raise EventRejected(f"`messageId` is longer than {MAX_KEY_LENGTH} characters")
        audience_key, operation = _audience_and_operation(event)
        if len(audience_key) > MAX_KEY_LENGTH:
            raise EventRejected(f"audience key is longer than {MAX_KEY_LENGTH} characters")
        timestamp_ms = _timestamp_ms(event)
        display = _text(event, "properties", "audience_name")
        name = display.strip()[:MAX_KEY_LENGTH] if isinstance(display, str) else ""
        changes = []
        problems = []
        for id_type, paths in self.paths.items():
            raw = _first_string(event, paths)
            if raw is None:
                continue
            try:
                value = normalize(id_type, raw, self.hash_pii)
            except InvalidIdentifier as error:
                problems.append(str(error))
                continue
            changes.append(AudienceChange(audience_key, name, operation, id_type, value, timestamp_ms, message_id))
        if not changes:
            detail = "; ".join(problems) if problems else f"none of {sorted(self.paths)} is present"
            raise EventRejected(f"no usable identifier: {detail}")
        return changes

    def parse(self, events: list[Any]) -> ParseResult:
        """Account for every event of a request: accepted, ignored or rejected with a reason."""
        result = ParseResult()
        for index, event in enumerate(events):
            try:
                changes = self.changes_of(event)
            except EventIgnored:
                result.ignored += 1
                continue
            except EventRejected as error:
                message_id = event.get("messageId") if isinstance(event, dict) else None
                message_id = message_id[:MAX_KEY_LENGTH] if isinstance(message_id, str) else None
                result.rejections.append({"index": index, "messageId": message_id, "reason": str(error)})
                continue
            result.accepted += 1
            result.changes.extend(changes)
        return result
