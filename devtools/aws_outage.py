"""A loopback proxy in front of moto that can take one AWS service down (503) while the others keep working.

Point a handler's AWS_ENDPOINT_URL at `proxy.url`; `proxy.down = {"secretsmanager"}` (service names as in
the SigV4 credential scope: sqs, secretsmanager, dynamodb) makes that service answer 503
ServiceUnavailable until it is removed from the set; `proxy.allowed = {"sqs": 1}` lets one more call
through, then takes the service down (an outage in the middle of a request); `proxy.hung = {"sqs"}` makes that
service accept calls and never answer them (until `release()` or the proxy stops): a hung dependency.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import requests
from werkzeug.wrappers import Request, Response

from devtools.http_server import BackgroundServer

_HOP_HEADERS = {"content-length", "transfer-encoding", "content-encoding", "connection"}
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")


class AwsOutageProxy:
    """Forwards every request to `upstream` unless its service is in `down`; counts refused calls."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.down: set[str] = set()
        self.allowed: dict[str, int] = {}  # service -> calls still let through before it goes down
        self.refused: dict[str, int] = {}
        self.hung: set[str] = set()
        self._released = threading.Event()
        self._session = requests.Session()
        self.server = BackgroundServer(self._app, port)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.start = self.server.start

    def release(self) -> None:
        """Let every call held by `hung` finish (with a 503)."""
        self._released.set()

    def stop(self) -> None:
        """Release held calls, then stop the server."""
        self.release()
        self.server.stop()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        scope = _SCOPE.search(request.headers.get("Authorization", ""))
        service = scope.group(1) if scope else ""
        if service in self.allowed:
            self.allowed[service] -= 1
            if self.allowed[service] < 0:
                del self.allowed[service]
                self.down.add(service)
        if service in self.hung:
            self._released.wait(timeout=120)  # a bound for a forgotten proxy, not part of any test's logic
            self.down.add(service)
        if service in self.down:
            self.refused[service] = self.refused.get(service, 0) + 1
            body = {"__type": "ServiceUnavailable", "message": f"{service} is down (emulated outage)"}
            return Response(json.dumps(body), 503, content_type="application/x-amz-json-1.0")(environ, start_response)
        upstream = self._session.request(
            request.method,
            self.upstream + request.full_path.rstrip("?"),
            headers={k: v for k, v in request.headers.items() if k.lower() != "content-length"},
            data=request.get_data(),
            timeout=60,
        )
        headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS]
        return Response(upstream.content, upstream.status_code, headers)(environ, start_response)
