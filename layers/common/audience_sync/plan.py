"""Pure planning of Criteo calls: per-user differences grouped per (operation, identifier type), chunked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from audience_sync.membership import ByType
from audience_sync.records import ADD, REMOVE

MAX_IDENTIFIERS_PER_PATCH = 50_000


@dataclass
class PatchPlan:
    """One PATCH: one audience, one operation, one identifier type, ≤50,000 distinct identifiers."""

    audience_key: str
    operation: str
    identifier_type: str
    identifiers: list[str] = field(default_factory=list)
    users: set[str] = field(default_factory=set)  # whose state depends on this call


def plan_contact_list_patches(audience_key: str, differences: Mapping[str, tuple[ByType, ByType]]) -> list[PatchPlan]:
    """Per user (added, removed) → PATCHes: removes before adds, so that an identifier one user leaves and
    another holds ends up in the segment; one PATCH per operation and type per 50,000; never an empty one."""
    groups: dict[tuple[str, str], dict[str, set[str]]] = {}  # (operation, type) -> identifier -> users
    for user, (added, removed) in differences.items():
        for operation, by_type in ((REMOVE, removed), (ADD, added)):
            for id_type, values in by_type.items():
                group = groups.setdefault((operation, id_type), {})
                for identifier in values:
                    group.setdefault(identifier, set()).add(user)
    plans = []
    order = {REMOVE: 0, ADD: 1}
    for (operation, id_type), members in sorted(groups.items(), key=lambda g: (order[g[0][0]], g[0][1])):
        ordered = sorted(members)
        for start in range(0, len(ordered), MAX_IDENTIFIERS_PER_PATCH):
            chunk = ordered[start : start + MAX_IDENTIFIERS_PER_PATCH]
            users = set().union(*(members[i] for i in chunk))
            plans.append(PatchPlan(audience_key, operation, id_type, chunk, users))
    return plans
