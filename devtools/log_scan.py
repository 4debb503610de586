"""Scan captured logs for PII and secrets: any email address, and every sensitive value we know was used."""

from __future__ import annotations

import re
from collections.abc import Iterable

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
SHORTEST = 6  # shorter values (a country code, a short id) would match ordinary log text


def leaks(text: str, sensitive: Iterable[str]) -> list[str]:
    """Descriptions of what leaked (values masked), empty when the logs are clean.

    One pass over the text whatever the number of values (a 1M-event soak knows millions of clear
    identifiers): the values are indexed by their first SHORTEST characters and checked where those occur.
    """
    found = [f"an email address ({m.group(0)[:2]}***)" for m in EMAIL.finditer(text)]
    by_prefix: dict[str, set[str]] = {}
    for value in set(sensitive):
        if len(value) >= SHORTEST:
            by_prefix.setdefault(value[:SHORTEST], set()).add(value)
    seen: set[str] = set()
    for at in range(len(text) - SHORTEST + 1):
        for value in by_prefix.get(text[at : at + SHORTEST], ()):
            if value not in seen and text.startswith(value, at):
                seen.add(value)
                found.append(f"a sensitive value ({value[:2]}***, {len(value)} chars)")
    return found
