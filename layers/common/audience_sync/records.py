"""The compact audience-change record that travels through SQS, and its packing into messages.

A message body is `{"v": 1, "r": [[audience, name, op, idType, value, tsMs, messageId], ...]}`:
many records per message, because SQS bills (and moto slows) per message, not per record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

ADD = "add"
REMOVE = "remove"
FORMAT_VERSION = 1
# One SQS billing unit is 64 KiB; keeping messages at that size also keeps retries fine-grained.
MAX_MESSAGE_BYTES = 64 * 1024
_ENVELOPE = '{"v":1,"r":[', "]}"


class AudienceChange(NamedTuple):
    """One user entering or leaving one audience, for one identifier."""

    audience_key: str
    audience_name: str
    operation: str
    identifier_type: str
    identifier: str
    timestamp_ms: int
    message_id: str

    @property
    def version(self) -> str:
        """Total order of changes to the same key: event time, then messageId to break ties."""
        return f"{self.timestamp_ms:015d}|{self.message_id}"


class PoisonMessage(ValueError):
    """A message body that can never be decoded into records."""


def _encode(change: AudienceChange) -> str:
    # ASCII-only JSON: byte size = length, and lone surrogates from the input survive as escapes.
    return json.dumps(list(change), separators=(",", ":"))


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


def unpack_changes(body: str) -> list[AudienceChange]:
    """Decode a message body; anything malformed raises PoisonMessage with the reason."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise PoisonMessage(f"body is not JSON: {error.msg}") from None
    if not isinstance(document, dict) or document.get("v") != FORMAT_VERSION or not isinstance(document.get("r"), list):
        raise PoisonMessage(f"body is not a version {FORMAT_VERSION} record envelope")
    changes: list[AudienceChange] = []
    make = AudienceChange._make
    for row in document["r"]:
        # One flat check per row (no generator, no all()): this loop runs for every record of every batch.
        if (
            type(row) is not list
            or len(row) != 7
            or type(row[0]) is not str
            or type(row[1]) is not str
            or type(row[3]) is not str
            or type(row[4]) is not str
            or (row[2] != ADD and row[2] != REMOVE)
            or type(row[5]) is not int
            or type(row[6]) is not str
            or not row[0]
            or not row[4]
        ):
            raise PoisonMessage(f"record {len(changes)} is malformed")
        changes.append(make(row))
    return changes
