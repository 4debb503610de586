"""Scan captured logs for PII and secrets: any email address, and every sensitive value we know was used."""

from __future__ import annotations

import re
from collections.abc import Iterable

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def leaks(text: str, sensitive: Iterable[str]) -> list[str]:
    """Descriptions of what leaked (values masked), empty when the logs are clean."""
    found = [f"an email address ({m.group(0)[:2]}***)" for m in EMAIL.finditer(text)]
    for value in set(sensitive):
        if len(value) >= 6 and value in text:
            found.append(f"a sensitive value ({value[:2]}***, {len(value)} chars)")
    return found
