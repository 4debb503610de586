"""Replies that end a request early: Criteo's error envelope and the OAuth error body."""

from __future__ import annotations

import uuid
from typing import Any


class Reply(Exception):
    """Ends the request with this status, JSON body and extra headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})


def problem(
    status: int, kind: str, code: str, detail: str, instance: str = "/", headers: dict[str, str] | None = None
) -> Reply:
    """A reply carrying Criteo's envelope `{"errors": [...], "warnings": []}` with one error."""
    error = {
        "traceId": uuid.uuid4().hex,
        "type": kind,
        "code": code,
        "instance": instance,
        "title": code.replace("-", " ").capitalize(),
        "detail": detail,
    }
    return Reply(status, {"errors": [error], "warnings": []}, headers)


def oauth_error(status: int, error: str, description: str) -> Reply:
    """A reply with the token endpoint's body `{"error": ..., "error_description": ...}`."""
    return Reply(status, {"error": error, "error_description": description})
