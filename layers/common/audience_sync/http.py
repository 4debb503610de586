"""Adapt API Gateway HTTP API (payload v2) events to a plain request, and responses back."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpRequest:
    """What the ingest logic needs of a request: lower-cased headers and the raw body bytes."""

    headers: dict[str, str]
    body: bytes
    body_is_valid_base64: bool = True


@dataclass(frozen=True)
class HttpResponse:
    """A JSON answer."""

    status: int
    payload: dict[str, Any]


def error_response(status: int, code: str, message: str, **extra: Any) -> HttpResponse:
    """The one error shape every 4xx/5xx uses: `{"error": {"code", "message"}}`."""
    return HttpResponse(status, {"error": {"code": code, "message": message, **extra}})


def request_from_apigw_v2(event: dict[str, Any]) -> HttpRequest:
    """Headers (lower-cased) and body bytes of an HTTP API v2 event, base64 bodies decoded."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return HttpRequest(headers, raw.encode())
    try:
        return HttpRequest(headers, base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return HttpRequest(headers, b"", body_is_valid_base64=False)


def to_apigw_v2(response: HttpResponse) -> dict[str, Any]:
    """An HTTP API v2 Lambda proxy result."""
    return {
        "statusCode": response.status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(response.payload, separators=(",", ":")),
    }
