"""A real HTTP server on loopback that behaves like the Criteo endpoints in API_NOTES.md."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response

from devtools.criteo_emulator.faults import Faults
from devtools.criteo_emulator.spec import operation_schema, problems
from devtools.criteo_emulator.state import VALIDATORS, AccountState, Segment
from devtools.http_server import BackgroundServer

MAX_IDENTIFIERS = 50_000
SEARCH_MAX_LIMIT = 100
SPEC_SEGMENTS = "/{version}/marketing-solutions/audience-segments"
_CONTACT_LIST = re.compile(r"/audience-segments/([^/]+)/contact-list(/statistics)?$")


class _Reply(Exception):
    """Short-circuits a request with a status and a JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def problem(status: int, kind: str, code: str, detail: str, path: str = "") -> _Reply:
    """Criteo's error envelope."""
    error = {
        "traceId": uuid.uuid4().hex,
        "type": kind,
        "code": code,
        "instance": path or "/",
        "title": code,
        "detail": detail,
    }
    return _Reply(status, {"errors": [error], "warnings": []})


class CriteoEmulator:
    """Criteo Marketing Solutions API stand-in with fault injection and an inspection endpoint."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "dev-client",
        client_secret: str = "dev-secret",
        advertiser_id: str = "12345",
        api_version: str = "2026-07",
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.advertiser_id, self.api_version = advertiser_id, api_version
        self.state = AccountState()
        self.faults = Faults()
        self.calls: list[tuple[str, str, int]] = []
        self.patch_log: list[dict[str, Any]] = []
        self.spec_violations: list[str] = []
        self._log_lock = threading.Lock()
        self.server = BackgroundServer(self._wsgi, port, host)
        self.url = f"http://{host}:{self.server.port}"

    # --- lifecycle and inspection ---------------------------------------------------------------------

    def start(self) -> None:
        """Serve in a background thread."""
        self.server.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.stop()

    def __enter__(self) -> CriteoEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget segments, tokens, calls and faults."""
        with self._log_lock:
            self.state = AccountState()
            self.faults = Faults()
            self.calls.clear()
            self.patch_log.clear()
            self.spec_violations.clear()

    def expire_tokens(self) -> None:
        """Every issued token answers `authorization-token-expired` from now on."""
        self.state.expire_tokens()

    def count(self, kind: str) -> int:
        """HTTP calls of a kind received so far (token, search, create, patch, delete, statistics)."""
        with self._log_lock:
            return sum(1 for _, k, _ in self.calls if k == kind)

    def segments(self) -> dict[str, dict[str, Any]]:
        """Segment name → id, description and members per identifier type (copies)."""
        with self.state.lock:
            return {
                s.name: {
                    "id": s.id,
                    "description": s.description,
                    "advertiser_id": s.advertiser_id,
                    "members": {k: set(v) for k, v in s.members.items()},
                }
                for s in self.state.segments.values()
            }

    def delete_segment(self, name: str) -> None:
        """Delete a segment behind the client's back (its cached id then answers 404)."""
        with self.state.lock:
            self.state.segments = {k: s for k, s in self.state.segments.items() if s.name != name}

    def add_foreign_segment(self, name: str) -> str:
        """A segment owned by another advertiser (PATCHing it answers 403 audience-invalid)."""
        segment = self.state.create("99999", name, "another advertiser's segment")
        assert segment is not None
        return segment.id

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body: dict[str, Any]
        headers: dict[str, str]
        try:
            status, body, headers = self._dispatch(request)
        except _Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        if not request.path.startswith("/__admin"):
            with self._log_lock:
                self.calls.append((request.method, _kind_of(request), status))
        response = Response(json.dumps(body), status, content_type="application/json")
        for name, value in headers.items():
            response.headers[name] = value
        if self.faults.deprecated and request.path.startswith(f"/{self.api_version}/"):
            response.headers["Deprecation"] = "true"
            response.headers["Sunset"] = "Wed, 01 Sep 2027 00:00:00 GMT"
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> tuple[int, dict[str, Any], dict[str, str]]:
        path = request.path
        if path.startswith("/__admin/"):
            return self._admin(request)
        if path == "/oauth2/token" and request.method == "POST":
            if self.faults.token_errors:
                self._inject()
            return (*self._token(request), {})
        prefix = f"/{self.api_version}/marketing-solutions"
        if not path.startswith(prefix + "/audience-segments"):
            raise problem(404, "validation", "route-not-found", "no such route", path)
        self._authorize(request)
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        limited, headers = self.faults.rate_limited()
        if limited:
            reply = problem(429, "quota", "rate-limited", "too many requests", path)
            reply.headers = headers
            raise reply
        self._inject()
        route = path[len(prefix) :]
        if route == "/audience-segments/search" and request.method == "POST":
            return (200, self._search(request), headers)
        if route == "/audience-segments/create" and request.method == "POST":
            return (200, self._create(request), headers)
        match = _CONTACT_LIST.search(route)
        if match and not match.group(2) and request.method in ("PATCH", "DELETE"):
            segment = self._own_segment(match.group(1), path)
            if request.method == "PATCH":
                return (200, self._patch(request, segment), headers)
            with self.state.lock:
                segment.members.clear()
            data = {"id": segment.id, "type": "ContactlistAmendment"}
            return (200, {"data": data, "errors": [], "warnings": []}, headers)
        if match and match.group(2) and request.method == "GET":
            segment = self._own_segment(match.group(1), path)
            count = sum(len(v) for v in segment.members.values())
            attributes = {"numberOfIdentifiers": count, "numberOfMatches": count, "matchRate": 1.0 if count else 0.0}
            body = {
                "data": {"id": segment.id, "type": "ContactListStatistics", "attributes": attributes},
                "errors": [],
                "warnings": [],
            }
            return (200, body, headers)
        raise problem(404, "validation", "route-not-found", "no such route", path)

    def _inject(self) -> None:
        status = self.faults.injected_status()
        if status is None:
            return
        if status == 429:
            reply = problem(429, "quota", "rate-limited", "too many requests")
            reply.headers = {
                "x-ratelimit-limit": "250",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(int(time.time()) + 2),
            }
            raise reply
        if status == 401:
            raise problem(401, "authorization", "authorization-token-expired", "token expired")
        kind = "validation" if status < 500 else "availability"
        raise problem(status, kind, f"injected-{status}", "injected fault")

    def _token(self, request: Request) -> tuple[int, dict[str, Any]]:
        form = parse_qs(request.get_data(as_text=True))
        values = {k: v[0] for k, v in form.items()}
        if values.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "grant_type must be client_credentials",
            }
        if values.get("client_id") != self.client_id or values.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        token = self.state.issue_token()
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 900, "refresh_token": None}

    def _authorize(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        status = self.state.token_status(header[7:]) if header.startswith("Bearer ") else "invalid"
        if status != "ok":
            raise problem(401, "authorization", f"authorization-token-{status}", f"the token is {status}", request.path)

    def _body(self, request: Request, path_template: str, method: str) -> Any:
        try:
            document = json.loads(request.get_data(as_text=True))
        except ValueError:
            raise problem(400, "validation", "invalid-json", "the body is not JSON", request.path) from None
        schema = operation_schema(path_template.replace("{version}", self.api_version), method)
        found = problems(schema, document) if schema else []
        if found:
            with self._log_lock:
                self.spec_violations.append(f"{method} {request.path}: {'; '.join(found)}")
            raise problem(400, "validation", "invalid-body", "; ".join(found)[:500], request.path)
        return document

    def _search(self, request: Request) -> dict[str, Any]:
        document = self._body(request, SPEC_SEGMENTS + "/search", "post")
        try:
            limit = int(request.args.get("limit", 50))
            offset = int(request.args.get("offset", 0))
        except ValueError:
            raise problem(400, "validation", "invalid-paging", "limit and offset must be integers") from None
        if not 0 <= limit <= SEARCH_MAX_LIMIT or offset < 0:
            with self._log_lock:
                self.spec_violations.append(f"search paging limit={limit} offset={offset}")
            raise problem(400, "validation", "invalid-paging", f"limit must be 0..{SEARCH_MAX_LIMIT}")
        filters = (document.get("data") or {}).get("attributes") or {}
        with self.state.lock:
            found = [
                s
                for s in self.state.segments.values()
                if s.advertiser_id == self.advertiser_id
                and (not filters.get("advertiserIds") or s.advertiser_id in filters["advertiserIds"])
                and (not filters.get("audienceSegmentIds") or s.id in filters["audienceSegmentIds"])
                and (not filters.get("audienceSegmentTypes") or "ContactList" in filters["audienceSegmentTypes"])
            ]
            page = [_resource(s) for s in found[offset : offset + limit]]
        return {
            "data": page,
            "meta": {"totalItems": len(found), "limit": limit, "offset": offset},
            "errors": [],
            "warnings": [],
        }

    def _create(self, request: Request) -> dict[str, Any]:
        document = self._body(request, SPEC_SEGMENTS + "/create", "post")
        created = []
        for item in document.get("data") or []:
            attributes = item.get("attributes") or {}
            if attributes.get("advertiserId") != self.advertiser_id:
                raise problem(403, "access-control", "advertiser-forbidden", "not your advertiser", request.path)
            segment = self.state.create(self.advertiser_id, attributes["name"], attributes.get("description", ""))
            if segment is None:
                raise problem(400, "validation", "name-must-be-unique", "a segment has this name", request.path)
            created.append(_resource(segment))
        return {"data": created, "errors": [], "warnings": []}

    def _own_segment(self, segment_id: str, path: str) -> Segment:
        with self.state.lock:
            segment = self.state.segments.get(segment_id)
        if segment is None:
            raise problem(404, "validation", "audience-not-found", "no such segment", path)
        if segment.advertiser_id != self.advertiser_id:
            raise problem(403, "access-control", "audience-invalid", "the segment belongs to another advertiser", path)
        return segment

    def _patch(self, request: Request, segment: Segment) -> dict[str, Any]:
        document = self._body(request, SPEC_SEGMENTS + "/{audience-segment-id}/contact-list", "patch")
        attributes = document["data"]["attributes"]
        identifiers, kind = attributes["identifiers"], attributes.get("identifierType", "email")
        if not identifiers or len(identifiers) > MAX_IDENTIFIERS:
            raise problem(
                400,
                "validation",
                "invalid-identifiers-count",
                f"identifiers must hold 1..{MAX_IDENTIFIERS} items",
                request.path,
            )
        if kind == "gum" and "gumCallerId" not in attributes:
            raise problem(400, "validation", "missing-gum-caller-id", "gum needs gumCallerId", request.path)
        valid = [i for i in identifiers if VALIDATORS[kind](i)]
        invalid = [i for i in identifiers if not VALIDATORS[kind](i)]
        with self.state.lock:
            members = segment.members.setdefault(kind, set())
            if attributes["operation"] == "add":
                members.update(valid)
            else:
                members.difference_update(valid)
        with self._log_lock:
            self.patch_log.append(
                {
                    "segment_id": segment.id,
                    "operation": attributes["operation"],
                    "identifier_type": kind,
                    "valid": len(valid),
                    "invalid": len(invalid),
                }
            )
        result = {
            "contactListId": int(segment.id),
            "operation": attributes["operation"],
            "identifierType": kind,
            "nbValidIdentifiers": len(valid),
            "nbInvalidIdentifiers": len(invalid),
            "sampleInvalidIdentifiers": invalid[:5],
            "requestDate": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        return {"data": {"type": "ContactlistAmendment", "attributes": result}, "errors": [], "warnings": []}

    def _admin(self, request: Request) -> tuple[int, dict[str, Any], dict[str, str]]:
        action = request.path.removeprefix("/__admin/")
        if action == "state" and request.method == "GET":
            segments = {
                name: {**s, "members": {k: sorted(v) for k, v in s["members"].items()}}
                for name, s in self.segments().items()
            }
            with self._log_lock:
                calls = Counter(kind for _, kind, _ in self.calls)
            return 200, {"segments": segments, "calls": dict(calls), "spec_violations": list(self.spec_violations)}, {}
        if action == "faults" and request.method == "POST":
            try:
                self.faults.update(json.loads(request.get_data(as_text=True) or "{}"))
            except (ValueError, KeyError, AttributeError) as error:
                return 400, {"error": f"bad fault settings: {error}"}, {}
            return 200, {"ok": True}, {}
        if action == "reset" and request.method == "POST":
            self.reset()
            return 200, {"ok": True}, {}
        if action == "expire-tokens" and request.method == "POST":
            self.expire_tokens()
            return 200, {"ok": True}, {}
        return 404, {"error": "unknown admin action"}, {}


def _kind_of(request: Request) -> str:
    path = request.path
    if path == "/oauth2/token":
        return "token"
    for suffix, kind in (("/search", "search"), ("/create", "create"), ("/statistics", "statistics")):
        if path.endswith(suffix):
            return kind
    if path.endswith("/contact-list"):
        return "patch" if request.method == "PATCH" else "delete"
    return "other"


def _resource(segment: Segment) -> dict[str, Any]:
    attributes = {
        "name": segment.name,
        "advertiserId": segment.advertiser_id,
        "type": "ContactList",
        "description": segment.description,
        "createdAt": segment.created_at,
        "updatedAt": segment.created_at,
        "contactList": {"isReadOnly": False},
    }
    return {"id": segment.id, "type": "AudienceSegment", "attributes": attributes}
