"""The outbox: per audience, the contact-list changes the ledger holds and Criteo does not have yet.

The sync appends one entry per audience and batch (under the audience's lease, numbered by it); the flusher
nets an audience's entries and sends them when the group is worth a call (docs/design.md, "Fewest calls").
Items in the ledger's table:
- (`out#<audience>`, `<seq>#<part>`): an entry (`d`: zlib-compressed JSON `{"r": {type: [ids]}, "a": ...}`,
  `q`: when its oldest change was queued);
- (`outbox`, `<audience>`): what is waiting for the audience: `first` (oldest change queued), `last` (last
  append), `name` (Segment's display name), `n_<op>_<type>` (identifiers appended, an upper bound),
  `fails` and `retry` (backoff after a failed call).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from audience_sync.plan import Entry
from audience_sync.records import REMOVE
from audience_sync.table import Item, Table

SUMMARIES = "outbox"
ENTRIES = "out#"
MAX_IDENTIFIERS_PER_ITEM = 4_000  # ~260 KB of hashed emails before compression: under DynamoDB's 400 KB
MAX_IDENTIFIERS_PER_FLUSH = 500_000  # read by one flush of an audience (~150 MB decoded): ten full PATCHes
Group = tuple[str, str]  # (operation, identifier type)


@dataclass
class Waiting:
    """What is waiting for one audience (the summary item)."""

    audience_key: str
    name: str
    first: float
    last: float
    counts: dict[Group, int]
    fails: int = 0
    retry: float = 0.0


@dataclass
class Stored:
    """One stored entry."""

    sk: str
    entry: Entry
    queued: float

    @property
    def seq(self) -> str:
        """The audience lease's sequence number it was appended under (its parts and carries share it)."""
        return self.sk.split("#")[0]


@dataclass
class Outcome:
    """What a flush of one audience did with the entries it read."""

    read: list[Stored]
    carry: Entry | None = None  # netted changes not sent, kept in place of the entries read
    counts_before: dict[Group, int] = field(default_factory=dict)
    complete: bool = True  # the entries read were all the audience had


def encode(entry: Entry) -> bytes:
    """An entry as stored."""
    document = {
        key: {t: sorted(ids) for t, ids in by_type.items() if ids}
        for key, by_type in (("r", entry.removes), ("a", entry.adds))
    }
    return zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)


def decode(data: bytes) -> Entry:
    """An entry from its stored form."""
    document = json.loads(zlib.decompress(data))
    return Entry(
        {t: set(ids) for t, ids in document.get("r", {}).items()},
        {t: set(ids) for t, ids in document.get("a", {}).items()},
    )


def split(entry: Entry, size: int = MAX_IDENTIFIERS_PER_ITEM) -> list[Entry]:
    """An entry in parts of at most `size` identifiers (removes before adds, so order is kept)."""
    parts: list[Entry] = []
    current, room = Entry({}, {}), size
    for operation, by_type in entry.by_operation():
        for id_type in sorted(by_type):
            values = sorted(by_type[id_type])
            while values:
                taken, values = values[:room], values[room:]
                target = current.removes if operation == REMOVE else current.adds
                target.setdefault(id_type, set()).update(taken)
                room -= len(taken)
                if room == 0:
                    parts.append(current)
                    current, room = Entry({}, {}), size
    if current:
        parts.append(current)
    return parts


def _counter(group: Group) -> str:
    return f"n_{group[0]}_{group[1]}"


