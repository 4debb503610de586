"""The inbox: what sync invocations applied to the ledger and Criteo does not have yet, one entry per group of
audiences and batch, until the flusher gathers it into each audience's outbox (outbox.py).

Audiences are hashed into GROUPS groups. The group is the unit a sync invocation locks, numbers and counts,
so an invocation pays per group it touches, not per audience: a steady stream over 2,000 audiences touched
each audience in nearly every invocation, and the per-audience lease, entry and summary cost two thirds of
the DynamoDB bill (docs/design.md, "What it costs"). The flusher, the only writer of the outboxes, gathers a
group's entries into its audiences' outboxes when the oldest is due, so each audience is written about once
per flush interval. Items in the ledger's table:
- (`in#<group>`, `<seq>#<part>`): an entry (`d`: zlib-compressed JSON, per audience `{"r": {type: [ids]},
  "a": ..., "n": its display name, "q": when its oldest change was queued}`), split at 4,000 identifiers.
  Gathered entries are not deleted (a delete is billed like a write): the group's cursor moves past them, and
  they expire after ENTRY_KEPT_SECONDS, which DynamoDB does for free (the flusher gathers every group within
  minutes to hours, unless it could not run for that long: the outbox_oldest_seconds alarm fires long before);
- (`inbox`, `<group>`): the group's lease (`owner`, `expires`, `synced`; `seq`, one more at every taking,
  orders its entries, so they are in the order the ledger applied them), what waits: `first` (oldest change
  queued; absent: nothing waits) and `last` (last append), and `gathered`, the sort key of the last entry
  gathered (the cursor). Releasing the lease and counting an entry are one write. The eight items never expire:
  `seq` and the cursor must not start again while entries are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audience_sync.errors import DependencyUnavailable
from audience_sync.outbox import (
    ENTRY_KEPT_SECONDS,
    MAX_IDENTIFIERS_PER_FLUSH,
    MAX_IDENTIFIERS_PER_ITEM,
    Outbox,
    Waiting,
    document,
    entry_of,
    split,
)
from audience_sync.plan import Entry, net
from audience_sync.table import Table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

GROUPS = 8
INBOX = "inbox"
ENTRIES = "in#"


def group_of(audience_key: str) -> str:
    """The group an audience's changes are locked, numbered and counted in."""
    return f"{int(hashlib.sha256(audience_key.encode()).hexdigest()[:8], 16) % GROUPS:02d}"


@dataclass(frozen=True)
class Slice:
    """One audience's part of a group entry: its changes, its display name (may be empty) and when its oldest
    change was queued."""

    entry: Entry
    name: str
    queued: float


Slices = dict[str, Slice]  # audience -> its part


@dataclass(frozen=True)
class Appended:
    """What an entry adds to its group's item."""

    identifiers: int
    queued: float


@dataclass(frozen=True)
class GroupWaiting:
    """One group's item: when its oldest waiting change was queued (None: nothing waits), its last append, and
    the sort key of the last entry gathered ("": none yet)."""

    group: str
    first: float | None
    last: float
    gathered: str = ""


def encode_slices(slices: Slices) -> bytes:
    """A group entry (or a part of one) as stored."""
    parts = {a: {**document(s.entry), "n": s.name, "q": round(s.queued, 3)} for a, s in sorted(slices.items())}
    return zlib.compress(json.dumps(parts, separators=(",", ":")).encode(), 6)


def decode_slices(data: bytes) -> Slices:
    """A group entry (or a part of one) from its stored form."""
    return {a: Slice(entry_of(part), part["n"], part["q"]) for a, part in json.loads(zlib.decompress(data)).items()}


def _parts(slices: Slices, size: int = MAX_IDENTIFIERS_PER_ITEM) -> list[Slices]:
    """A group entry in items of at most `size` identifiers: each audience's changes split in order (removes
    before adds), the pieces packed one after another."""
    parts: list[Slices] = []
    current: Slices = {}
    held = 0
    for audience, piece in ((a, p) for a, s in sorted(slices.items()) for p in split(s.entry, size)):
        n = sum(piece.counts().values())
        if current and (held + n > size or audience in current):
            parts.append(current)
            current, held = {}, 0
        current[audience] = Slice(piece, slices[audience].name, slices[audience].queued)
        held += n
    if current:
        parts.append(current)
    return parts


