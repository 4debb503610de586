"""One user's membership of one audience: the newest enter and exit, and the identifiers to send.

Pure rules, the same for any arrival order (see docs/design.md, "Per-user membership"):
- the user is in when their newest enter is newer than their newest exit (versions: time, then messageId);
- an exit takes out everything held for the user, whatever identifiers it carries;
- per identifier type, the identifiers held are those of the newest enters after the last exit that carry
  the type: a newer event replaces them (an email that changed), events at the same time add up (Engage
  sends one event per identifier); an empty list withdraws the type (a zero or limited-tracking madid);
- Criteo holds the identifiers while the user is in and consent allows it (`live`);
- a suppression's exit may hold enters back until a time (its cool-down): an enter dated before the latest
  such time does not count, whenever it arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from audience_sync.records import ADD, REMOVE, VERSION_OFFSET_MS, AudienceChange

# identifier type -> (event time of the identifiers held, {identifier: version of the event that carried it})
HeldIdentifiers = dict[str, tuple[int, dict[str, str]]]
ByType = dict[str, set[str]]


@dataclass
class Membership:
    """The ledger's record of one user in one audience."""

    entered: str = ""  # newest enter version ("" = none)
    exited: str = ""  # newest exit version ("" = none)
    held: HeldIdentifiers = field(default_factory=dict)
    live: bool = False  # Criteo holds `held` (the user was in, with consent, when last applied)
    hold_until: int = 0  # ms: enters dated before this are held back (a suppression's cool-down)

    @property
    def is_in(self) -> bool:
        """Whether the user is a member: the newest enter beats the newest exit and is not held back."""
        if self.entered <= self.exited:
            return False
        return not self.hold_until or int(self.entered[:15]) - VERSION_OFFSET_MS >= self.hold_until

    def sent(self) -> ByType:
        """The identifiers Criteo holds for this user, by type."""
        if not self.live:
            return {}
        return {id_type: set(ids) for id_type, (_, ids) in self.held.items() if ids}

    def apply(self, change: AudienceChange, version: str | None = None) -> None:
        """Fold one enter or exit in (`version`: the change's, if already computed); duplicates and stale
        changes leave the state as it is, and so do consent changes (they are not memberships)."""
        version = version or change.version
        if change.operation == ADD:
            self.entered = max(self.entered, version)
            if version > self.exited:
                self._hold(change, version)
        elif change.operation == REMOVE:
            self.hold_until = max(self.hold_until, change.hold_until_ms)
            if version <= self.exited:
                return
            self.exited = version
            self.held = {
                id_type: (at, kept)
                for id_type, (at, ids) in self.held.items()
                if (kept := {i: v for i, v in ids.items() if v > version}) or (not ids and at >= change.timestamp_ms)
            }

    def _hold(self, change: AudienceChange, version: str) -> None:
        for id_type, identifiers in change.identifiers.items():
            at, ids = self.held.get(id_type, (change.timestamp_ms, {}))
            if change.timestamp_ms > at:
                at, ids = change.timestamp_ms, {}
            elif change.timestamp_ms < at:
                continue
            for identifier in identifiers:
                ids[identifier] = max(ids.get(identifier, ""), version)
            self.held[id_type] = (at, ids)

    def copy(self) -> Membership:
        """An independent copy (folding never changes it): equal to the state unless folding changed that."""
        return replace(self, held={t: (at, dict(ids)) for t, (at, ids) in self.held.items()})

    def encode(self) -> str:
        """Compact JSON of the held identifiers (the ledger item's `ids`)."""
        return json.dumps({t: [at, ids] for t, (at, ids) in self.held.items()}, separators=(",", ":"))

    @staticmethod
    def decode_held(text: str) -> HeldIdentifiers:
        """The inverse of `encode`."""
        return {t: (int(at), dict(ids)) for t, (at, ids) in json.loads(text).items()}


def difference(before: ByType, after: ByType) -> tuple[ByType, ByType]:
    """(added, removed) identifiers by type between two `sent()` views."""
    added = {t: ids - before.get(t, set()) for t, ids in after.items()}
    removed = {t: ids - after.get(t, set()) for t, ids in before.items()}
    return {t: s for t, s in added.items() if s}, {t: s for t, s in removed.items() if s}
