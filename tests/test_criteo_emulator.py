"""The Criteo emulator keeps the contract of API_NOTES.md and the official spec (so tests against it mean something)."""

from __future__ import annotations

import filecmp
import hashlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.criteo_emulator import CriteoEmulator
from devtools.criteo_emulator.identifiers import is_valid
from devtools.criteo_emulator.spec import SPEC_PATH, problems, response_problems

ADVERTISER = "12345"
CREDS = {"client_id": "test-client", "client_secret": "test-secret", "grant_type": "client_credentials"}
SEGMENTS = "/marketing-solutions/audience-segments"
CONTACT_LIST = SEGMENTS + "/{audience-segment-id}/contact-list"
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "criteo" / SPEC_PATH.name
SHA = hashlib.sha256(b"a@example.com").hexdigest()
MD5 = hashlib.md5(b"a@example.com").hexdigest()  # noqa: S324 - Criteo accepts MD5 emails
MADID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
# Criteo's worked examples of hashed phone numbers (help centre, "Pass phone numbers"): as written -> SHA-256 hex.
PHONE_EXAMPLES = {
    "+33 1 40 40 22 90": "fda66831d0cb0eb4bffb21bc795308d69921c211c57be0ae15702071e3b9e988",
    "1 (234) 567-8910": "63640264849a87c90356129d99ea165e37aa5fabc1fea46906df1a7ca50db492",
    "81-12-3456-7891": "d9825fb05347d3c910fc5202c0c20d07a87b791cc643c6f2d70402394a849540",
}

Api = Callable[..., requests.Response]


@pytest.fixture
def emu() -> Iterator[CriteoEmulator]:
    with CriteoEmulator(
        client_id=CREDS["client_id"], client_secret=CREDS["client_secret"], advertiser_id=ADVERTISER
    ) as emulator:
        yield emulator


@pytest.fixture
def api(emu: CriteoEmulator) -> Api:
    """Authorized calls to `{url}/2026-07{path}` through one session."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token(emu)}"

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        return session.request(method, f"{emu.url}/2026-07{path}", **kwargs)

    return call


def token(emu: CriteoEmulator) -> str:
    response = requests.post(f"{emu.url}/oauth2/token", data=CREDS)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def error_code(response: requests.Response) -> str:
    return str(response.json()["errors"][0]["code"])


def search(api: Api, **params: Any) -> requests.Response:
    body = {"data": {"type": "AudienceSegment", "attributes": {"advertiserIds": [ADVERTISER]}}}
    return api("POST", f"{SEGMENTS}/search", params=params, json=body)


def create(api: Api, *names: str, advertiser_id: str = ADVERTISER) -> requests.Response:
    items = [
        {
            "type": "AudienceSegment",
            "attributes": {"advertiserId": advertiser_id, "name": n, "description": "d", "contactList": {}},
        }
        for n in names
    ]
    return api("POST", f"{SEGMENTS}/create", json={"data": items})


def update(api: Api, segment_id: str, **attributes: Any) -> requests.Response:
    item = {"id": segment_id, "type": "AudienceSegment", "attributes": attributes}
    return api("PATCH", SEGMENTS, json={"data": [item]})


def error_item_problems(response: requests.Response) -> list[str]:
    """How the first error breaks the spec's AudienceError (the error item of contact-list responses)."""
    return problems("AudienceError", response.json()["errors"][0], "response")


def new_segment(api: Api, name: str = "s") -> str:
    response = create(api, name)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["id"])


def patch(
    api: Api, segment_id: str, identifiers: Any, operation: str = "add", kind: str = "email", **extra: Any
) -> requests.Response:
    attributes = {"operation": operation, "identifierType": kind, "identifiers": identifiers, **extra}
    body = {"data": {"type": "ContactlistAmendment", "attributes": attributes}}
    return api("PATCH", CONTACT_LIST.replace("{audience-segment-id}", segment_id), json=body)


def test_vendored_spec_is_criteos_official_file() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip("shared/ is not beside this clone")
    assert filecmp.cmp(SPEC_PATH, SHARED_SPEC, shallow=False)


