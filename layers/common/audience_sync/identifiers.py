"""Normalize (and hash) user identifiers the way Criteo matches them."""

from __future__ import annotations

import hashlib
import re

EMAIL = "email"
MADID = "madid"
PHONE = "phoneNumber"
IDENTITY_LINK = "identityLink"
GUM = "gum"
IDENTIFIER_TYPES = frozenset({EMAIL, MADID, PHONE, IDENTITY_LINK, GUM})
# What devices report when the user limited ad tracking: identifies nobody, never sent.
ZERO_MADID = "00000000-0000-0000-0000-000000000000"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PHONE_NOISE = re.compile(r"[\s().-]")
_INTERNATIONAL = re.compile(r"\+?([1-9][0-9]{7,14})")


class InvalidIdentifier(ValueError):
    """An identifier that can never match; the message names the type, never the value."""


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of a UTF-8 string."""
    return hashlib.sha256(value.encode()).hexdigest()


def normalize_email(raw: str, hash_emails: bool) -> str:
    """Trim and lowercase; hash to SHA-256 hex when asked. Already hashed (MD5/SHA-256 hex) stays as is."""
    email = raw.strip().lower()
    if _HEX64.fullmatch(email) or _HEX32.fullmatch(email):
        return email
    if not _EMAIL.fullmatch(email):
        raise InvalidIdentifier("email is not an email address")
    return sha256_hex(email) if hash_emails else email


def normalize_madid(raw: str) -> str:
    """Mobile advertising ids (IDFA/AAID) are UUIDs; lowercase them so enter and exit match."""
    madid = raw.strip().lower()
    if not _UUID.fullmatch(madid):
        raise InvalidIdentifier("madid is not a UUID")
    return madid


def normalize_phone(raw: str, hash_phones: bool) -> str:
    """An international number (country code first, `+` optional, no leading 0).

    Criteo's hashed form is SHA-256 of the digits alone (no `+`); the clear form is `+` and the digits.
    """
    phone = _PHONE_NOISE.sub("", raw.strip())
    if _HEX64.fullmatch(phone.lower()):
        return phone.lower()
    match = _INTERNATIONAL.fullmatch(phone)
    if not match:
        raise InvalidIdentifier("phoneNumber is not an international number (country code, 8-15 digits)")
    digits = match.group(1)
    return sha256_hex(digits) if hash_phones else "+" + digits


def normalize_opaque(id_type: str, raw: str) -> str:
    """LiveRamp IdentityLink and Criteo GUM ids are opaque tokens: trim only."""
    value = raw.strip()
    if not value or " " in value:
        raise InvalidIdentifier(f"{id_type} is empty or has spaces")
    return value


MAX_RAW_LENGTH = 512


def normalize(id_type: str, raw: str, hash_pii: bool) -> str:
    """Normalize one identifier of the given Criteo identifier type."""
    if len(raw) > MAX_RAW_LENGTH:
        raise InvalidIdentifier(f"{id_type} is longer than {MAX_RAW_LENGTH} characters")
    if not raw.isascii():
        try:
            raw.encode()
        except UnicodeEncodeError:
            raise InvalidIdentifier(f"{id_type} is not valid Unicode") from None
    if id_type == EMAIL:
        return normalize_email(raw, hash_pii)
    if id_type == MADID:
        return normalize_madid(raw)
    if id_type == PHONE:
        return normalize_phone(raw, hash_pii)
    return normalize_opaque(id_type, raw)
