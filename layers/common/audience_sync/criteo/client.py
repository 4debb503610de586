"""The Criteo calls we make, with token refresh, rate-limit waits and backoff bounded by a time budget."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import requests

from audience_sync.criteo.auth import TOKENS, CriteoCredentials, TokenCache
from audience_sync.criteo.errors import (
    CriteoError,
    InvalidCredentials,
    NameNotUnique,
    RejectedRequest,
    RetryLater,
    SegmentGone,
)
from audience_sync.observability import logger

SEARCH_PAGE_SIZE = 100
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 20.0
TIMEOUT_SECONDS = (3.05, 30.0)
TOKEN_CODES = {"authorization-token-expired", "authorization-token-invalid"}


@dataclass
class CallStats:
    """What this client did, for metrics and for checking we made the minimum of calls."""

    calls: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    throttles: int = 0
    token_refreshes: int = 0

    def count(self, kind: str) -> None:
        """Count one HTTP call of a kind (token, search, create, update, patch)."""
        self.calls[kind] = self.calls.get(kind, 0) + 1

    @property
    def total_calls(self) -> int:
        """All HTTP calls made, retries included."""
        return sum(self.calls.values())


def _first_error(response: requests.Response) -> tuple[str, str]:
    try:
        errors = response.json().get("errors") or [{}]
        return str(errors[0].get("code") or ""), str(errors[0].get("detail") or errors[0].get("title") or "")[:200]
    except (ValueError, AttributeError, IndexError):
        return "", ""


def _refusal(status: int, code: str, text: str) -> RejectedRequest:
    return (NameNotUnique if code == "name-must-be-unique" else RejectedRequest)(status, code or "unknown", text)


def _only_id(document: dict[str, Any]) -> str:
    """The id of the one item a bulk call answered, else the refusal its `errors` name (a 200 "partial success")."""
    data = document.get("data") or [{}]
    if data[0].get("id"):
        return str(data[0]["id"])
    error = (document.get("errors") or [{}])[0]
    # The title, not the detail: a detail may quote what we sent.
    raise _refusal(200, str(error.get("code") or ""), str(error.get("title") or "no item and no error")[:200])


class FoundSegment(NamedTuple):
    """A segment as search lists it (a lookalike with its seed segment's id)."""

    id: str
    name: str
    description: str
    seed: str = ""


class CriteoClient:
    """Talks to one Criteo app (client credentials) within a time budget."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        api_version: str,
        credentials: CriteoCredentials,
        seconds_left: Callable[[], float],
        tokens: TokenCache = TOKENS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.api_url = f"{self.base_url}/{api_version}/marketing-solutions"
        self.credentials = credentials
        self.seconds_left = seconds_left
        self.tokens = tokens
        self.sleep = sleep
        self.stats = CallStats()

    # --- the operations -------------------------------------------------------------------------

    def search_segments(self, kind: str = "ContactList") -> Iterator[FoundSegment]:
        """Yield every segment of one type (`ContactList`, `Lookalike`) of the advertiser, page by page."""
        body = {
            "data": {
                "type": "AudienceSegment",
                "attributes": {"advertiserIds": [self.credentials.advertiser_id], "audienceSegmentTypes": [kind]},
            }
        }
        offset = 0
        while True:
            page = self._call(
                "search",
                "POST",
                "/audience-segments/search",
                params={"limit": SEARCH_PAGE_SIZE, "offset": offset},
                json=body,
            )
            items = page.get("data") or []
            for item in items:
                attributes = item.get("attributes") or {}
                name, description = str(attributes.get("name") or ""), str(attributes.get("description") or "")
                seed = str((attributes.get("lookalike") or {}).get("seedSegmentId") or "")
                yield FoundSegment(str(item["id"]), name, description, seed)
            offset += len(items)
            total = (page.get("meta") or {}).get("totalItems")
            if not items or (isinstance(total, int) and offset >= total):
                return

    def create_contact_list(self, name: str, description: str) -> str:
        """Create a contact-list segment; returns its id."""
        return self._create({"name": name, "description": description, "contactList": {}})

    def create_lookalike(self, name: str, description: str, seed_segment_id: str, target_size: int | None) -> str:
        """Create a lookalike segment seeded from one of our contact lists; returns its id."""
        lookalike: dict[str, Any] = {"seedSegmentId": seed_segment_id}
        if target_size is not None:
            lookalike["targetSize"] = target_size
        return self._create({"name": name, "description": description, "lookalike": lookalike})

    def _create(self, segment: dict[str, Any]) -> str:
        attributes = {"advertiserId": self.credentials.advertiser_id, **segment}
        document = self._call(
            "create",
            "POST",
            "/audience-segments/create",
            json={"data": [{"type": "AudienceSegment", "attributes": attributes}]},
        )
        return _only_id(document)

    def update_segment(self, segment_id: str, name: str | None = None, description: str | None = None) -> None:
        """Rename a segment and/or replace its description (RejectedRequest `name-must-be-unique` if the name
        is another segment's)."""
        attributes: dict[str, Any] = {} if name is None else {"name": name}
        if description is not None:
            attributes["description"] = {"value": description}
        item = {"id": segment_id, "type": "AudienceSegment", "attributes": attributes}
        _only_id(self._call("update", "PATCH", "/audience-segments", json={"data": [item]}))

    def patch_contact_list(
        self,
        segment_id: str,
        operation: str,
        identifier_type: str,
        identifiers: list[str],
        gum_caller_id: int | None = None,
    ) -> dict[str, Any]:
        """Add or remove identifiers (≤50,000, one type; gum needs `gum_caller_id`); returns Criteo's counts."""
        attributes: dict[str, Any] = {
            "operation": operation,
            "identifierType": identifier_type,
            "identifiers": identifiers,
        }
        if identifier_type == "gum":
            if gum_caller_id is None:
                raise ValueError("gum identifiers need gum_caller_id (Criteo's gumCallerId)")
            attributes["gumCallerId"] = gum_caller_id
        document = self._call(
            "patch",
            "PATCH",
            f"/audience-segments/{segment_id}/contact-list",
            json={"data": {"type": "ContactlistAmendment", "attributes": attributes}},
        )
        return dict(document["data"]["attributes"])

    def empty_contact_list(self, segment_id: str) -> None:
        """Remove every member of a contact list (Criteo keeps the segment, its id and its lookalikes)."""
        self._call("delete", "DELETE", f"/audience-segments/{segment_id}/contact-list")

    def statistics(self, segment_id: str) -> dict[str, Any]:
        """A contact list's counts: `numberOfIdentifiers`, `numberOfMatches`, `matchRate` (Criteo needs up
        to 24 h to show them)."""
        document = self._call("statistics", "GET", f"/audience-segments/{segment_id}/contact-list/statistics")
        return dict((document.get("data") or {}).get("attributes") or {})

    # --- transport --------------------------------------------------------------------------------

    def _token(self) -> str:
        token = self.tokens.get(self.credentials.client_id)
        if token:
            return token
        form = {
            "client_id": self.credentials.client_id,
            "client_secret": self.credentials.client_secret,
            "grant_type": "client_credentials",
        }
        response = self._send("token", "POST", f"{self.base_url}/oauth2/token", data=form)
        if response.status_code == 200:
            document = response.json()
            self.tokens.put(
                self.credentials.client_id, document["access_token"], float(document.get("expires_in", 900))
            )
            return str(document["access_token"])
        if response.status_code in (400, 401):
            raise InvalidCredentials(f"Criteo refused the client credentials ({response.status_code})")
        raise _Transient(response)

    def _send(self, kind: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.stats.count(kind)
        try:
            return self.session.request(method, url, timeout=TIMEOUT_SECONDS, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise _Transient(None, type(error).__name__) from None

    def _call(self, kind: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        refreshed = False
        for attempt in range(MAX_ATTEMPTS):
            try:
                headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
                response = self._send(kind, method, self.api_url + path, headers=headers, **kwargs)
                if response.status_code < 300:
                    if "deprecation" in response.headers:
                        logger.warning(
                            "Criteo API version is deprecated", extra={"sunset": response.headers.get("sunset")}
                        )
                    return dict(response.json())
                if response.status_code == 401:
                    code, _ = _first_error(response)
                    if (code in TOKEN_CODES and not refreshed) or code == "authorization-token-expired":
                        self.tokens.drop(self.credentials.client_id)
                        self.stats.token_refreshes += 1
                        if refreshed:
                            # Expired again within one call (a slow call, backoffs): transient, not bad credentials.
                            raise _Transient(response, "token expired again")
                        refreshed = True
                        continue
                    raise InvalidCredentials(f"Criteo answered 401 {code or 'unauthorized'} after a token refresh")
                if response.status_code == 429:
                    self.stats.throttles += 1
                    self._wait_for_reset(response)
                    continue
                if response.status_code >= 500:
                    raise _Transient(response)
                self._raise_permanent(response)
            except _Transient as transient:
                self._back_off(attempt, transient.reason)
        raise RetryLater(f"{kind} still failing after {MAX_ATTEMPTS} attempts")

    def _raise_permanent(self, response: requests.Response) -> None:
        code, detail = _first_error(response)
        if response.status_code == 404 or (response.status_code == 403 and code == "audience-invalid"):
            raise SegmentGone(f"segment not found or not ours ({response.status_code} {code})")
        if response.status_code == 410:
            raise CriteoError(f"Criteo API version is decommissioned (410): {detail}")
        raise _refusal(response.status_code, code, detail)

    def _wait_for_reset(self, response: requests.Response) -> None:
        try:
            wait = float(response.headers["x-ratelimit-reset"]) - time.time()
        except (KeyError, ValueError):
            wait = BACKOFF_CAP_SECONDS
        wait = max(0.0, wait) + random.uniform(0.0, 0.25)
        if wait >= self.seconds_left():
            raise RetryLater(f"rate limited for {wait:.0f}s, more than the time left")
        self.sleep(wait)

    def _back_off(self, attempt: int, reason: str) -> None:
        self.stats.retries += 1
        wait = random.uniform(0.0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
        if attempt + 1 >= MAX_ATTEMPTS or wait >= self.seconds_left():
            raise RetryLater(f"Criteo unavailable ({reason}); the changes are tried again later")
        logger.info("retrying Criteo call", extra={"reason": reason, "attempt": attempt + 1, "wait_s": round(wait, 3)})
        self.sleep(wait)


class _Transient(Exception):
    """A 5xx, a timeout or a dropped connection: back off and try again."""

    def __init__(self, response: requests.Response | None, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason or (f"HTTP {response.status_code}" if response is not None else "error")
