"""Builders for Segment payloads and signed API Gateway events used across the tests."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from audience_sync.webhook_auth import signature_of
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.sample_events import http_event


def sha(email: str) -> str:
    """An email as ingest queues it (already normalized here): lowercase hex SHA-256."""
    return hashlib.sha256(email.encode()).hexdigest()


def user_hash(user_id: str) -> str:
    """The ledger's user for a Segment userId (documented in docs/design.md: SHA-256 of `u:<userId>`, 32 hex)."""
    return hashlib.sha256(f"u:{user_id}".encode()).hexdigest()[:32]


def audience_event(
    message_id: str,
    audience: str,
    entered: bool,
    timestamp: str = "2026-11-20T10:00:00Z",
    email: str | None = "jane.doe@example.com",
    madid: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """An Engage `Audience Entered`/`Audience Exited` track event (userId defaults to one per identifier)."""
    event: dict[str, Any] = {
        "type": "track",
        "event": "Audience Entered" if entered else "Audience Exited",
        "messageId": message_id,
        "timestamp": timestamp,
        "userId": user_id or f"user-of-{email or madid or message_id}",
        "properties": {"audience_key": audience, audience: entered},
        "context": {"personas": {"computation_class": "audience", "computation_key": audience}, "traits": {}},
    }
    if email is not None:
        event["context"]["traits"]["email"] = email
    if madid is not None:
        event["context"]["device"] = {"advertisingId": madid}
    return event


def signed(payload: Any, secret: str = DEV_WEBHOOK_SECRET, base64_body: bool = False, **headers: str) -> dict[str, Any]:
    """A signed API Gateway v2 event carrying `payload` (str/bytes sent as is, anything else as JSON)."""
    if isinstance(payload, bytes):
        raw = payload
    else:
        raw = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    event = http_event(raw.decode("utf-8", errors="replace"), signature_of(raw, secret))
    if base64_body:
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    event["headers"].update({k.replace("_", "-").lower(): v for k, v in headers.items()})
    return event


def answer(result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Status and decoded JSON body of a handler result."""
    return result["statusCode"], json.loads(result["body"])