def test_each_app_sees_only_its_advertisers(emu: CriteoEmulator) -> None:
    emu.add_app("eu-app", "eu-secret", "777", "778")
    eu_token = requests.post(
        f"{emu.url}/oauth2/token", data={**CREDS, "client_id": "eu-app", "client_secret": "eu-secret"}
    ).json()["access_token"]
    eu = requests.Session()
    eu.headers["Authorization"] = f"Bearer {eu_token}"

    def eu_api(method: str, path: str, **kwargs: Any) -> requests.Response:
        return eu.request(method, f"{emu.url}/2026-07{path}", **kwargs)

    made = create(eu_api, "eu list", advertiser_id="777")
    assert made.status_code == 200, made.text
    eu_id = str(made.json()["data"][0]["id"])
    assert create(eu_api, "other list", advertiser_id="778").status_code == 200
    refused = create(eu_api, "not mine", advertiser_id=ADVERTISER)
    assert (refused.status_code, error_code(refused)) == (403, "advertiser-not-accessible")
    # The first app does not see or change the second app's segments, and the other way round.
    first = requests.Session()
    first.headers["Authorization"] = f"Bearer {token(emu)}"
    body = {"data": {"type": "AudienceSegment", "attributes": {}}}
    assert first.post(f"{emu.url}/2026-07{SEGMENTS}/search", json=body).json()["data"] == []
    foreign = patch(
        lambda method, path, **kwargs: first.request(method, f"{emu.url}/2026-07{path}", **kwargs), eu_id, [SHA]
    )
    assert (foreign.status_code, error_code(foreign)) == (403, "audience-invalid")
    assert patch(eu_api, eu_id, [SHA]).status_code == 200
    assert emu.segments("777")["eu list"]["members"]["email"] == {SHA}
    assert set(emu.segments("778")) == {"other list"} and emu.segments() == {}
    assert emu.tokens_issued == {"eu-app": 1, CREDS["client_id"]: 1}


def test_token_endpoint(emu: CriteoEmulator) -> None:
    ok = requests.post(f"{emu.url}/oauth2/token", data=CREDS)
    assert ok.status_code == 200
    assert {**ok.json(), "access_token": "-"} == {
        "access_token": "-",
        "token_type": "Bearer",
        "expires_in": 900,
        "refresh_token": None,
    }
    bad_secret = requests.post(f"{emu.url}/oauth2/token", data={**CREDS, "client_secret": "nope"})
    assert (bad_secret.status_code, bad_secret.json()["error"]) == (401, "invalid_client")
    assert bad_secret.json()["error_description"]
    grant = requests.post(f"{emu.url}/oauth2/token", data={**CREDS, "grant_type": "password"})
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")
    missing = requests.post(f"{emu.url}/oauth2/token", data={"client_id": "test-client"})
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    assert emu.count("token") == 4


def test_bearer_missing_unknown_and_expired(emu: CriteoEmulator, api: Api) -> None:
    url = f"{emu.url}/2026-07{SEGMENTS}/search"
    missing = requests.post(url, json={})
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["type"] == "authorization"
    assert error_code(missing) == "authorization-token-invalid"
    unknown = requests.post(url, json={}, headers={"Authorization": "Bearer made-up"})
    assert error_code(unknown) == "authorization-token-invalid"
    assert search(api).status_code == 200
    now = time.time()
    emu.clock = lambda: now + 901  # 15 minutes later
    expired = search(api)
    assert (expired.status_code, error_code(expired)) == (401, "authorization-token-expired")
    emu.clock = time.time
    assert search(api).status_code == 200
    emu.faults.expire_tokens()
    assert error_code(search(api)) == "authorization-token-expired"
    fresh = {"Authorization": f"Bearer {token(emu)}"}
    assert requests.post(url, json={}, headers=fresh).status_code == 200
    assert requests.post(f"{emu.url}/__admin/expire-tokens").status_code == 200
    assert error_code(requests.post(url, json={}, headers=fresh)) == "authorization-token-expired"


def test_unknown_routes_versions_and_methods_get_an_envelope(emu: CriteoEmulator, api: Api) -> None:
    for response in (
        requests.get(f"{emu.url}/nowhere"),
        requests.post(f"{emu.url}/2027-01{SEGMENTS}/search", json={}),
        api("POST", f"{SEGMENTS}/search/"),
    ):
        assert response.status_code == 404 and response.json()["errors"][0]["code"], response.text
        assert response.headers["Content-Type"] == "application/json"
    wrong_method = api("GET", f"{SEGMENTS}/search")
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "method-not-allowed")
    assert emu.spec_violations == []


