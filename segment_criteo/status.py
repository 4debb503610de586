"""`status`: per audience, what the ledger says Criteo should hold, what waits, and what Criteo reports."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from audience_sync.criteo.errors import CriteoError
from audience_sync.inbox import group_of
from audience_sync.moves import Moves
from segment_criteo.deployment import Deployment
from segment_criteo.dlq import parked_reasons


@dataclass
class AudienceStatus:
    """One audience."""

    audience: str
    advertiser: str
    segment_name: str
    segment_id: str
    users_in: int = 0  # members by the ledger
    users_sent: int = 0  # members Criteo holds identifiers of (consent allowing)
    identifiers: dict[str, int] = field(default_factory=dict)  # by type, as Criteo should hold them
    pending: int = 0  # identifier changes waiting in the inbox and the outbox (an upper bound)
    oldest_pending_seconds: int = 0
    paused: bool = False
    # When the sync last applied a batch to its group of audiences (unix time; idle > 1 h: None).
    last_applied: float | None = None
    criteo: dict[str, Any] = field(default_factory=dict)  # numberOfIdentifiers, numberOfMatches, matchRate
    lookalike_id: str = ""
    carrying_over: bool = False  # moved to another advertiser: its members are still being queued for it


def status(deployment: Deployment, audiences: list[str] | None = None) -> dict[str, Any]:
    """Every audience (or those named) with the dead-letter queue's messages by reason."""
    wanted = set(audiences) if audiences else None
    rows: dict[str, AudienceStatus] = {}
    identifiers: dict[str, Counter[str]] = {}
    in_ledger: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    for audience, _, membership in deployment.ledger.scan_memberships(wanted):
        in_ledger[audience] += membership.is_in
        held = membership.sent()
        sent[audience] += bool(held)
        counted = identifiers.setdefault(audience, Counter())
        for id_type, values in held.items():
            counted[id_type] += len(values)
    waiting = {w.audience_key: w for w in deployment.outbox.waiting() if wanted is None or w.audience_key in wanted}
    gathering = _in_inbox(deployment, None if wanted is None else {group_of(name) for name in wanted})
    known = set(identifiers) | set(waiting) | set(gathering) | set(deployment.config.audiences)
    names = known if wanted is None else wanted
    synced = deployment.inbox.last_synced({group_of(name) for name in names})
    moving = Moves(deployment.dynamodb, deployment.target.ledger_table).pending()
    now = time.time()
    for audience, segment in deployment.segments(names).items():
        row = AudienceStatus(audience, segment.advertiser, segment.name, segment.id)
        row.users_in, row.users_sent = in_ledger[audience], sent[audience]
        row.identifiers = dict(sorted(identifiers.get(audience, Counter()).items()))
        row.paused = deployment.config.settings(audience).paused
        row.last_applied = synced.get(group_of(audience))
        row.carrying_over = audience in moving
        in_outbox = waiting.get(audience)
        in_inbox, inbox_first = gathering.get(audience, (0, now))
        row.pending = in_inbox + (sum(in_outbox.counts.values()) if in_outbox else 0)
        if row.pending:
            row.oldest_pending_seconds = int(now - min(inbox_first, in_outbox.first if in_outbox else now))
        rows[audience] = row
    _from_criteo(deployment, rows)
    return {
        "audiences": [asdict(r) for r in sorted(rows.values(), key=lambda r: r.audience)],
        **parked_reasons(deployment.target),
    }


def _in_inbox(deployment: Deployment, groups: set[str] | None) -> dict[str, tuple[int, float]]:
    """Per audience, the identifier changes waiting in the inbox and when the oldest was queued (only the entries
    of `groups`, when named)."""
    found: dict[str, tuple[int, float]] = {}
    for group in deployment.inbox.waiting():
        if group.first is None or (groups is not None and group.group not in groups):
            continue
        for _, slices in deployment.inbox.oldest(group, max_identifiers=-1)[0]:
            for audience, piece in slices.items():
                n, queued = found.get(audience, (0, piece.queued))
                found[audience] = (n + sum(piece.entry.counts().values()), min(queued, piece.queued))
    return found


def _from_criteo(deployment: Deployment, rows: dict[str, AudienceStatus]) -> None:
    """Criteo's statistics of each segment, and the lookalike seeded from it (one search per advertiser)."""
    lookalikes: dict[str, dict[str, str]] = {}
    for row in rows.values():
        if not row.segment_id:
            continue
        advertiser = deployment.advertiser(row.advertiser)
        try:
            if row.advertiser not in lookalikes:
                lookalikes[row.advertiser] = advertiser.directory.lookalikes()
            row.lookalike_id = lookalikes[row.advertiser].get(row.segment_id, "")
            row.criteo = advertiser.criteo.statistics(row.segment_id)
        except CriteoError as error:
            row.criteo = {"error": str(error)}
