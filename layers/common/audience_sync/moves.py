"""An audience moved to another advertiser: its members from before go to its segment there.

The flush that first sends an audience to its new advertiser starts a move (item `move`/<audience>). The
scheduled flush then carries it over: a Scan of the ledger, a page at a time, finds the audience's members; each
page's users are read again under the lease of the audience's group and their identifiers Criteo should hold
are queued as adds in the inbox. Under the lease no sync folds a change of the audience meanwhile, so an entry
queued here is never overtaken by an older state: entries are in the order the ledger applied them, and the flush nets
them as usual (a member's later exit, queued after, still wins). The position is saved after each page, so a
move spans as many invocations as the table needs; a move started again (moved back, or on again) scans from
the beginning. The first advertiser's segment is left as it was.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from audience_sync.audience_config import DEFAULT_ADVERTISER, AudienceConfig
from audience_sync.inbox import Inbox, Slice, group_of
from audience_sync.ledger import MEMBER, Ledger
from audience_sync.observability import logger
from audience_sync.outbox import Outbox, forgotten
from audience_sync.plan import outbox_entry
from audience_sync.table import Item, Table

MOVES = "move"
MOVED = (
    "audience moved to another advertiser: its changes go there from now on, and its members from before are being "
    "queued for its segment there (the first advertiser's segment is left as is)"
)


class Moves(Table):
    """The moves in progress: per audience, where its Scan of the ledger is (`at`: JSON of the next page's start,
    "" for the first page)."""

    page_items: int | None = None  # items a Scan page looks at (None: DynamoDB's 1 MB)

    def start(self, audience_key: str) -> None:
        """Start (or start again) carrying the audience's members over to its new segment."""
        self._save(audience_key, "")

    def pending(self) -> dict[str, Item | None]:
        """Every move in progress: audience -> where its Scan resumes (None: from the start)."""
        return {
            item["sk"]["S"]: json.loads(item["at"]["S"]) if item["at"]["S"] else None for item in self._query(MOVES)
        }

    def advance(self, audience_key: str, start: Item | None) -> None:
        """Save where the audience's Scan resumes; None: the move is done."""
        if start is None:
            self._delete([(MOVES, audience_key)])
        else:
            self._save(audience_key, json.dumps(start))

    def _save(self, audience_key: str, at: str) -> None:
        self._put([{"pk": {"S": MOVES}, "sk": {"S": audience_key}, "at": {"S": at}}])

    def members_page(self, audience_key: str, start: Item | None) -> tuple[list[str], Item | None]:
        """One page of a Scan of the table for the audience's membership items: their users, and where the next
        page starts (None: the table is done). Strongly consistent; only ever for a move."""
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": "sk = :m",
            "ExpressionAttributeValues": {":m": {"S": MEMBER + audience_key}},
            "ProjectionExpression": "pk",
        }
        if start is not None:
            arguments["ExclusiveStartKey"] = start
        if self.page_items:
            arguments["Limit"] = self.page_items
        page = self._dynamo("Scan", partial(self.dynamodb.scan, **arguments))
        return [item["pk"]["S"] for item in page.get("Items", [])], page.get("LastEvaluatedKey")


def moved_by_settings(moves: Moves, outbox: Outbox, config: AudienceConfig) -> None:
    """Start a move for every audience whose settings now name another advertiser than the one its segment is in,
    without waiting for a change of it to be flushed (a quiet audience would otherwise never move). Its segment
    record then names the new advertiser, so its next flush finds or creates its segment there. Call under the
    flusher lease (a flush of the audience meanwhile would see the move too)."""
    for audience_key, record in outbox.every_remembered().items():
        settings = config.settings(audience_key)
        was = record.get("advertiser", DEFAULT_ADVERTISER)
        if not record.get("segment_id") or settings.segment_id or settings.advertiser == was:
            continue
        outbox.remember(audience_key, forgotten(settings.advertiser))
        moves.start(audience_key)
        logger.warning(MOVED, extra={"audience": audience_key, "advertiser": settings.advertiser, "was": was})


def carry_over(
    moves: Moves, ledger: Ledger, inbox: Inbox, keep_going: Callable[[], bool], lock_wait_seconds: float
) -> Counter[str]:
    """Carry the moves in progress over, a page at a time while `keep_going()`; the counts for metrics
    (`moves_pending`: the moves not finished). A page whose group's lease another invocation holds for longer
    than `lock_wait_seconds` waits for the next invocation. Raises DependencyUnavailable as the table does."""
    counts: Counter[str] = Counter()
    pending = moves.pending()
    for audience_key, start in pending.items():
        while keep_going():
            users, following = moves.members_page(audience_key, start)
            if users and not _queue_members(ledger, inbox, audience_key, users, lock_wait_seconds, counts):
                break
            moves.advance(audience_key, following)
            start = following
            if start is None:
                counts["moves_finished"] += 1
                break
    counts["moves_pending"] = len(pending) - counts["moves_finished"]
    return counts


def _queue_members(
    ledger: Ledger, inbox: Inbox, audience_key: str, users: list[str], lock_wait_seconds: float, counts: Counter[str]
) -> bool:
    """Under the lease of the audience's group, queue the identifiers Criteo should hold for these users as adds;
    False when the lease could not be taken."""
    group = group_of(audience_key)
    seq = inbox.acquire(group, lock_wait_seconds)
    if seq is None:
        return False
    try:
        states = ledger.memberships(audience_key, users)
        entry = outbox_entry({user: (state.sent(), {}) for user, state in states.items() if state.sent()})
        appended = inbox.append(group, seq, {audience_key: Slice(entry, "", inbox.clock())}) if entry else None
        inbox.release(group, appended)
        counts["identifiers_carried_over"] += appended.identifiers if appended else 0
    except Exception:
        inbox.release(group)
        raise
    return True
