"""The compact change record that travels through SQS, and its packing into messages.

A message body is `{"v": 2, "r": [[audience, name, op, user, tsMs, messageId, {idType: [ids]}], ...]}`:
one record per Segment event, many records per message, because SQS bills (and moto slows) per message.
`user` is a hash of Segment's userId (else anonymousId), so no user id travels or is stored in clear.
Operations: `add`/`remove` (an audience's enter/exit) and `grant`/`deny` (consent, for every audience of
the user; audience and name are empty, except in the re-evaluation of one audience that a sync's time did not
reach: that audience, under the consent stored by then). A `remove` made by a suppression rule may carry an
eighth field, `holdUntilMs` (enters before then are held back), and audience `*` (every audience the ledger
holds the user in).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

ADD = "add"
REMOVE = "remove"
GRANT = "grant"
DENY = "deny"
MEMBERSHIP_OPERATIONS = frozenset({ADD, REMOVE})
ALL_AUDIENCES = "*"  # the audience of a suppression's exit from every audience the ledger holds the user in
CONSENT_OPERATIONS = frozenset({GRANT, DENY})
FORMAT_VERSION = 2
# Versions are fixed-width so that string order is time order for any date (before 1970 too).
VERSION_OFFSET_MS = 10**14  # year 1 is -6.2e13 ms, year 9999 is 2.5e14 ms: always 15 digits, positive
# One SQS billing unit is 64 KiB; keeping messages at that size also keeps retries fine-grained.
MAX_MESSAGE_BYTES = 64 * 1024
_ENVELOPE = '{"v":2,"r":[', "]}"

Identifiers = dict[str, list[str]]  # identifier type -> normalized identifiers (an empty list withdraws the type)


class AudienceChange(NamedTuple):
    """One Segment event's effect: a user entering or leaving an audience, or granting/denying consent."""

    audience_key: str
    audience_name: str
    operation: str
    user: str
    timestamp_ms: int
    message_id: str
    identifiers: Identifiers
    hold_until_ms: int = 0  # a suppression's cool-down: enters dated before this don't count

    @property
    def version(self) -> str:
        """Total order of changes to the same user: event time, then messageId to break ties."""
        return f"{self.timestamp_ms + VERSION_OFFSET_MS:015d}|{self.message_id}"


class PoisonMessage(ValueError):
    """A message body that can never be decoded into records."""


class Parked(NamedTuple):
    """A contact-list PATCH Criteo refused, parked in the DLQ (`{"v": 2, "p": [audience, name, op, type,
    [ids]]}`); a redrive puts it back in the audience's outbox."""

    audience_key: str
    audience_name: str
    operation: str
    identifier_type: str
    identifiers: list[str]


def pack_parked(parked: Parked) -> str:
    """The DLQ body of a parked PATCH."""
    return json.dumps({"v": FORMAT_VERSION, "p": list(parked)}, separators=(",", ":"))


def _encode(change: AudienceChange) -> str:
    # ASCII-only JSON: byte size = length, and lone surrogates from the input survive as escapes.
    return json.dumps(list(change) if change.hold_until_ms else list(change)[:7], separators=(",", ":"))


def pack_changes(changes: Iterable[AudienceChange], max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[str]:
    """Yield message bodies holding as many records as fit in `max_bytes` (UTF-8) each."""
    head, tail = _ENVELOPE
    budget = max_bytes - len(head) - len(tail)
    parts: list[str] = []
    size = 0
    for change in changes:
        encoded = _encode(change)
        length = len(encoded) + 1
        if parts and size + length > budget:
            yield head + ",".join(parts) + tail
            parts, size = [], 0
        parts.append(encoded)
        size += length
    if parts:
        yield head + ",".join(parts) + tail


def _valid_identifiers(value: object) -> bool:
    if type(value) is not dict:
        return False
    for id_type, ids in value.items():
        if type(id_type) is not str or type(ids) is not list:
            return False
        for identifier in ids:
            if type(identifier) is not str or not identifier:
                return False
    return True


def _valid_row(row: object) -> bool:
    # One flat check per row (no generator, no all()): this runs for every record of every batch.
    if type(row) is not list or len(row) != 7:
        return _valid_hold(row)
    audience, name, operation, user, timestamp, message_id, identifiers = row
    if type(audience) is not str or type(name) is not str or type(user) is not str or not user:
        return False
    if type(timestamp) is not int or type(message_id) is not str or not message_id:
        return False
    if operation in MEMBERSHIP_OPERATIONS:
        return bool(audience) and _valid_identifiers(identifiers)
    return operation in CONSENT_OPERATIONS and identifiers == {}


def _valid_hold(row: object) -> bool:
    """A suppression's exit: seven fields and a hold time."""
    if type(row) is not list or len(row) != 8 or type(row[7]) is not int or row[7] < 0 or row[2] != REMOVE:
        return False
    return _valid_row(row[:7])


def unpack(body: str) -> list[AudienceChange] | Parked:
    """Decode a message body: records, or a parked PATCH sent back; anything malformed raises PoisonMessage."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise PoisonMessage(f"body is not JSON: {error.msg}") from None
    if isinstance(document, dict) and document.get("v") == FORMAT_VERSION and "p" in document:
        return _parked(document["p"])
    return _changes(document)


def unpack_changes(body: str) -> list[AudienceChange]:
    """Decode a body of records; anything else raises PoisonMessage with the reason."""
    unpacked = unpack(body)
    if isinstance(unpacked, Parked):
        raise PoisonMessage("body is a parked PATCH, not records")
    return unpacked


def _parked(row: object) -> Parked:
    if type(row) is not list or len(row) != 5 or not all(type(part) is str for part in row[:4]):
        raise PoisonMessage("parked PATCH is malformed")
    if row[2] not in MEMBERSHIP_OPERATIONS or not _valid_identifiers({row[3]: row[4]}):
        raise PoisonMessage("parked PATCH is malformed")
    return Parked(*row)


def _changes(document: object) -> list[AudienceChange]:
    if not isinstance(document, dict) or document.get("v") != FORMAT_VERSION or not isinstance(document.get("r"), list):
        raise PoisonMessage(f"body is not a version {FORMAT_VERSION} record envelope")
    changes: list[AudienceChange] = []
    make = AudienceChange._make
    for row in document["r"]:
        if not _valid_row(row):
            raise PoisonMessage(f"record {len(changes)} is malformed")
        if len(row) == 7:
            row.append(0)  # no hold
        changes.append(make(row))
    return changes