def test_search_pages_filters_and_answers_per_spec(emu: CriteoEmulator, api: Api) -> None:
    for i in range(120):
        emu.state.create(ADVERTISER, f"seg{i:03}", None)
    emu.add_foreign_segment("theirs")
    first, second = search(api, limit=100, offset=0).json(), search(api, limit=100, offset=100).json()
    assert (len(first["data"]), len(second["data"])) == (100, 20)
    assert first["meta"] == {"totalItems": 120, "limit": 100, "offset": 0}
    assert [s["attributes"]["name"] for s in first["data"] + second["data"]] == [f"seg{i:03}" for i in range(120)]
    assert response_problems(f"{SEGMENTS}/search", "post", 200, first) == []
    assert first["data"][0]["attributes"]["description"] is None
    assert first["data"][0]["attributes"]["type"] == "ContactList" and first["data"][0]["id"].isdigit()
    assert search(api).json()["meta"]["limit"] == 50
    wanted = [first["data"][3]["id"], second["data"][0]["id"]]
    by_ids = api("POST", f"{SEGMENTS}/search", json={"data": {"attributes": {"audienceSegmentIds": wanted}}}).json()
    assert [s["id"] for s in by_ids["data"]] == wanted
    other_type = {"data": {"attributes": {"audienceSegmentTypes": ["Lookalike"]}}}
    assert api("POST", f"{SEGMENTS}/search", json=other_type).json()["meta"]["totalItems"] == 0
    assert emu.spec_violations == []
    too_many = search(api, limit=101)
    assert (too_many.status_code, too_many.json()["errors"][0]["type"]) == (400, "validation")
    assert search(api, limit="ten").status_code == 400
    assert len(emu.spec_violations) == 2 and "limit" in emu.spec_violations[0]


def test_create_answers_ids_and_refuses_duplicates_and_other_advertisers(emu: CriteoEmulator, api: Api) -> None:
    first = create(api, "dup")
    assert first.status_code == 200
    assert response_problems(f"{SEGMENTS}/create", "post", 200, first.json()) == []
    assert first.json()["data"][0]["id"] == "100001" and create(api, "other").json()["data"][0]["id"] == "100002"
    again = create(api, "dup")
    assert again.status_code == 400
    assert (again.json()["errors"][0]["type"], error_code(again)) == ("validation", "name-must-be-unique")
    assert create(api, "x", advertiser_id="777").status_code == 403
    assert (create(api, "y", "y").status_code, emu.segments().get("y")) == (400, None)
    not_a_contact_list = {"data": [{"attributes": {"advertiserId": ADVERTISER, "name": "y"}}]}
    assert api("POST", f"{SEGMENTS}/create", json=not_a_contact_list).status_code == 400
    assert sorted(emu.segments()) == ["dup", "other"] and emu.segments()["dup"]["description"] == "d"
    assert emu.spec_violations == []


