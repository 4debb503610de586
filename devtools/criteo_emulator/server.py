"""The emulator's HTTP side: a werkzeug WSGI app on loopback, served from a background thread.

Per API call: route (404/405), read and spec-validate the request (violations are recorded at once), check the
bearer (401), apply faults (503/429/injected), refuse an invalid request (400), then run the endpoint.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from devtools.criteo_emulator import spec
from devtools.criteo_emulator.api import AudienceApi
from devtools.criteo_emulator.errors import Reply, oauth_error, problem
from devtools.criteo_emulator.faults import NOMINAL_RATE_LIMIT, Faults, rate_limit_headers
from devtools.criteo_emulator.state import TOKEN_LIFETIME_S, AccountState

logger = logging.getLogger(__name__)

FOREIGN_ADVERTISER_ID = "99999"
SUNSET = "Sat, 31 Jul 2027 00:00:00 GMT"
_SEGMENTS = "/marketing-solutions/audience-segments"
_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class PatchStall:
    """The `at`-th applied PATCH is applied, then its answer waits for `release()` (or `limit_s`).

    What a crash between Criteo applying a call and the caller hearing back looks like: kill the caller once
    `reached` is set, then release.
    """

    at: int
    limit_s: float = 120.0
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let the held answer go."""
        self.released.set()


@dataclass(frozen=True)
class Operation:
    """An emulated Criteo operation: method, spec path template (without version) and its label in `calls`."""

    method: str
    template: str
    label: str

    @property
    def rule(self) -> str:
        """The werkzeug rule of the versioned path."""
        return "/<version>" + self.template.replace("{audience-segment-id}", "<segment_id>")


OPERATIONS = {
    "search": Operation("POST", f"{_SEGMENTS}/search", "search"),
    "create": Operation("POST", f"{_SEGMENTS}/create", "create"),
    "update": Operation("PATCH", _SEGMENTS, "audience-segments"),
    "patch": Operation("PATCH", f"{_SEGMENTS}/{{audience-segment-id}}/contact-list", "contact-list"),
    "delete": Operation("DELETE", f"{_SEGMENTS}/{{audience-segment-id}}/contact-list", "contact-list"),
    "statistics": Operation("GET", f"{_SEGMENTS}/{{audience-segment-id}}/contact-list/statistics", "statistics"),
}
CALL_KINDS = {"token": ("POST", "token"), **{kind: (op.method, op.label) for kind, op in OPERATIONS.items()}}
_ADMIN = {"state": "GET", "faults": "POST", "reset": "POST", "expire-tokens": "POST"}
_ROUTES = Map(
    [
        Rule("/oauth2/token", methods=["POST"], endpoint="token"),
        *(Rule(op.rule, methods=[op.method], endpoint=kind) for kind, op in OPERATIONS.items()),
        *(Rule(f"/__admin/{name}", methods=[method], endpoint=f"admin:{name}") for name, method in _ADMIN.items()),
    ]
)

Result = tuple[int, dict[str, Any], dict[str, str]]


