"""Every answer of the webhook (through the local gateway) matches docs/webhook.openapi.yaml."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from audience_sync.webhook_auth import signature_of
from devtools.gateway import LocalGateway
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.webhook_contract import response_problems
from tests.conftest import Stack
from tests.segment_events import audience_event


@pytest.fixture
def gateway(stack: Stack) -> Iterator[str]:
    server = LocalGateway(stack.ingest.handler, port=0)
    server.start()
    yield server.url
    server.stop()


def _post(url: str, body: bytes, **headers: str) -> requests.Response:
    base = {"Content-Type": "application/json", "X-Signature": signature_of(body, DEV_WEBHOOK_SECRET)}
    return requests.post(url, data=body, headers={**base, **headers}, timeout=30)


CASES = [
    (json.dumps(audience_event("m1", "a", True)).encode(), {}, 200),
    (
        json.dumps(
            [audience_event("m1", "a", True), {"type": "page", "messageId": "p", "timestamp": "2026-01-01T00:00:00Z"}]
        ).encode(),
        {},
        200,
    ),
    (json.dumps([audience_event("m1", "a", True, email=None)]).encode(), {}, 400),
    (b"{nope", {}, 400),
    (b"[]", {}, 400),
    (json.dumps(audience_event("m1", "a", True)).encode(), {"X-Signature": "00"}, 401),
    (json.dumps(audience_event("m1", "a", True)).encode(), {"Content-Type": "text/plain"}, 415),
]


@pytest.mark.parametrize(("body", "headers", "status"), CASES)
def test_answers_match_the_documented_contract(gateway: str, body: bytes, headers: dict[str, str], status: int) -> None:
    response = _post(gateway, body, **headers)
    assert response.status_code == status
    assert response_problems(response.status_code, response.json()) == []


def test_unknown_route_is_a_gateway_404(gateway: str) -> None:
    response = requests.get(gateway.replace("/segment", "/other"), timeout=30)
    assert response.status_code == 404 and response_problems(404, response.json()) == []


def test_contract_checker_catches_a_wrong_shape() -> None:
    assert response_problems(200, {"accepted": 1}) != []
    assert response_problems(401, {"error": {"code": "teapot", "message": "x"}}) != []
    assert response_problems(500, {}) == ["status 500 is not documented"]
