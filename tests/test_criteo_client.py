"""Our Criteo client against the emulator: races, foreign segments, rate limits, time budget, tokens."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from audience_sync.criteo.auth import CriteoCredentials, TokenCache
from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.errors import InvalidCredentials, RejectedRequest, RetryLater, SegmentGone
from audience_sync.criteo.segments import SegmentDirectory
from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import DEV_CRITEO

CREDENTIALS = CriteoCredentials(DEV_CRITEO["client_id"], DEV_CRITEO["client_secret"], DEV_CRITEO["advertiser_id"])
MARKER = " [segment-criteo-sync deployment=prod]"  # what deployment "prod" writes into its segments' descriptions


def client(
    criteo: CriteoEmulator, seconds_left: float = 60.0, credentials: CriteoCredentials = CREDENTIALS
) -> CriteoClient:
    deadline = time.monotonic() + seconds_left  # a real budget that runs down, as in a Lambda invocation
    return CriteoClient(
        requests.Session(), criteo.url, "2026-07", credentials, lambda: deadline - time.monotonic(), tokens=TokenCache()
    )


def directory(api: CriteoClient, deployment: str = "prod", adopt: frozenset[str] = frozenset()) -> SegmentDirectory:
    return SegmentDirectory(api, deployment, adopt, cache={})


@pytest.mark.parametrize("as_200", [False, True], ids=["400", "200-partial-success"])
def test_create_race_falls_back_to_the_winners_segment(criteo: CriteoEmulator, as_200: bool) -> None:
    criteo.faults.create_refusals_as_200 = as_200
    segments = directory(client(criteo))
    segments.resolve("segment_other", "x")  # this container has searched once already
    winner = criteo.state.create(CREDENTIALS.advertiser_id, "segment_raced", "created by another Lambda" + MARKER)
    assert winner is not None
    assert segments.resolve("segment_raced", "x") == winner.id
    assert (criteo.count("create"), criteo.count("search")) == (2, 2)
    assert criteo.calls[-2] == ("POST", "create", 200 if as_200 else 400)


@pytest.mark.parametrize("as_200", [False, True], ids=["403", "200-partial-success"])
def test_create_refused_for_another_reason_is_a_clear_rejection(criteo: CriteoEmulator, as_200: bool) -> None:
    criteo.faults.create_refusals_as_200 = as_200
    api = client(criteo, credentials=CriteoCredentials(CREDENTIALS.client_id, CREDENTIALS.client_secret, "777"))
    with pytest.raises(RejectedRequest) as error:
        api.create_contact_list("segment_private_name", "x")
    assert "advertiser-not-accessible" in str(error.value) and "segment_private_name" not in str(error.value)
    assert error.value.status == (200 if as_200 else 403) and api.stats.calls["create"] == 1


def test_gum_identifiers_carry_the_caller_id_and_other_types_never_do(criteo: CriteoEmulator) -> None:
    api = client(criteo)
    segment = directory(api).resolve("segment_gum", "x")
    with pytest.raises(ValueError, match="gum"):
        api.patch_contact_list(segment, "add", "gum", ["123"])
    assert api.stats.calls.get("patch", 0) == 0
    assert api.patch_contact_list(segment, "add", "gum", ["123", "abc-9"], gum_caller_id=42)["nbValidIdentifiers"] == 2
    assert api.patch_contact_list(segment, "add", "email", ["a@example.com"], gum_caller_id=42)["nbValidIdentifiers"]
    assert criteo.segments()["segment_gum"]["members"]["gum"] == {"123", "abc-9"}


def test_segment_of_another_advertiser_is_gone_for_us(criteo: CriteoEmulator) -> None:
    foreign = criteo.add_foreign_segment("segment_theirs")
    with pytest.raises(SegmentGone):
        client(criteo).patch_contact_list(foreign, "add", "email", ["a@example.com"])


def test_rate_limit_waits_for_the_reset_then_succeeds(criteo: CriteoEmulator) -> None:
    api = client(criteo)
    segment = directory(api).resolve("segment_a", "x")
    criteo.faults.fail_next = [429]
    started = time.monotonic()
    result = api.patch_contact_list(segment, "add", "email", ["a@example.com"])
    assert result["nbValidIdentifiers"] == 1
    assert time.monotonic() - started >= 1.0 and api.stats.throttles == 1  # reset is 1-2 s ahead


def test_rate_limit_longer_than_the_time_left_hands_back(criteo: CriteoEmulator) -> None:
    api = client(criteo, seconds_left=0.2)
    criteo.faults.fail_next = [429]
    with pytest.raises(RetryLater):
        list(api.search_segments())


def test_outage_gives_up_within_the_time_budget(criteo: CriteoEmulator) -> None:
    criteo.faults.down = True
    api = client(criteo, seconds_left=2.0)
    started = time.monotonic()
    with pytest.raises(RetryLater):
        list(api.search_segments())
    assert time.monotonic() - started < 3 and api.stats.retries >= 1


def test_expired_token_is_refreshed_once(criteo: CriteoEmulator) -> None:
    api = client(criteo)
    list(api.search_segments())
    criteo.expire_tokens()
    list(api.search_segments())
    assert api.stats.calls["token"] == 2 and api.stats.token_refreshes == 1


def test_invalid_client(criteo: CriteoEmulator) -> None:
    api = client(criteo, credentials=CriteoCredentials("x", "wrong", "12345"))
    with pytest.raises(InvalidCredentials) as error:
        list(api.search_segments())
    assert "wrong" not in str(error.value)
    assert "wrong" not in repr(api.credentials)


def test_deprecation_header_is_logged(criteo: CriteoEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    criteo.faults.deprecated = True
    list(client(criteo).search_segments())
    assert "deprecated" in caplog.text


def test_search_pages_through_every_segment(criteo: CriteoEmulator) -> None:
    for i in range(230):
        criteo.state.create(CREDENTIALS.advertiser_id, f"segment_{i}", "")
    api = client(criteo)
    assert len({found.id for found in api.search_segments()}) == 230
    assert api.stats.calls["search"] == 3


def test_token_expiring_again_within_one_call_is_transient_not_bad_credentials(criteo: CriteoEmulator) -> None:
    api = client(criteo)
    list(api.search_segments())
    criteo.faults.fail_next = [401, 401]  # expired, refreshed, expired again: e.g. a call slowed by backoffs
    assert len(list(api.search_segments())) == 0
    assert api.stats.token_refreshes == 2 and api.stats.retries == 1
