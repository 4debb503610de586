"""A local HTTP gateway: turns requests into API Gateway HTTP API (v2) events for the ingest handler.

Same shape as `sam local start-api`: `POST /segment` → handler; anything else → 404 like API Gateway, except
`GET /__local/health` (who we are: the local stack checks that what answers on the port is this gateway) and
the `GET /__local/...` routes a caller adds (`routes`; `make state` reads the pipeline summary through one).
`on_answer` is told the status, JSON answer and duration of every webhook call (`make serve` prints a line).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

from devtools.http_server import BackgroundServer
from devtools.lambda_runtime import FakeContext

ROUTE = "/segment"
LOCAL_PREFIX = "/__local/"
# API Gateway HTTP APIs refuse payloads over 10 MB before Lambda sees them.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024


def apigw_v2_event(request: Request, body: bytes) -> dict[str, Any]:
    """The event API Gateway would build for this request."""
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        name = key.lower()
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return {
        "version": "2.0",
        "routeKey": f"POST {ROUTE}",
        "rawPath": request.path,
        "rawQueryString": request.query_string.decode(),
        "headers": headers,
        "requestContext": {
            "http": {"method": request.method, "path": request.path, "sourceIp": request.remote_addr or "127.0.0.1"},
            "requestId": str(uuid.uuid4()),
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


Answer = Callable[[int, Any, float], None]


class LocalGateway:
    """Serves the ingest handler on loopback, one invocation at a time (like one warm container)."""

    SERVICE = "segment-criteo-sync local gateway"

    def __init__(
        self, handler: Callable[[dict[str, Any], Any], dict[str, Any]], port: int, host: str = "127.0.0.1"
    ) -> None:
        self.handler = handler
        self._lock = threading.Lock()
        self.routes: dict[str, Callable[[Request], Any]] = {"health": self._health}  # GET /__local/<name> -> JSON
        self.on_answer: Answer | None = None  # (status, decoded answer or None, seconds) after each webhook call
        self.server = BackgroundServer(self._app, port, host)
        self.url = f"http://{host}:{self.server.port}{ROUTE}"
        self.start, self.stop = self.server.start, self.server.stop

    def _health(self, request: Request) -> dict[str, Any]:
        return {"service": self.SERVICE, "pid": os.getpid()}

    def _local(self, request: Request) -> Response:
        route = self.routes.get(request.path.removeprefix(LOCAL_PREFIX))
        if route is None:
            return Response(json.dumps({"message": "Not Found"}), 404, content_type="application/json")
        return Response(json.dumps(route(request)), 200, content_type="application/json")

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method == "GET" and request.path.startswith(LOCAL_PREFIX):
            return self._local(request)(environ, start_response)
        if request.method != "POST" or request.path != ROUTE:
            response = Response(json.dumps({"message": "Not Found"}), 404, content_type="application/json")
            return response(environ, start_response)
        body = request.get_data(cache=False)
        if len(body) > MAX_PAYLOAD_BYTES:
            too_large = {"message": "Request Entity Too Large"}
            if self.on_answer is not None:
                self.on_answer(413, too_large, 0.0)
            return Response(json.dumps(too_large), 413, content_type="application/json")(environ, start_response)
        with self._lock:
            started = time.monotonic()
            result = self.handler(apigw_v2_event(request, body), FakeContext(timeout_seconds=15))
            seconds = time.monotonic() - started
        status = int(result.get("statusCode", 200))
        response = Response(result.get("body", ""), status, headers=result.get("headers") or {})
        if self.on_answer is not None:
            try:
                answer = json.loads(result.get("body") or "null")
            except ValueError:
                answer = None
            self.on_answer(status, answer, seconds)
        return response(environ, start_response)