class Inbox(Table):
    """The inbox items of the table, and the groups' leases."""

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, lock_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(dynamodb, table, clock)
        self.lock_seconds = lock_seconds

    def acquire(self, group: str, wait_seconds: float) -> int | None:
        """Take the group's lease, waiting up to `wait_seconds` for another holder to finish; returns the
        sequence number to store entries under, or None."""
        return self._lease((INBOX, group), self.lock_seconds, wait_seconds, None)

    def append(self, group: str, seq: int, slices: Slices) -> Appended:
        """Store an entry under the group's lease `seq` (in parts); `release` counts it."""
        self._put(
            [
                {
                    "pk": {"S": ENTRIES + group},
                    "sk": {"S": f"{seq:012d}#{index:04d}"},
                    "d": {"B": encode_slices(part)},
                    "ttl": {"N": str(int(self.clock()) + ENTRY_KEPT_SECONDS)},
                }
                for index, part in enumerate(_parts(slices))
            ]
        )
        identifiers = sum(n for s in slices.values() for n in s.entry.counts().values())
        return Appended(identifiers, min(s.queued for s in slices.values()))

    def release(self, group: str, appended: Appended | None = None) -> None:
        """Give the group's lease back. With `appended`, the item notes it in the same write, and
        DependencyUnavailable says it could not be (the entry is not known to the flusher). Without, this never
        fails (a lease expires anyway)."""
        key, now = (INBOX, group), f"{self.clock():.3f}"
        values: dict[str, Any] = {":me": {"S": self.owner}, ":zero": {"N": "0"}, ":now": {"N": now}}
        names = {"#o": "owner", "#first": "first", "#last": "last"}
        if appended is None:
            with contextlib.suppress(DependencyUnavailable):
                self._update(key, "SET expires = :zero, synced = :now", values, {"#o": "owner"}, "#o = :me")
            return
        values[":q"] = {"N": f"{appended.queued:.3f}"}
        counted = "#first = if_not_exists(#first, :q), #last = :now"
        if self._update(key, f"SET expires = :zero, synced = :now, {counted}", values, names, "#o = :me") is None:
            del values[":me"], values[":zero"], names["#o"]  # the lease was lost: count it all the same
            self._update(key, f"SET {counted}", values, names)

    def waiting(self) -> list[GroupWaiting]:
        """Every group ever appended to, waiting or not (strongly consistent, so the cursor is the newest: eight
        small items)."""
        return [
            GroupWaiting(
                item["sk"]["S"],
                float(item["first"]["N"]) if "first" in item else None,
                float(item["last"]["N"]),
                item.get("gathered", {}).get("S", ""),
            )
            for item in self._query(INBOX)
            if "last" in item
        ]

    def last_synced(self, groups: Iterable[str]) -> dict[str, float]:
        """When each group's lease was last released (absent: never)."""
        items = self._get((INBOX, group) for group in groups)
        return {item["sk"]["S"]: float(item["synced"]["N"]) for item in items if "synced" in item}

    def oldest(
        self, waiting: GroupWaiting, max_identifiers: int = MAX_IDENTIFIERS_PER_FLUSH
    ) -> tuple[list[tuple[str, Slices]], bool]:
        """A group's oldest entries not gathered yet as (sort key, slices), whole (every part of each), until they
        hold `max_identifiers` (-1: no limit), and whether that is all of them."""
        read: list[tuple[str, Slices]] = []
        held = 0
        for item in self._items(ENTRIES + waiting.group, after=waiting.gathered):
            sk = item["sk"]["S"]
            if 0 <= max_identifiers <= held and sk.split("#")[0] != read[-1][0].split("#")[0]:
                return read, False
            slices = decode_slices(item["d"]["B"])
            read.append((sk, slices))
            held += sum(n for s in slices.values() for n in s.entry.counts().values())
        return read, True

    def gather(
        self, waiting: GroupWaiting, outbox: Outbox, max_identifiers: int = MAX_IDENTIFIERS_PER_FLUSH
    ) -> tuple[list[Waiting], bool]:
        """Move the group's oldest entries into its audiences' outboxes (one entry per audience, netted), then
        move the cursor past them; returns the summaries of the audiences written (as written), and whether
        nothing waits in the group any more.
        Only the flusher calls this (it is the outboxes' one writer). A failure midway leaves the cursor, and the
        next gathering writes them again: re-sending a change is harmless, and the order is kept. At most
        `max_identifiers` are read (memory stays bounded); the rest is gathered at the next pass."""
        read, complete = self.oldest(waiting, max_identifiers)
        by_audience: dict[str, list[Slice]] = {}
        for _, slices in read:
            for audience, piece in slices.items():
                by_audience.setdefault(audience, []).append(piece)
        summaries = []
        for audience, pieces in sorted(by_audience.items()):
            name = next((p.name for p in reversed(pieces) if p.name), "")
            summary = outbox.append(audience, net(p.entry for p in pieces), name, min(p.queued for p in pieces))
            summaries += [summary] if summary else []
        return summaries, self._finish(waiting, read[-1][0] if read else waiting.gathered, complete)

    def _finish(self, waiting: GroupWaiting, gathered: str, complete: bool) -> bool:
        """The group's item after a gathering: the cursor at `gathered`; nothing waits when everything was read
        and nothing was appended meanwhile; else, when something was appended meanwhile, it was queued no later
        than now. True: nothing waits any more."""
        key, cursor = (INBOX, waiting.group), {":g": {"S": gathered}}
        if not complete:  # the rest is as old as it was: gathered at the next pass
            self._update(key, "SET gathered = :g", cursor, None, "attribute_exists(pk)")
            return False
        values = {**cursor, ":last": {"N": f"{waiting.last:.3f}"}}
        names = {"#first": "first", "#last": "last"}
        if self._update(key, "SET gathered = :g REMOVE #first", values, names, "#last = :last") is not None:
            return True
        values = {**cursor, ":q": {"N": f"{self.clock():.3f}"}}
        self._update(key, "SET gathered = :g, #first = :q", values, {"#first": "first"}, "attribute_exists(pk)")
        return False
