"""The Criteo emulator keeps the contract of API_NOTES.md and the official spec (so our tests mean something)."""

from __future__ import annotations

import filecmp
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.criteo_emulator import CriteoEmulator
from devtools.criteo_emulator.spec import SPEC_PATH, operation_schema, problems
from devtools.local_aws import DEV_CRITEO

BASE = "/2026-07/marketing-solutions/audience-segments"
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "criteo" / SPEC_PATH.name


@pytest.fixture
def api(criteo: CriteoEmulator) -> Any:
    token = requests.post(f"{criteo.url}/oauth2/token", data={**_creds(), "grant_type": "client_credentials"}).json()

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        return requests.request(method, f"{criteo.url}/2026-07/marketing-solutions{path}", headers=headers, **kwargs)

    return call


def _creds() -> dict[str, str]:
    return {"client_id": DEV_CRITEO["client_id"], "client_secret": DEV_CRITEO["client_secret"]}


def _create(api: Any, name: str) -> str:
    body = {"data": [{"type": "AudienceSegment", "attributes": {"advertiserId": "12345", "name": name}}]}
    response = api("POST", "/audience-segments/create", json=body)
    assert response.status_code == 200, response.text
    assert problems(operation_schema(BASE + "/create", "post", "200") or "", response.json()) == []
    return str(response.json()["data"][0]["id"])


def _patch(
    api: Any, segment_id: str, identifiers: Any, operation: str = "add", kind: str = "email"
) -> requests.Response:
    attributes = {"operation": operation, "identifierType": kind, "identifiers": identifiers}
    response: requests.Response = api(
        "PATCH",
        f"/audience-segments/{segment_id}/contact-list",
        json={"data": {"type": "ContactlistAmendment", "attributes": attributes}},
    )
    return response


def test_vendored_spec_is_criteos_official_file() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip("shared/ is not beside this clone")
    assert filecmp.cmp(SPEC_PATH, SHARED_SPEC, shallow=False)


def test_token_and_invalid_client(criteo: CriteoEmulator) -> None:
    ok = requests.post(f"{criteo.url}/oauth2/token", data={**_creds(), "grant_type": "client_credentials"})
    assert ok.status_code == 200 and ok.json()["expires_in"] == 900 and ok.json()["token_type"] == "Bearer"
    bad = requests.post(
        f"{criteo.url}/oauth2/token", data={"client_id": "x", "client_secret": "y", "grant_type": "client_credentials"}
    )
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_client")


def test_bearer_missing_and_expired(criteo: CriteoEmulator, api: Any) -> None:
    missing = requests.post(f"{criteo.url}{BASE}/search", json={})
    assert missing.status_code == 401 and missing.json()["errors"][0]["code"] == "authorization-token-invalid"
    criteo.expire_tokens()
    expired = api("POST", "/audience-segments/search", json={})
    assert expired.status_code == 401 and expired.json()["errors"][0]["code"] == "authorization-token-expired"


def test_search_pages_at_most_100(criteo: CriteoEmulator, api: Any) -> None:
    for i in range(120):
        _create(api, f"seg{i}")
    body = {
        "data": {
            "type": "AudienceSegment",
            "attributes": {"advertiserIds": ["12345"], "audienceSegmentTypes": ["ContactList"]},
        }
    }
    first = api("POST", "/audience-segments/search", params={"limit": 100, "offset": 0}, json=body).json()
    second = api("POST", "/audience-segments/search", params={"limit": 100, "offset": 100}, json=body).json()
    assert (len(first["data"]), len(second["data"]), first["meta"]["totalItems"]) == (100, 20, 120)
    assert problems(operation_schema(BASE + "/search", "post", "200") or "", first) == []
    assert api("POST", "/audience-segments/search", params={"limit": 101}, json=body).status_code == 400
    criteo.spec_violations.clear()  # that last call was a deliberate violation


def test_create_unique_names(api: Any) -> None:
    _create(api, "dup")
    body = {"data": [{"type": "AudienceSegment", "attributes": {"advertiserId": "12345", "name": "dup"}}]}
    again = api("POST", "/audience-segments/create", json=body)
    assert again.status_code == 400 and again.json()["errors"][0]["code"] == "name-must-be-unique"


def test_patch_counts_valid_and_invalid_and_applies(criteo: CriteoEmulator, api: Any) -> None:
    segment = _create(api, "s")
    response = _patch(api, segment, ["a@example.com", "f" * 64, "not an email"])
    assert response.status_code == 200
    attributes = response.json()["data"]["attributes"]
    assert (attributes["nbValidIdentifiers"], attributes["nbInvalidIdentifiers"]) == (2, 1)
    assert (
        problems(operation_schema(BASE + "/{audience-segment-id}/contact-list", "patch", "200") or "", response.json())
        == []
    )
    _patch(api, segment, ["a@example.com"], operation="remove")
    assert criteo.segments()["s"]["members"]["email"] == {"f" * 64}


def test_patch_limits_and_errors(criteo: CriteoEmulator, api: Any) -> None:
    segment = _create(api, "s")
    assert _patch(api, segment, [f"{i}@x.io" for i in range(50_001)]).status_code == 400
    assert _patch(api, segment, []).status_code == 400
    assert _patch(api, segment, ["x"], kind="gum").status_code == 400
    assert _patch(api, "424242", ["a@b.co"]).status_code == 404
    foreign = criteo.add_foreign_segment("theirs")
    forbidden = _patch(api, foreign, ["a@b.co"])
    assert forbidden.status_code == 403 and forbidden.json()["errors"][0]["code"] == "audience-invalid"
    assert criteo.spec_violations == []


def test_bodies_the_spec_rejects_are_refused_and_recorded(criteo: CriteoEmulator, api: Any) -> None:
    segment = _create(api, "s")
    assert _patch(api, segment, "a@b.co").status_code == 400
    assert _patch(api, segment, ["a@b.co"], operation="upsert").status_code == 400
    assert len(criteo.spec_violations) == 2
    criteo.spec_violations.clear()


def test_rate_limit_fail_next_and_down(criteo: CriteoEmulator, api: Any) -> None:
    criteo.faults.rate_limit = 2
    statuses = [api("POST", "/audience-segments/search", json={}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = api("POST", "/audience-segments/search", json={})
    assert limited.headers["x-ratelimit-remaining"] == "0" and int(limited.headers["x-ratelimit-reset"]) >= time.time()
    assert "Retry-After" not in limited.headers
    criteo.faults.rate_limit = 0
    criteo.faults.fail_next = [503, 500]
    assert [api("POST", "/audience-segments/search", json={}).status_code for _ in range(3)] == [503, 500, 200]
    criteo.faults.down = True
    assert api("POST", "/audience-segments/search", json={}).status_code == 503


def test_admin_endpoints(criteo: CriteoEmulator, api: Any) -> None:
    _patch(api, _create(api, "s"), ["a@example.com"])
    state = requests.get(f"{criteo.url}/__admin/state").json()
    assert state["segments"]["s"]["members"]["email"] == ["a@example.com"]
    assert requests.post(f"{criteo.url}/__admin/faults", json={"down": True}).status_code == 200
    assert criteo.faults.down
    assert requests.post(f"{criteo.url}/__admin/faults", json={"nope": 1}).status_code == 400
    requests.post(f"{criteo.url}/__admin/reset")
    assert criteo.segments() == {} and not criteo.faults.down
