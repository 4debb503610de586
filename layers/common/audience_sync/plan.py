"""Pure planning of Criteo calls.

The sync turns per-user differences into one outbox entry per audience and batch (`outbox_entry`); the
flusher nets the entries an audience accumulated (`net`) and chunks the result into PATCHes (`patches`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from audience_sync.membership import ByType
from audience_sync.records import ADD, REMOVE

MAX_IDENTIFIERS_PER_PATCH = 50_000
OPERATIONS = (REMOVE, ADD)  # the order within an entry and between PATCHes: removes first


@dataclass(frozen=True)
class Entry:
    """Changes to one audience's contact list, removes applied before adds (an identifier one user leaves and
    another gains in the same batch ends up present)."""

    removes: ByType
    adds: ByType

    def by_operation(self) -> tuple[tuple[str, ByType], ...]:
        """(operation, identifiers by type), removes first."""
        return ((REMOVE, self.removes), (ADD, self.adds))

    def counts(self) -> dict[tuple[str, str], int]:
        """Identifiers per (operation, identifier type), empty groups left out."""
        return {(op, t): len(ids) for op, by_type in self.by_operation() for t, ids in by_type.items() if ids}

    def __bool__(self) -> bool:
        return any(self.counts())


@dataclass(frozen=True)
class PatchPlan:
    """One PATCH: one audience, one operation, one identifier type, ≤50,000 distinct identifiers."""

    audience_key: str
    operation: str
    identifier_type: str
    identifiers: list[str]

    @property
    def full(self) -> bool:
        """As large as Criteo allows: waiting could not make it cheaper."""
        return len(self.identifiers) >= MAX_IDENTIFIERS_PER_PATCH


def outbox_entry(differences: Mapping[str, tuple[ByType, ByType]]) -> Entry:
    """Per user (added, removed) → one entry for the audience."""
    removes: ByType = {}
    adds: ByType = {}
    for added, removed in differences.values():
        for target, by_type in ((removes, removed), (adds, added)):
            for id_type, values in by_type.items():
                if values:
                    target.setdefault(id_type, set()).update(values)
    return Entry(removes, adds)


def net(entries: Iterable[Entry]) -> Entry:
    """What Criteo needs after these entries, in order: per identifier, its last operation.

    An identifier added then removed within the window is still removed (harmless when Criteo never had
    it): whether Criteo had it is not knowable from the entries, since a remove can be a precaution (the exit
    of a user the ledger never saw) and an add a re-send (a redelivered message). Sending the last operation
    is also what makes a flush that died midway safe to repeat.
    """
    last: dict[tuple[str, str], str] = {}
    for entry in entries:
        for operation, by_type in entry.by_operation():
            for id_type, values in by_type.items():
                for identifier in values:
                    last[(id_type, identifier)] = operation
    result = Entry({}, {})
    for (id_type, identifier), operation in last.items():
        target = result.adds if operation == ADD else result.removes
        target.setdefault(id_type, set()).add(identifier)
    return result


def patches(audience_key: str, entry: Entry) -> list[PatchPlan]:
    """One PATCH per operation and type per 50,000 identifiers, removes first; never an empty one."""
    plans = []
    for operation, by_type in entry.by_operation():
        for id_type in sorted(by_type):
            ordered = sorted(by_type[id_type])
            for start in range(0, len(ordered), MAX_IDENTIFIERS_PER_PATCH):
                chunk = ordered[start : start + MAX_IDENTIFIERS_PER_PATCH]
                plans.append(PatchPlan(audience_key, operation, id_type, chunk))
    return plans


def remainder(plans: Iterable[PatchPlan]) -> Entry:
    """The entry of PATCHes not sent (carried to the next flush)."""
    entry = Entry({}, {})
    for plan in plans:
        target = entry.adds if plan.operation == ADD else entry.removes
        target.setdefault(plan.identifier_type, set()).update(plan.identifiers)
    return entry


def calls_needed(counts: Mapping[tuple[str, str], int]) -> int:
    """PATCHes for groups of these sizes."""
    return sum(-(-n // MAX_IDENTIFIERS_PER_PATCH) for n in counts.values() if n > 0)