def test_patch_counts_valid_and_invalid_and_applies_valid_ones(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    emails = ["a@example.com", SHA, MD5, SHA.upper(), " b@example.com", "B@example.com", "not an email", "x@y"]
    added = patch(api, segment, emails)
    assert added.status_code == 200
    assert response_problems(CONTACT_LIST, "patch", 200, added.json()) == []
    attributes = added.json()["data"]["attributes"]
    assert attributes["contactListId"] == int(segment)
    assert (attributes["operation"], attributes["identifierType"]) == ("add", "email")
    assert (attributes["nbValidIdentifiers"], attributes["nbInvalidIdentifiers"]) == (3, 5)
    assert attributes["sampleInvalidIdentifiers"] == emails[3:]
    patch(api, segment, [MADID, "not-a-uuid"], kind="madid")
    patch(api, segment, ["a@example.com"], operation="remove")
    members = emu.segments()["s"]["members"]
    assert (members["email"], members["madid"]) == ({SHA, MD5}, {MADID})
    assert emu.count("patch") == 3 and emu.patch_log[-1]["operation"] == "remove"
    assert emu.spec_violations == []


@pytest.mark.parametrize(
    ("kind", "valid", "invalid"),
    [
        ("email", ["a.b+c@mail.example.co", SHA, MD5], ["A@example.com", "a@example", "a @example.com", SHA[:-1]]),
        ("madid", [MADID, MADID.upper()], ["6d92078a82464ba4ae5b76104861e7dc", ""]),
        (
            "phoneNumber",
            ["+33612345678", "+12345678", "+123456789012345", SHA],
            ["0612345678", "+1234567", "+1234567890123456", "+0612345678", "33612345678", "+33 612345678", SHA.upper()],
        ),
        ("identityLink", ["XY1000abc"], ["", "with space"]),
        ("gum", ["123456789", "opaque-GUM_id.1"], ["", "a b"]),
    ],
)
def test_identifier_validity(kind: str, valid: list[str], invalid: list[str]) -> None:
    assert [is_valid(kind, v) for v in valid] == [True] * len(valid)
    assert [is_valid(kind, v) for v in invalid] == [False] * len(invalid)


def test_phone_numbers_in_criteos_documented_forms(emu: CriteoEmulator, api: Api) -> None:
    digits = {written: "".join(c for c in written if c.isdigit()) for written in PHONE_EXAMPLES}
    assert {w: hashlib.sha256(d.encode()).hexdigest() for w, d in digits.items()} == PHONE_EXAMPLES
    segment = new_segment(api)
    valid = [*PHONE_EXAMPLES.values(), *(f"+{d}" for d in digits.values())]
    invalid = [*PHONE_EXAMPLES, *digits.values(), "0140402290", PHONE_EXAMPLES["81-12-3456-7891"].upper()]
    attributes = patch(api, segment, valid + invalid, kind="phoneNumber").json()["data"]["attributes"]
    assert (attributes["nbValidIdentifiers"], attributes["nbInvalidIdentifiers"]) == (6, 8)
    state = requests.get(f"{emu.url}/__admin/state").json()
    assert state["segments"]["s"]["members"]["phoneNumber"] == sorted(valid)
    assert PHONE_EXAMPLES["+33 1 40 40 22 90"] in emu.segments()["s"]["members"]["phoneNumber"]
    patch(api, segment, [PHONE_EXAMPLES["+33 1 40 40 22 90"]], operation="remove", kind="phoneNumber")
    assert PHONE_EXAMPLES["+33 1 40 40 22 90"] not in emu.segments()["s"]["members"]["phoneNumber"]
    assert emu.spec_violations == []


def test_gum_caller_id_is_required_with_gum_and_refused_otherwise(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    missing = patch(api, segment, ["123"], kind="gum")
    unexpected = patch(api, segment, ["a@example.com"], gumCallerId=42)
    for response, code in ((missing, "missing-gum-caller-id"), (unexpected, "unexpected-gum-caller-id")):
        assert (response.status_code, error_code(response)) == (400, code)
        assert response.json()["errors"][0]["type"] == "validation" and error_item_problems(response) == []
    gum = patch(api, segment, ["123", "opaque-GUM_id.1", "a b"], kind="gum", gumCallerId=42)
    assert response_problems(CONTACT_LIST, "patch", 200, gum.json()) == []
    assert (gum.json()["data"]["attributes"]["nbValidIdentifiers"], emu.segments()["s"]["members"]["email"]) == (
        2,
        set(),
    )
    assert emu.segments()["s"]["members"]["gum"] == {"123", "opaque-GUM_id.1"}
    assert emu.spec_violations == []


def test_create_refusals_as_a_200_partial_success(emu: CriteoEmulator, api: Api) -> None:
    new_segment(api, "dup")
    changed = requests.post(f"{emu.url}/__admin/faults", json={"create_refusals_as_200": True})
    assert changed.json()["faults"]["create_refusals_as_200"] is True
    partial = create(api, "dup", "fresh")
    assert partial.status_code == 200
    assert response_problems(f"{SEGMENTS}/create", "post", 200, partial.json()) == []
    assert [s["attributes"]["name"] for s in partial.json()["data"]] == ["fresh"]
    assert [(e["type"], e["code"]) for e in partial.json()["errors"]] == [("validation", "name-must-be-unique")]
    foreign = create(api, "x", advertiser_id="777")
    assert (foreign.status_code, foreign.json()["data"], error_code(foreign)) == (200, [], "advertiser-not-accessible")
    assert response_problems(f"{SEGMENTS}/create", "post", 200, foreign.json()) == []
    assert sorted(emu.segments()) == ["dup", "fresh"] and emu.spec_violations == []
    emu.faults.clear()
    assert create(api, "dup").status_code == 400


def test_update_sets_descriptions_and_reports_refused_items_per_spec(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    updated = update(api, segment, description={"value": "mine"})
    assert updated.status_code == 200
    assert response_problems(SEGMENTS, "patch", 200, updated.json()) == []
    assert [(s["id"], s["attributes"]["description"]) for s in updated.json()["data"]] == [(segment, "mine")]
    assert search(api).json()["data"][0]["attributes"]["description"] == "mine"
    assert update(api, segment).status_code == 200 and emu.segments()["s"]["description"] == "mine"
    assert update(api, segment, description={}).json()["data"][0]["attributes"]["description"] is None
    for segment_id, code in (("424242", "audience-not-found"), (emu.add_foreign_segment("theirs"), "audience-invalid")):
        refused = update(api, segment_id, description={"value": "x"})
        assert (refused.status_code, refused.json()["data"], error_code(refused)) == (200, [], code)
        assert response_problems(SEGMENTS, "patch", 200, refused.json()) == []
    unsupported = update(api, segment, prospecting={}, description={"value": "x"})
    assert (unsupported.status_code, emu.segments()["s"]["description"]) == (400, None)
    assert emu.count("update") == 6 and emu.spec_violations == []


def test_patch_business_rules(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    too_many = patch(api, segment, [f"{i}@x.io" for i in range(50_001)])
    assert (too_many.status_code, too_many.json()["errors"][0]["type"]) == (400, "validation")
    assert patch(api, segment, []).status_code == 400
    assert patch(api, segment, ["123"], kind="gum").status_code == 400
    assert patch(api, segment, ["123"], kind="gum", gumCallerId=42).status_code == 200
    at_the_limit = patch(api, segment, [f"{i}@x.io" for i in range(50_000)])
    assert at_the_limit.json()["data"]["attributes"]["nbValidIdentifiers"] == 50_000
    assert emu.spec_violations == []


def test_patch_unknown_and_foreign_segments(emu: CriteoEmulator, api: Api) -> None:
    missing = patch(api, "424242", ["a@b.co"])
    assert (missing.status_code, error_code(missing)) == (404, "audience-not-found")
    foreign = emu.add_foreign_segment("theirs")
    forbidden = patch(api, foreign, ["a@b.co"])
    assert (forbidden.status_code, error_code(forbidden)) == (403, "audience-invalid")
    segment = new_segment(api, "gone")
    assert emu.delete_segment("gone")
    assert patch(api, segment, ["a@b.co"]).status_code == 404
    assert emu.spec_violations == []
    assert patch(api, "None", ["a@b.co"]).status_code == 400  # the path id must be an int32
    assert len(emu.spec_violations) == 1


def test_bodies_the_spec_rejects_are_refused_and_recorded(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    as_string = patch(api, segment, "a@b.co")
    assert (as_string.status_code, as_string.json()["errors"][0]["type"]) == (400, "validation")
    assert "identifiers" in as_string.json()["errors"][0]["detail"]
    assert patch(api, segment, ["a@b.co"], operation="upsert").status_code == 400
    assert patch(api, segment, ["a@b.co"], gumCallerId="42").status_code == 400
    malformed = api(
        "PATCH", f"{SEGMENTS}/{segment}/contact-list", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    not_json = api("PATCH", f"{SEGMENTS}/{segment}/contact-list", data="operation=add")
    assert not_json.status_code == 400
    assert len(emu.spec_violations) == 5
    assert "upsert" in emu.spec_violations[1] and "not JSON" in emu.spec_violations[3]
    assert emu.segments()["s"]["members"]["email"] == set()


def test_delete_and_statistics_answer_per_spec(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    patch(api, segment, ["a@example.com", SHA])
    path = CONTACT_LIST.replace("{audience-segment-id}", segment)
    stats = api("GET", f"{path}/statistics")
    assert stats.status_code == 200 and stats.json()["data"]["attributes"]["numberOfIdentifiers"] == 2
    assert response_problems(f"{CONTACT_LIST}/statistics", "get", 200, stats.json()) == []
    deleted = api("DELETE", path)
    assert deleted.status_code == 200 and deleted.json()["data"]["id"] == segment
    assert response_problems(CONTACT_LIST, "delete", 200, deleted.json()) == []
    assert emu.segments()["s"]["members"]["email"] == set()
    assert (emu.count("delete"), emu.count("statistics")) == (1, 1)
    assert emu.spec_violations == []


def test_rate_limit_answers_429_with_reset_headers(emu: CriteoEmulator, api: Api) -> None:
    now = time.time()
    emu.clock = lambda: now
    emu.faults.rate_limit = 2
    first, second, third = search(api), search(api), search(api)
    assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
    assert third.headers["x-ratelimit-remaining"] == "0"
    assert int(third.headers["x-ratelimit-reset"]) == math.ceil(now + 60)
    assert "Retry-After" not in third.headers
    assert (third.json()["errors"][0]["type"], error_code(third)) == ("quota", "rate-limited")
    emu.clock = lambda: now + 60  # the window resets
    assert search(api).status_code == 200


def test_fail_next_and_seeded_error_rate(emu: CriteoEmulator, api: Api) -> None:
    segment = new_segment(api)
    emu.faults.fail_next = [503, 429, 500]
    responses = [patch(api, segment, ["a@example.com"]) for _ in range(4)]
    assert [r.status_code for r in responses] == [503, 429, 500, 200]
    assert responses[0].json()["errors"][0]["type"] == "availability"
    reset = int(responses[1].headers["x-ratelimit-reset"])
    assert responses[1].headers["x-ratelimit-remaining"] == "0" and 1 <= reset - time.time() <= 2.1
    assert [e["valid"] for e in emu.patch_log] == [1]  # failed calls applied nothing

    def statuses() -> list[int]:
        emu.faults.update({"error_rate": 0.5, "error_status": 500, "seed": 7})
        found = [search(api).status_code for _ in range(12)]
        emu.faults.clear()
        return found

    run = statuses()
    assert set(run) == {200, 500} and statuses() == run


def test_down_latency_deprecation_and_token_faults(emu: CriteoEmulator, api: Api) -> None:
    emu.faults.down = True
    outage = search(api)
    assert (outage.status_code, outage.json()["errors"][0]["type"]) == (503, "availability")
    assert requests.post(f"{emu.url}/oauth2/token", data=CREDS).status_code == 200
    emu.faults.token_errors = True
    assert requests.post(f"{emu.url}/oauth2/token", data=CREDS).status_code == 503
    emu.faults.update({"down": False, "latency_s": 0.2, "deprecated": True})
    started = time.monotonic()
    slow = search(api)
    assert slow.status_code == 200 and time.monotonic() - started >= 0.2
    assert slow.headers["Deprecation"] and slow.headers["Sunset"]


def test_update_renames_a_segment_unless_another_has_the_name(emu: CriteoEmulator, api: Api) -> None:
    first, second = new_segment(api, "first"), new_segment(api, "second")
    renamed = update(api, first, name="renamed")
    assert renamed.status_code == 200 and renamed.json()["data"][0]["attributes"]["name"] == "renamed"
    taken = update(api, second, name="renamed")
    assert taken.status_code == 200 and taken.json()["data"] == []
    assert taken.json()["errors"][0]["code"] == "name-must-be-unique"
    assert set(emu.segments()) == {"renamed", "second"}


def test_lookalikes_are_created_from_our_contact_lists_and_searched_by_type(emu: CriteoEmulator, api: Api) -> None:
    seed = new_segment(api, "seed")
    body = {
        "advertiserId": ADVERTISER,
        "name": "seed (lookalike)",
        "lookalike": {"seedSegmentId": seed, "targetSize": 9},
    }
    created = api("POST", SEGMENTS + "/create", json={"data": [{"type": "AudienceSegment", "attributes": body}]})
    assert created.status_code == 200 and response_problems(SEGMENTS + "/create", "post", 200, created.json()) == []
    lookalike = created.json()["data"][0]
    assert lookalike["attributes"]["lookalike"] == {"seedSegmentId": seed, "targetSize": 9}
    assert lookalike["attributes"]["type"] == "Lookalike"
    for kind, expected in (("Lookalike", lookalike["id"]), ("ContactList", seed)):
        filters = {"advertiserIds": [ADVERTISER], "audienceSegmentTypes": [kind]}
        found = api("POST", f"{SEGMENTS}/search", json={"data": {"type": "AudienceSegment", "attributes": filters}})
        assert [s["id"] for s in found.json()["data"]] == [expected]
    assert emu.segments()["seed (lookalike)"]["seed"] == seed
    for bad_seed in (lookalike["id"], emu.add_foreign_segment("theirs"), "424242"):
        body = {"advertiserId": ADVERTISER, "name": f"of {bad_seed}", "lookalike": {"seedSegmentId": bad_seed}}
        refused = api("POST", SEGMENTS + "/create", json={"data": [{"type": "AudienceSegment", "attributes": body}]})
        assert (refused.status_code, error_code(refused)) == (400, "invalid-seed-segment")
    assert emu.spec_violations == []


def test_a_stalled_patch_is_applied_before_its_answer_is_released(emu: CriteoEmulator, api: Api) -> None:
    segment_id = new_segment(api)
    assert patch(api, segment_id, [SHA]).status_code == 200
    stall = emu.stall_patch(2)
    answers: list[requests.Response] = []
    caller = threading.Thread(target=lambda: answers.append(patch(api, segment_id, [MD5])))
    caller.start()
    assert stall.reached.wait(10)
    time.sleep(0.1)
    assert not answers and sorted(emu.segments()["s"]["members"]["email"]) == sorted([SHA, MD5])  # applied, held
    stall.release()
    caller.join(10)
    assert [a.status_code for a in answers] == [200]
    assert patch(api, segment_id, [SHA], operation="remove").status_code == 200  # one stall only


def test_admin_endpoints(emu: CriteoEmulator, api: Api) -> None:
    patch(api, new_segment(api), ["b@example.com", "a@example.com"])
    state = requests.get(f"{emu.url}/__admin/state").json()
    assert state["segments"]["s"]["members"]["email"] == ["a@example.com", "b@example.com"]
    assert state["calls"] == {
        "token": 1,
        "search": 0,
        "create": 1,
        "update": 0,
        "patch": 1,
        "delete": 0,
        "statistics": 0,
    }
    assert emu.calls == [("POST", "token", 200), ("POST", "create", 200), ("PATCH", "contact-list", 200)]
    changed = requests.post(f"{emu.url}/__admin/faults", json={"fail_next": [503], "rate_limit": 10})
    assert changed.status_code == 200 and changed.json()["faults"]["fail_next"] == [503]
    assert emu.faults.fail_next == [503] and emu.faults.rate_limit == 10
    for bad in ({"nope": 1}, {"down": "yes"}, {"error_rate": 2}, {"fail_next": [200]}, [1]):
        refused = requests.post(f"{emu.url}/__admin/faults", json=bad)
        assert refused.status_code == 400 and error_code(refused) == "invalid-fault-settings", bad
    assert emu.faults.rate_limit == 10
    assert requests.post(f"{emu.url}/__admin/reset").json()["segments"] == {}
    assert emu.segments() == {} and emu.faults.fail_next == [] and emu.calls == []
    assert error_code(search(api)) == "authorization-token-invalid"  # reset forgets tokens too
    again = requests.post(
        f"{emu.url}/2026-07{SEGMENTS}/create",
        json={"data": [{"attributes": {"advertiserId": ADVERTISER, "name": "s", "contactList": {}}}]},
        headers={"Authorization": f"Bearer {token(emu)}"},
    )
    assert again.json()["data"][0]["id"] == "100002"  # ids keep increasing across resets


def test_command_line_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "devtools.criteo_emulator",
        "--port",
        "0",
        "--client-id",
        "c",
        "--client-secret",
        "s",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        url = process.stdout.readline().split()[3]
        assert url.startswith("http://127.0.0.1:")
        answer = requests.post(
            f"{url}/oauth2/token", data={"client_id": "c", "client_secret": "s", "grant_type": "client_credentials"}
        )
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