class Outbox(Table):
    """The outbox items of the table."""

    def append(self, audience_key: str, seq: int, entry: Entry, name: str, queued: float) -> None:
        """Store an entry (under the audience's lease `seq`), then count it in the audience's summary."""
        parts = split(entry)
        self._put(
            [
                {
                    "pk": {"S": ENTRIES + audience_key},
                    "sk": {"S": f"{seq:012d}#{index:04d}"},
                    "d": {"B": encode(part)},
                    "q": {"N": f"{queued:.3f}"},
                }
                for index, part in enumerate(parts)
            ]
        )
        counts = entry.counts()
        names = {f"#{i}": _counter(group) for i, group in enumerate(counts)}
        values: dict[str, Any] = {f":{i}": {"N": str(n)} for i, n in enumerate(counts.values())}
        values.update({":q": {"N": f"{queued:.3f}"}, ":now": {"N": f"{self.clock():.3f}"}, ":name": {"S": name}})
        adds = ", ".join(f"#{i} :{i}" for i in range(len(counts)))
        self._dynamo(
            "UpdateItem",
            partial(
                self.dynamodb.update_item,
                TableName=self.table,
                Key={"pk": {"S": SUMMARIES}, "sk": {"S": audience_key}},
                UpdateExpression=f"SET #first = if_not_exists(#first, :q), #last = :now, #name = :name ADD {adds}",
                ExpressionAttributeNames={"#first": "first", "#last": "last", "#name": "name", **names},
                ExpressionAttributeValues=values,
            ),
        )

    def waiting(self) -> list[Waiting]:
        """Every audience with something waiting."""
        return [_waiting(item) for item in self._query(SUMMARIES)]

    def entries(self, audience_key: str) -> list[Stored]:
        """All of an audience's entries, oldest first."""
        return self.oldest(audience_key, max_identifiers=-1)[0]

    def oldest(self, audience_key: str, max_identifiers: int = MAX_IDENTIFIERS_PER_FLUSH) -> tuple[list[Stored], bool]:
        """An audience's oldest entries, whole (every part of each), until they hold `max_identifiers` (-1: no
        limit), and whether that is all of them: a flush's memory stays bounded however long Criteo was away;
        the rest wait for the next pass."""
        read: list[Stored] = []
        held = 0
        for item in self._items(ENTRIES + audience_key):
            stored = Stored(item["sk"]["S"], decode(item["d"]["B"]), float(item["q"]["N"]))
            if 0 <= max_identifiers <= held and stored.seq != read[-1].seq:
                return read, False
            read.append(stored)
            held += sum(stored.entry.counts().values())
        return read, True

    def finish(self, waiting: Waiting, outcome: Outcome) -> bool:
        """Replace the entries read by the carry (written after them and before any entry appended since),
        then update the summary: dropped when nothing was appended meanwhile and nothing is
        carried, else the counts corrected. True when nothing waits for the audience any more."""
        queued = min((stored.queued for stored in outcome.read), default=self.clock())
        carried: list[Item] = []
        if outcome.carry:
            # After the entries read (same sequence number, `c` sorts after the digits of their parts) and
            # before any appended since (higher sequence numbers); in parts, like any entry.
            seq = outcome.read[-1].seq
            carried = [
                {
                    "pk": {"S": ENTRIES + waiting.audience_key},
                    "sk": {"S": f"{seq}#c{index:04d}"},
                    "d": {"B": encode(part)},
                    "q": {"N": f"{queued:.3f}"},
                }
                for index, part in enumerate(split(outcome.carry))
            ]
            self._put(carried)
        rewritten = {item["sk"]["S"] for item in carried}
        self._delete((ENTRIES + waiting.audience_key, s.sk) for s in outcome.read if s.sk not in rewritten)
        key = {"pk": {"S": SUMMARIES}, "sk": {"S": waiting.audience_key}}
        unchanged = {":last": {"N": f"{waiting.last:.3f}"}}
        if not outcome.carry and outcome.complete:
            drop = partial(
                self.dynamodb.delete_item,
                TableName=self.table,
                Key=key,
                ConditionExpression="#last = :last",
                ExpressionAttributeNames={"#last": "last"},
                ExpressionAttributeValues=unchanged,
            )
            if self._conditional("DeleteItem", drop) is not None:
                return True
        carry_counts = outcome.carry.counts() if outcome.carry else {}
        groups = set(carry_counts) | set(outcome.counts_before)
        names = {f"#{i}": _counter(group) for i, group in enumerate(groups)}
        values: dict[str, Any] = {
            f":{i}": {"N": str(carry_counts.get(group, 0) - outcome.counts_before.get(group, 0))}
            for i, group in enumerate(groups)
        }
        # The oldest change still waiting: the carry's; else (approximately) the first left unread; else one
        # appended during this flush, queued no later than now.
        oldest = queued if outcome.carry else outcome.read[-1].queued if not outcome.complete else self.clock()
        values.update({":q": {"N": f"{oldest:.3f}"}, ":zero": {"N": "0"}})
        adds = (" ADD " + ", ".join(f"#{i} :{i}" for i in range(len(groups)))) if groups else ""
        self._update(waiting.audience_key, f"SET #first = :q, fails = :zero{adds}", values, names)
        return False

    def failed(self, waiting: Waiting, retry_at: float) -> None:
        """Count a failed flush and when to try again."""
        values = {":f": {"N": str(waiting.fails + 1)}, ":r": {"N": f"{retry_at:.3f}"}}
        self._update(waiting.audience_key, "SET fails = :f, retry = :r", values)

    def _update(
        self, audience_key: str, expression: str, values: dict[str, Any], names: dict[str, str] | None = None
    ) -> None:
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": SUMMARIES}, "sk": {"S": audience_key}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": values,
            "ConditionExpression": "attribute_exists(pk)",
        }
        if "#first" in expression:
            names = {"#first": "first", **(names or {})}
        if names:
            arguments["ExpressionAttributeNames"] = names
        self._conditional("UpdateItem", partial(self.dynamodb.update_item, **arguments))


def _waiting(item: Item) -> Waiting:
    counts: dict[Group, int] = {}
    for name, value in item.items():
        if name.startswith("n_") and int(value["N"]) > 0:
            operation, id_type = name[2:].split("_", 1)
            counts[(operation, id_type)] = int(value["N"])
    return Waiting(
        audience_key=item["sk"]["S"],
        name=item.get("name", {}).get("S", ""),
        first=float(item["first"]["N"]),
        last=float(item["last"]["N"]),
        counts=counts,
        fails=int(item.get("fails", {}).get("N", "0")),
        retry=float(item.get("retry", {}).get("N", "0")),
    )


def stored_counts(read: Iterable[Stored]) -> dict[Group, int]:
    """The counts the summary holds for these entries."""
    total: dict[Group, int] = {}
    for stored in read:
        for group, n in stored.entry.counts().items():
            total[group] = total.get(group, 0) + n
    return total
