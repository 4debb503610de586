"""Pure planning of Criteo calls: dedupe, keep the newest change per user, group, chunk."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from audience_sync.records import AudienceChange

MAX_IDENTIFIERS_PER_PATCH = 50_000

IdentityKey = tuple[str, str, str]


class Sourced:
    """A change and the SQS message it came from (the unit SQS retries)."""

    __slots__ = ("change", "message_id")

    def __init__(self, change: AudienceChange, message_id: str) -> None:
        self.change = change
        self.message_id = message_id


@dataclass
class PatchPlan:
    """One PATCH: one audience, one operation, one identifier type, ≤50,000 identifiers."""

    audience_key: str
    operation: str
    identifier_type: str
    items: list[Sourced] = field(default_factory=list)

    @property
    def identifiers(self) -> list[str]:
        """The identifiers to send."""
        return [item.change.identifier for item in self.items]

    @property
    def message_ids(self) -> set[str]:
        """The SQS messages to hand back if this PATCH can't be done."""
        return {item.message_id for item in self.items}


def newest_per_identity(items: Iterable[Sourced]) -> dict[IdentityKey, Sourced]:
    """Per (audience, identifier type, identifier), only the newest change survives.

    Duplicates (same messageId, same timestamp) collapse to one; ties on time break on messageId,
    the same rule the ordering store applies across batches.
    """
    newest: dict[IdentityKey, Sourced] = {}
    for item in items:
        change = item.change
        key = (change.audience_key, change.identifier_type, change.identifier)
        current = newest.get(key)
        if current is None or (change.timestamp_ms, change.message_id) > (
            current.change.timestamp_ms,
            current.change.message_id,
        ):
            newest[key] = item
    return newest


def plan_contact_list_patches(items: Iterable[Sourced]) -> list[PatchPlan]:
    """Group by (audience, operation, identifier type) and chunk at 50,000; never an empty PATCH."""
    groups: dict[tuple[str, str, str], list[Sourced]] = {}
    for item in items:
        change = item.change
        groups.setdefault((change.audience_key, change.operation, change.identifier_type), []).append(item)
    plans = []
    for (audience_key, operation, identifier_type), members in sorted(groups.items()):
        for start in range(0, len(members), MAX_IDENTIFIERS_PER_PATCH):
            chunk = members[start : start + MAX_IDENTIFIERS_PER_PATCH]
            plans.append(PatchPlan(audience_key, operation, identifier_type, chunk))
    return plans


def minimum_patch_calls(items: Iterable[Sourced]) -> int:
    """The fewest PATCHes that can apply these changes (for metrics and benchmarks)."""
    return len(plan_contact_list_patches(newest_per_identity(items).values()))
