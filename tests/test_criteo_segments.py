"""Segment ownership between deployments (e.g. prod and staging stacks on one Criteo app), against the emulator."""

from __future__ import annotations

import pytest

from audience_sync.criteo.errors import SegmentOwnedElsewhere
from devtools.criteo_emulator import CriteoEmulator
from tests.test_criteo_client import CREDENTIALS, client, directory

NAME = "segment_vip"
DESCRIPTION = "Segment Engage audience vip"


def marker(deployment: str) -> str:
    return f" [segment-criteo-sync deployment={deployment}]"


def existing(criteo: CriteoEmulator, description: str | None, name: str = NAME) -> str:
    """A segment someone else created before us; its id."""
    segment = criteo.state.create(CREDENTIALS.advertiser_id, name, description)
    assert segment is not None
    return segment.id


def test_created_segments_carry_our_marker_and_are_found_again_by_a_new_container(criteo: CriteoEmulator) -> None:
    created = directory(client(criteo)).resolve(NAME, DESCRIPTION)
    assert criteo.segments()[NAME]["description"] == DESCRIPTION + marker("prod")
    later = client(criteo)
    assert directory(later).resolve(NAME, "a newer description") == created
    assert later.stats.calls == {"token": 1, "search": 1}


def test_resolved_ids_are_cached_per_advertiser_and_name(criteo: CriteoEmulator) -> None:
    api = client(criteo)
    segments = directory(api)
    first = segments.resolve(NAME, DESCRIPTION)
    assert segments.resolve(NAME, DESCRIPTION) == first
    assert segments.cache == {(CREDENTIALS.advertiser_id, NAME): first}
    assert api.stats.calls == {"token": 1, "search": 1, "create": 1}


@pytest.mark.parametrize(
    ("description", "owner"),
    [
        (DESCRIPTION + marker("prod"), "deployment prod"),
        ("Created by Segment", "not created by this deployment"),
        (None, "not created by this deployment"),
    ],
)
def test_a_segment_we_did_not_create_is_refused_with_how_to_adopt_it(
    criteo: CriteoEmulator, description: str | None, owner: str
) -> None:
    existing(criteo, description)
    api = client(criteo)
    with pytest.raises(SegmentOwnedElsewhere) as error:
        directory(api, "staging", frozenset({"segment_other"})).resolve(NAME, DESCRIPTION)
    message = str(error.value)
    assert NAME in message and owner in message and "ADOPT_SEGMENTS" in message
    assert (error.value.name, error.value.owner) == (NAME, "prod" if "prod" in owner else None)
    assert "create" not in api.stats.calls and "update" not in api.stats.calls
    assert criteo.segments()[NAME]["description"] == description


def test_losing_a_create_race_to_another_deployment_is_refused(criteo: CriteoEmulator) -> None:
    criteo.faults.create_refusals_as_200 = True
    segments = directory(client(criteo), "staging")
    segments.resolve("segment_other", DESCRIPTION)  # searched once already
    existing(criteo, DESCRIPTION + marker("prod"))
    with pytest.raises(SegmentOwnedElsewhere, match="deployment prod"):
        segments.resolve(NAME, DESCRIPTION)


@pytest.mark.parametrize("adopt", [frozenset({NAME}), frozenset({"segment_other", "*"})], ids=["by-name", "any"])
def test_adopting_writes_our_marker_so_the_previous_owner_refuses_it(
    criteo: CriteoEmulator, adopt: frozenset[str]
) -> None:
    segment_id = existing(criteo, "Created by Segment" + marker("prod"))
    api = client(criteo)
    assert directory(api, "staging", adopt).resolve(NAME, DESCRIPTION) == segment_id
    assert criteo.segments()[NAME]["description"] == "Created by Segment" + marker("staging")
    assert api.stats.calls == {"token": 1, "search": 1, "update": 1}
    with pytest.raises(SegmentOwnedElsewhere, match="deployment staging"):
        directory(client(criteo), "prod").resolve(NAME, DESCRIPTION)


def test_adopting_a_segment_without_a_description(criteo: CriteoEmulator) -> None:
    segment_id = existing(criteo, None)
    assert directory(client(criteo), "prod", frozenset({NAME})).resolve(NAME, DESCRIPTION) == segment_id
    assert criteo.segments()[NAME]["description"] == marker("prod").strip()


@pytest.mark.parametrize("deployment", ["", "has space", "a]b"])
def test_deployment_ids_must_fit_in_the_marker(criteo: CriteoEmulator, deployment: str) -> None:
    with pytest.raises(ValueError, match="deployment"):
        directory(client(criteo), deployment)
