"""Identifier normalization: what Criteo can match, and nothing raw when hashing is on."""

from __future__ import annotations

import hashlib

import pytest

from audience_sync.identifiers import InvalidIdentifier, normalize


def test_email_is_trimmed_lowercased_then_hashed() -> None:
    assert normalize("email", "  Jane.Doe@Example.COM\t", True) == hashlib.sha256(b"jane.doe@example.com").hexdigest()
    assert normalize("email", " Jane.Doe@Example.COM", False) == "jane.doe@example.com"


def test_prehashed_emails_pass_through_lowercased() -> None:
    sha = "A" * 64
    assert normalize("email", sha, True) == "a" * 64
    assert normalize("email", "b" * 32, True) == "b" * 32


def test_madid_phone_identity_link() -> None:
    assert normalize("madid", " 6D92078A-8246-4BA4-AE5B-76104861E7DC ", True) == "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    assert normalize("phoneNumber", "+33 (6) 12-34-56-78", False) == "+33612345678"
    assert normalize("identityLink", " XY123 ", True) == "XY123"
    assert normalize("gum", " 1234567890 ", True) == "1234567890"


# Criteo's own worked examples (help centre, "Pass phone numbers"; ../shared/criteo/API_NOTES.md): SHA-256 of
# the international number's digits, no "+". Written out, not computed, so our normalizer can't agree with itself.
@pytest.mark.parametrize(
    ("raw", "criteo_hash"),
    [
        ("+33 1 40 40 22 90", "fda66831d0cb0eb4bffb21bc795308d69921c211c57be0ae15702071e3b9e988"),
        ("1 (234) 567-8910", "63640264849a87c90356129d99ea165e37aa5fabc1fea46906df1a7ca50db492"),
        ("81-12-3456-7891", "d9825fb05347d3c910fc5202c0c20d07a87b791cc643c6f2d70402394a849540"),
    ],
)
def test_hashed_phone_numbers_match_criteos_worked_examples(raw: str, criteo_hash: str) -> None:
    assert normalize("phoneNumber", raw, True) == criteo_hash


@pytest.mark.parametrize(
    ("id_type", "raw"),
    [
        ("email", "no-at-sign"),
        ("email", "a@b"),
        ("madid", "not-a-uuid"),
        ("phoneNumber", "0612"),
        ("phoneNumber", "06 12 34 56 78"),  # a national number with a leading 0: Criteo rejects it
        ("identityLink", "a b"),
    ],
)
def test_unusable_identifiers_are_refused_without_echoing_the_value(id_type: str, raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as error:
        normalize(id_type, raw, True)
    assert raw not in str(error.value)