class _QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler without per-request logging (it halves throughput)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log nothing."""


class CriteoEmulator:
    """Criteo Marketing Solutions API stand-in on loopback, with fault injection and inspection helpers.

    The socket is bound at construction (`port=0` picks a free one), so `url` is known before `start()`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "dev-client",
        client_secret: str = "dev-secret",
        advertiser_id: str = "12345",
        api_version: str = spec.SPEC_VERSION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.advertiser_id, self.api_version = advertiser_id, api_version
        self.state = AccountState(clock)
        self.faults = Faults()
        # client id -> (client secret, the advertisers the app may access)
        self.apps: dict[str, tuple[str, frozenset[str]]] = {client_id: (client_secret, frozenset({advertiser_id}))}
        self.tokens_issued: Counter[str] = Counter()  # client id -> tokens handed out since the last reset
        self.calls: list[tuple[str, str, int]] = []
        self._calls_by_kind: Counter[tuple[str, str]] = Counter()  # (method, label) -> calls: `count` in O(1)
        self.patch_log: list[dict[str, Any]] = []
        self.spec_violations: list[str] = []
        # Identifiers in PATCH requests being answered right now, and the most there were at once since the reset.
        self.identifiers_in_flight = 0
        self.peak_identifiers_in_flight = 0
        self.stall: PatchStall | None = None
        self._log_lock = threading.Lock()
        self._server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietRequestHandler)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self._server.server_port}"
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve from a background (daemon) thread."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="criteo-emulator", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CriteoEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inspection and test helpers ----------------------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        """Unix-seconds clock used for token expiry, rate-limit windows and timestamps (replace to fake time)."""
        return self.state.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.state.clock = value

    def add_app(self, client_id: str, client_secret: str, *advertiser_ids: str) -> None:
        """Another Criteo app (client credentials) with access to these advertisers (kept across resets)."""
        self.apps[client_id] = (client_secret, frozenset(advertiser_ids))

    def reset(self) -> None:
        """Forget segments, tokens, faults, a stall, call counts, the PATCH log and spec violations."""
        self.stall = None
        self.state.clear()
        self.faults.clear()
        with self._log_lock:
            self.tokens_issued.clear()
            self.calls.clear()
            self._calls_by_kind.clear()
            self.patch_log.clear()
            self.spec_violations.clear()
            self.peak_identifiers_in_flight = 0

    def stall_patch(self, at: int) -> PatchStall:
        """Hold the answer to the `at`-th PATCH applied since the last reset."""
        self.stall = PatchStall(at)
        return self.stall

    def expire_tokens(self) -> None:
        """Every issued token answers `authorization-token-expired` from now on (same as `faults.expire_tokens`)."""
        self.faults.expire_tokens()

    def count(self, kind: str) -> int:
        """Calls received of a kind: token, search, create, update, patch, delete or statistics (any status)."""
        if kind not in CALL_KINDS:
            raise ValueError(f"unknown call kind {kind!r}; one of {', '.join(CALL_KINDS)}")
        with self._log_lock:
            return self._calls_by_kind[CALL_KINDS[kind]]

    def segments(self, advertiser_id: str | None = None) -> dict[str, dict[str, Any]]:
        """An advertiser's segments (default: the first app's): name -> id, type, description, members per
        identifier type (copies), and a lookalike's seed and target size."""
        with self.state.lock:
            return {
                s.name: {
                    "id": s.id,
                    "type": s.kind,
                    "description": s.description,
                    "members": {kind: set(values) for kind, values in s.members.items()},
                    **({"seed": s.seed, "target_size": s.target_size} if s.seed else {}),
                }
                for s in self.state.owned_by(advertiser_id or self.advertiser_id)
            }

    def delete_segment(self, name: str) -> bool:
        """Delete one of our segments behind the client's back (a cached id then answers 404)."""
        return self.state.delete(self.advertiser_id, name)

    def add_foreign_segment(self, name: str, advertiser_id: str = FOREIGN_ADVERTISER_ID) -> str:
        """Create a segment of another advertiser (invisible to search; changing it answers 403); its id."""
        segment = self.state.create(advertiser_id, name, "another advertiser's segment")
        if segment is None:
            raise ValueError(f"advertiser {advertiser_id} already has a segment named {name!r}")
        return segment.id

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        endpoint = "unknown"
        try:
            endpoint, args = self._match(environ)
            status, body, headers = self._handle(endpoint, args, request)
        except Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        except Exception:
            logger.exception("Criteo emulator failed on %s %s", request.method, request.path)
            failure = problem(500, "availability", "emulator-error", "the emulator failed: see its log", request.path)
            status, body, headers = failure.status, failure.body, {}
        if not endpoint.startswith("admin:"):
            label = OPERATIONS[endpoint].label if endpoint in OPERATIONS else endpoint
            with self._log_lock:
                self.calls.append((request.method, label, status))
                self._calls_by_kind[(request.method, label)] += 1
        response = Response(json.dumps(body), status, headers, mimetype="application/json")
        if self.faults.deprecated and endpoint in OPERATIONS:
            response.headers["Deprecation"] = "true"
            response.headers["Sunset"] = SUNSET
        return response(environ, start_response)

    def _match(self, environ: WSGIEnvironment) -> tuple[str, dict[str, Any]]:
        """(endpoint, path arguments); a Reply 404/405 for unknown routes and versions."""
        path = environ.get("PATH_INFO") or "/"
        try:
            endpoint, args = _ROUTES.bind_to_environ(environ).match()
        except MethodNotAllowed as error:
            allowed = ", ".join(error.valid_methods or [])
            raise problem(405, "validation", "method-not-allowed", f"allowed: {allowed}", path) from None
        except HTTPException:
            raise problem(404, "validation", "route-not-found", "no such route", path) from None
        if args.get("version", self.api_version) != self.api_version:
            detail = f"API version {args['version']} is not served here (this emulator serves {self.api_version})"
            raise problem(404, "validation", "version-not-found", detail, path)
        return str(endpoint), dict(args)

    def _handle(self, endpoint: str, args: dict[str, Any], request: Request) -> Result:
        if endpoint == "token":
            return self._token(request)
        if endpoint.startswith("admin:"):
            return self._admin(endpoint.removeprefix("admin:"), request)
        operation = OPERATIONS[endpoint]
        body, query, problems = self._read(operation, args, request)
        summary = _summary(problems)
        if summary:
            with self._log_lock:
                self.spec_violations.append(f"{request.method} {request.full_path.rstrip('?')}: {summary}")
        api = self._authorize(request)
        with self._in_flight(_identifiers_in(body) if endpoint == "patch" else 0):
            headers = self._apply_faults(request.path)
            try:
                if summary:
                    raise problem(400, "validation", "invalid-request", summary, request.path)
                return 200, self._perform(api, endpoint, args, body, query, request.path), headers
            except Reply as reply:
                reply.headers = {**headers, **reply.headers}
                raise

    @contextmanager
    def _in_flight(self, identifiers: int) -> Iterator[None]:
        """Count a request's identifiers as in flight while it is answered (its latency included)."""
        with self._log_lock:
            self.identifiers_in_flight += identifiers
            self.peak_identifiers_in_flight = max(self.peak_identifiers_in_flight, self.identifiers_in_flight)
        try:
            yield
        finally:
            with self._log_lock:
                self.identifiers_in_flight -= identifiers

    def _perform(
        self, api: AudienceApi, endpoint: str, args: dict[str, Any], body: Any, query: dict[str, Any], instance: str
    ) -> dict[str, Any]:
        """Run a spec-valid API call on the account, as the calling app."""
        if endpoint == "search":
            return api.search(body, query["limit"], query["offset"], instance)
        if endpoint == "create":
            return api.create(body, instance, self.faults.create_refusals_as_200)
        if endpoint == "update":
            return api.update(body, instance)
        segment_id = str(args["segment_id"])
        if endpoint == "delete":
            return api.empty(segment_id, instance)
        if endpoint == "statistics":
            return api.statistics(segment_id, instance)
        result = api.amend(segment_id, body, instance, self.clock())
        attributes = result["data"]["attributes"]
        with self._log_lock:
            self.patch_log.append(
                {
                    "segment_id": segment_id,
                    "operation": attributes["operation"],
                    "identifier_type": attributes["identifierType"],
                    "valid": attributes["nbValidIdentifiers"],
                    "invalid": attributes["nbInvalidIdentifiers"],
                }
            )
            applied = len(self.patch_log)
        stall = self.stall
        if stall is not None and applied == stall.at:
            stall.reached.set()
            stall.released.wait(stall.limit_s)
        return result

    @staticmethod
    def _read(operation: Operation, args: dict[str, Any], request: Request) -> tuple[Any, dict[str, Any], list[str]]:
        """(JSON body, typed query parameters, every way the request breaks the spec)."""
        template, method = operation.template, operation.method
        query, found = spec.parameters(template, method, "query", request.args)
        if "segment_id" in args:
            found += spec.parameters(template, method, "path", {"audience-segment-id": args["segment_id"]})[1]
        body = None
        if spec.schema_name(template, method):
            if request.mimetype != "application/json":
                found.append(f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}")
            try:
                body = json.loads(request.get_data(), parse_constant=_refuse_constant)
            except ValueError as error:
                found.append(f"the body is not JSON: {error}")
            else:
                found += spec.request_problems(template, method, body)
        return body, query, found

    def _authorize(self, request: Request) -> AudienceApi:
        """The API as the app whose bearer token the request carries sees it (401 without a valid one)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        valid_form = scheme.lower() == "bearer" and token
        status, client_id = (
            self.state.token_status(token.strip(), self.faults.token_epoch) if valid_form else ("invalid", "")
        )
        if status != "ok":
            raise problem(401, "authorization", f"authorization-token-{status}", f"the token is {status}", request.path)
        return AudienceApi(self.state, self.apps[client_id][1])

    def _apply_faults(self, instance: str) -> dict[str, str]:
        """Sleep, then fail the call if a fault says so; the x-ratelimit-* headers for a call that goes on."""
        faults = self.faults
        if faults.latency_s > 0:
            time.sleep(faults.latency_s)
        if faults.down:
            raise problem(503, "availability", "service-unavailable", "Criteo is down (emulated outage)", instance)
        now = self.clock()
        limited, headers = faults.count_call(now)
        if limited:
            raise problem(429, "quota", "rate-limited", "too many requests in this window", instance, headers)
        status = faults.next_failure()
        if status is None:
            return headers
        if status == 429:
            limited_headers = rate_limit_headers(faults.rate_limit or NOMINAL_RATE_LIMIT, 0, math.ceil(now + 1))
            raise problem(429, "quota", "rate-limited", "injected", instance, limited_headers)
        if status == 401:
            raise problem(401, "authorization", "authorization-token-expired", "injected", instance, headers)
        kind = "availability" if status >= 500 else "access-control" if status == 403 else "validation"
        raise problem(status, kind, _code(status), "injected fault", instance, headers)

    def _token(self, request: Request) -> Result:
        headers = self._apply_faults(request.path) if self.faults.token_errors else {}
        form = request.form
        missing = [name for name in ("client_id", "client_secret", "grant_type") if not form.get(name)]
        if missing:
            raise oauth_error(400, "invalid_request", f"missing form field(s): {', '.join(missing)}")
        if form["grant_type"] != "client_credentials":
            raise oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        app = self.apps.get(form["client_id"])
        if app is None or form["client_secret"] != app[0]:
            raise oauth_error(401, "invalid_client", "unknown client_id or wrong client_secret")
        token = self.state.issue_token(self.faults.token_epoch, form["client_id"])
        with self._log_lock:
            self.tokens_issued[form["client_id"]] += 1
        body = {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S, "refresh_token": None}
        return 200, body, headers

    def _admin(self, action: str, request: Request) -> Result:
        """Inspection and control endpoints (no auth, never faulted, not counted in `calls`)."""
        if action == "faults":
            try:
                settings = json.loads(request.get_data() or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("send a JSON object of fault settings")
                self.faults.update(settings)
            except ValueError as error:
                raise problem(400, "validation", "invalid-fault-settings", str(error), request.path) from None
            return 200, {"faults": self.faults.settings()}, {}
        if action == "reset":
            self.reset()
        elif action == "expire-tokens":
            self.expire_tokens()
        return 200, self._snapshot(), {}

    def _snapshot(self) -> dict[str, Any]:
        """Segments (members as sorted lists), call counts, spec violations and fault settings."""
        segments = {
            name: {**segment, "members": {kind: sorted(values) for kind, values in segment["members"].items()}}
            for name, segment in self.segments().items()
        }
        calls = {kind: self.count(kind) for kind in CALL_KINDS}
        with self._log_lock:
            violations = list(self.spec_violations)
        return {"segments": segments, "calls": calls, "spec_violations": violations, "faults": self.faults.settings()}


def _summary(problems: list[str]) -> str:
    """The first few problems in one line ('' when there are none)."""
    more = len(problems) - _LISTED_PROBLEMS
    return "; ".join(problems[:_LISTED_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def _code(status: int) -> str:
    """kebab-case reason phrase, e.g. 503 -> service-unavailable."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-")
    except ValueError:
        return f"http-{status}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _identifiers_in(body: Any) -> int:
    """How many identifiers a contact-list PATCH body carries (0 when it is not the spec's shape)."""
    try:
        return len(body["data"]["attributes"]["identifiers"])
    except (KeyError, TypeError):
        return 0
