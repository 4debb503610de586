"""Which identifiers Criteo counts as valid, per identifier type (invalid ones are counted, not rejected)."""

from __future__ import annotations

import re
from collections.abc import Callable

IDENTIFIER_TYPES = ("email", "madid", "identityLink", "gum", "phoneNumber")

_EMAIL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}")
_MD5_OR_SHA256 = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# International form with `+` (no separators, no leading 0), or lowercase hex SHA-256 of those digits without `+`.
_PHONE_OR_SHA256 = re.compile(r"\+[1-9][0-9]{7,14}|[0-9a-f]{64}")
_OPAQUE = re.compile(r"\S+")

_RULES: dict[str, Callable[[str], object]] = {
    # Plain emails must already be normalized (trimmed, lowercase); hashes are lowercase hex MD5 or SHA-256.
    "email": lambda value: _EMAIL.fullmatch(value) or _MD5_OR_SHA256.fullmatch(value),
    "madid": _UUID.fullmatch,
    "phoneNumber": _PHONE_OR_SHA256.fullmatch,
    "identityLink": _OPAQUE.fullmatch,
    "gum": _OPAQUE.fullmatch,
}


def is_valid(identifier_type: str, value: str) -> bool:
    """Whether Criteo would count `value` as a valid identifier of that type."""
    return bool(_RULES[identifier_type](value))
