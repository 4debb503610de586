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
    assert normalize("phoneNumber", "+33612345678", True) == hashlib.sha256(b"+33612345678").hexdigest()
    assert normalize("identityLink", " XY123 ", True) == "XY123"


@pytest.mark.parametrize(
    ("id_type", "raw"),
    [
        ("email", "no-at-sign"),
        ("email", "a@b"),
        ("madid", "not-a-uuid"),
        ("phoneNumber", "0612"),
        ("identityLink", "a b"),
    ],
)
def test_unusable_identifiers_are_refused_without_echoing_the_value(id_type: str, raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as error:
        normalize(id_type, raw, True)
    assert raw not in str(error.value)
