"""The outbox: per audience, the contact-list changes the ledger holds and Criteo does not have yet.

The flusher gathers them from the inbox (inbox.py: one entry per group of audiences and sync batch) into one
entry per audience and gathering, nets an audience's entries and sends them when the group is worth a call
(docs/design.md, "Fewest calls"). The flusher is the outboxes' only writer. Items in the ledger's table:
- (`out#<audience>`, `<seq>#<part>`): an entry (`d`: zlib-compressed JSON `{"r": {type: [ids]}, "a": ...}`,
  `q`: when its oldest change was queued). Flushed entries are not deleted (a delete is billed like a write):
  the audience's cursor moves past them, and they expire ENTRY_KEPT_SECONDS after they were written, which
  DynamoDB does for free. Entries that wait that long (a paused audience, an advertiser without credentials)
  are written again with a new expiry every REFRESH_SECONDS;
- (`outbox`, `<audience>`): the audience's item. `seq`, one more at every append, orders its entries, and
  `cursor` is the sort key of the last entry flushed; what is waiting: `first` (oldest change queued; absent:
  nothing waits), `last` (last append), `kept` (when the oldest entry waiting was written or written again),
  `name` (Segment's display name), `n_<op>_<type>` (identifiers appended, an upper bound), `fails` and `retry`
  (backoff after a failed call); `segment_id` and `segment_name`, the Criteo segment the flusher last sent the
  audience to (a new name in the settings renames it), `lookalike_id`, and the `advertiser` whose account they
  are in. The item never expires while something waits; emptied, it expires SUMMARY_KEPT_SECONDS later, after
  every entry written before it (`seq` and `cursor` must not start again below entries that are kept).
- (`segment`, `<audience>`): the same segment attributes, kept without expiry (written only when they change),
  so an audience idle for days is still renamed, not sent to a new segment.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from audience_sync.audience_config import DEFAULT_ADVERTISER
from audience_sync.plan import Entry
from audience_sync.records import REMOVE
from audience_sync.table import Item, Table

SUMMARIES = "outbox"
SEGMENTS = "segment"
SEGMENT_ATTRIBUTES = ("segment_id", "segment_name", "lookalike_id", "advertiser")
ENTRIES = "out#"
MAX_IDENTIFIERS_PER_ITEM = 4_000  # ~260 KB of hashed emails before compression: under DynamoDB's 400 KB
MAX_IDENTIFIERS_PER_FLUSH = 500_000  # read by one flush of an audience (~150 MB decoded): ten full PATCHes
ENTRY_KEPT_SECONDS = 14 * 24 * 3600  # an entry (of the outbox or the inbox) expires this long after it is written
SUMMARY_KEPT_SECONDS = ENTRY_KEPT_SECONDS + 24 * 3600  # an emptied item outlives the entries written before it
REFRESH_SECONDS = 7 * 24 * 3600  # entries waiting this long are written again, with a new expiry
REFRESH_PAGE_ITEMS = 100  # entries written again per round of batch writes
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
    counters: tuple[str, ...] = ()  # every `n_` attribute of the item (zero ones too)
    segment_id: str = ""  # the Criteo segment last sent to, and its name then
    segment_name: str = ""
    lookalike_id: str = ""  # the lookalike segment seeded from it, once created
    advertiser: str = DEFAULT_ADVERTISER  # whose account those segments are in
    emptied: bool = False  # a flush left nothing waiting (the item no longer counts as waiting)
    cursor: str = ""  # the sort key of the last entry flushed: those after it wait
    kept: float = 0.0  # when the oldest entry waiting was written (or written again)
    unsaved: dict[str, str] = field(default_factory=dict)  # segment attributes the item gets at the flush's update


@dataclass
class Stored:
    """One stored entry."""

    sk: str
    entry: Entry
    queued: float
    expires: bool = True  # False: written by a version before the cursor, deleted once flushed

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


def document(entry: Entry) -> dict[str, dict[str, list[str]]]:
    """An entry as JSON: `{"r": {type: [ids]}, "a": ...}`."""
    return {
        key: {t: sorted(ids) for t, ids in by_type.items() if ids}
        for key, by_type in (("r", entry.removes), ("a", entry.adds))
    }


def entry_of(document: dict[str, Any]) -> Entry:
    """An entry from its JSON."""
    return Entry(
        {t: set(ids) for t, ids in document.get("r", {}).items()},
        {t: set(ids) for t, ids in document.get("a", {}).items()},
    )


def encode(entry: Entry) -> bytes:
    """An entry as stored."""
    return zlib.compress(json.dumps(document(entry), separators=(",", ":")).encode(), 6)


def decode(data: bytes) -> Entry:
    """An entry from its stored form."""
    return entry_of(json.loads(zlib.decompress(data)))


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


def _counting(counts: dict[Group, int]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The `ADD` clause (empty without counts), names and values that add `counts` to the summary's counters."""
    names = {f"#n{i}": _counter(group) for i, group in enumerate(counts)}
    values: dict[str, Any] = {f":n{i}": {"N": str(n)} for i, n in enumerate(counts.values())}
    clause = ("ADD " + ", ".join(f"#n{i} :n{i}" for i in range(len(counts)))) if counts else ""
    return clause, names, values


class Outbox(Table):
    """The outbox items of the table."""

    def append(self, audience_key: str, entry: Entry, name: str, queued: float) -> Waiting | None:
        """Append an entry: the audience's item numbers and counts it (first), then it is stored (in parts). An
        entry counted but not stored only makes a flush find less than the counts said. Returns the audience's
        summary as written (None: nothing to append), so the flusher need not read the summaries again."""
        if not entry:
            return None
        adds, names, values = _counting(entry.counts())
        values.update({":q": {"N": f"{queued:.3f}"}, ":now": {"N": f"{self.clock():.3f}"}, ":one": {"N": "1"}})
        names.update({"#first": "first", "#last": "last", "#t": "ttl", "#k": "kept"})
        summary = "SET #first = if_not_exists(#first, :q), #last = :now, #k = if_not_exists(#k, :now)"
        if name:  # (a move's entries have none: the one Segment sent stays)
            values[":name"], names["#name"] = {"S": name}, "name"
            summary += ", #name = :name"
        expression = f"{summary} {adds}, seq :one REMOVE #t"
        response = self._update_item(audience_key, expression, values, names, None, returned="ALL_NEW") or {}
        item = response["Attributes"]
        seq = int(item["seq"]["N"])
        self._put(
            [
                self._entry(audience_key, f"{seq:012d}#{index:04d}", part, queued)
                for index, part in enumerate(split(entry))
            ]
        )
        return _waiting(item)

    def _entry(self, audience_key: str, sk: str, entry: Entry, queued: float) -> Item:
        """An entry's item, expiring ENTRY_KEPT_SECONDS from now."""
        return {
            "pk": {"S": ENTRIES + audience_key},
            "sk": {"S": sk},
            "d": {"B": encode(entry)},
            "q": {"N": f"{queued:.3f}"},
            "ttl": {"N": str(int(self.clock()) + ENTRY_KEPT_SECONDS)},
        }

    def waiting(self) -> list[Waiting]:
        """Every audience with something waiting. Strongly consistent: a flush reads the entries after the
        summary's cursor, and a cursor a moment old would send again what the last flush sent."""
        return [_waiting(item) for item in self._query(SUMMARIES) if "first" in item]

    def entries(self, audience_key: str) -> list[Stored]:
        """All of an audience's entries waiting (after its cursor), oldest first."""
        items = self._get([(SUMMARIES, audience_key)])
        cursor = items[0].get("cursor", {}).get("S", "") if items else ""
        return self.oldest(audience_key, cursor, max_identifiers=-1)[0]

    def oldest(
        self, audience_key: str, cursor: str, max_identifiers: int = MAX_IDENTIFIERS_PER_FLUSH
    ) -> tuple[list[Stored], bool]:
        """An audience's oldest entries after `cursor` (its summary's), whole (every part of each), until they
        hold `max_identifiers` (-1: no limit), and whether that is all of them: a flush's memory stays bounded
        however long Criteo was away; the rest wait for the next pass."""
        read: list[Stored] = []
        held = 0
        for item in self._waiting_items(audience_key, cursor):
            stored = Stored(item["sk"]["S"], decode(item["d"]["B"]), float(item["q"]["N"]), "ttl" in item)
            if 0 <= max_identifiers <= held and stored.seq != read[-1].seq:
                return read, False
            read.append(stored)
            held += sum(stored.entry.counts().values())
        return read, True

    def finish(self, waiting: Waiting, outcome: Outcome) -> bool:
        """Move the audience's cursor past the entries read, the carry written after them (and before any entry
        appended since), in the summary's update: dropped when nothing was appended meanwhile and nothing is
        carried, else the counts corrected. `waiting` is kept in step with the item (the flusher keeps the
        summaries it read). True when nothing waits for the audience any more."""
        queued = min((stored.queued for stored in outcome.read), default=self.clock())
        cursor = outcome.read[-1].sk if outcome.read else waiting.cursor
        if outcome.carry:
            parts = enumerate(split(outcome.carry))
            self._put([self._entry(waiting.audience_key, carry_key(cursor, i), part, queued) for i, part in parts])
        self._delete((ENTRIES + waiting.audience_key, s.sk) for s in outcome.read if not s.expires)
        moved = {":cursor": {"S": cursor}, **_values(waiting.unsaved)}
        names = {"#cur": "cursor", **_names(waiting.unsaved)}
        if not outcome.carry and outcome.complete:
            # Nothing waits unless something was appended meanwhile; the item stays (its `seq` and cursor with
            # it) and starts to expire.
            ttl = str(int(self.clock()) + SUMMARY_KEPT_SECONDS)
            unchanged = {":last": {"N": f"{waiting.last:.3f}"}, ":ttl": {"N": ttl}, **moved}
            cleared = {"#first": "first", "#last": "last", "#t": "ttl", "#k": "kept", **names}
            removed = ", ".join(("#first", "fails", "retry", "#k", *waiting.counters))
            expression = f"SET #t = :ttl, #cur = :cursor{_setting(waiting.unsaved)} REMOVE {removed}"
            if self._update_item(waiting.audience_key, expression, unchanged, cleared, "#last = :last") is not None:
                waiting.emptied, waiting.unsaved, waiting.cursor = True, {}, cursor
                return True
        carry_counts = outcome.carry.counts() if outcome.carry else {}
        groups = set(carry_counts) | set(outcome.counts_before)
        delta = {group: carry_counts.get(group, 0) - outcome.counts_before.get(group, 0) for group in groups}
        adds, counted, values = _counting(delta)
        # The oldest change still waiting: the carry's; else (approximately) the first left unread; else one
        # appended during this flush, queued no later than now.
        oldest = queued if outcome.carry else outcome.read[-1].queued if not outcome.complete else self.clock()
        values.update({":q": {"N": f"{oldest:.3f}"}, ":zero": {"N": "0"}, **moved})
        names.update({"#first": "first", **counted})
        expression = f"SET #first = :q, fails = :zero, #cur = :cursor{_setting(waiting.unsaved)} {adds}"
        self._update_item(waiting.audience_key, expression, values, names)
        waiting.unsaved, waiting.cursor = {}, cursor
        counts = {group: waiting.counts.get(group, 0) + delta.get(group, 0) for group in {*waiting.counts, *delta}}
        waiting.counts = {group: n for group, n in counts.items() if n > 0}
        waiting.counters = tuple(sorted({*waiting.counters, *map(_counter, delta)}))
        waiting.first, waiting.fails = float(f"{oldest:.3f}"), 0
        return False

    def refresh(self, waiting: Waiting) -> None:
        """Write the audience's waiting entries again, as they are, with a new expiry (its changes have waited
        REFRESH_SECONDS: its flushes are paused, or its advertiser's credentials can't be read), then note it."""
        now = self.clock()
        page: list[Item] = []
        for item in self._waiting_items(waiting.audience_key, waiting.cursor):
            page.append({**item, "ttl": {"N": str(int(now) + ENTRY_KEPT_SECONDS)}})
            if len(page) == REFRESH_PAGE_ITEMS:
                self._put(page)
                page = []
        self._put(page)
        self._update_item(waiting.audience_key, "SET #k = :now", {":now": {"N": f"{now:.3f}"}}, {"#k": "kept"})
        waiting.kept = float(f"{now:.3f}")

    def _waiting_items(self, audience_key: str, cursor: str) -> Iterator[Item]:
        """The entries after `cursor`, oldest first, without those past their expiry (DynamoDB deletes them up to
        days later, and a summary that expired meanwhile starts its numbering again)."""
        now = self.clock()
        for item in self._items(ENTRIES + audience_key, after=cursor):
            if "ttl" not in item or float(item["ttl"]["N"]) > now:
                yield item

    def remember(self, audience_key: str, attributes: dict[str, str]) -> None:
        """Note string attributes of the audience's Criteo segments (`segment_id`, `segment_name`, `lookalike_id`,
        `advertiser`), on its item and on its segment record (which does not expire)."""
        self._update_item(audience_key, "SET" + _setting(attributes)[1:], _values(attributes), _names(attributes))
        self._record(audience_key, attributes)

    def remember_at_finish(self, waiting: Waiting, attributes: dict[str, str]) -> None:
        """`remember` during a flush: the segment record is written now, the item gets the attributes with the
        flush's own update of it (`finish`, `failed`) instead of a write of their own (a flush that dies before
        leaves the item without them, and `recall` reads them from the record)."""
        self._record(waiting.audience_key, attributes)
        waiting.unsaved.update(attributes)

    def _record(self, audience_key: str, attributes: dict[str, str]) -> None:
        """Write segment attributes to the audience's segment record (created if absent)."""
        expression = "SET" + _setting(attributes)[1:]
        self._update_item(audience_key, expression, _values(attributes), _names(attributes), None, SEGMENTS)

    def remembered(self, audiences: Iterable[str]) -> dict[str, dict[str, str]]:
        """The segment records of these audiences (those that have one): attribute -> value."""
        return _segment_records(self._get((SEGMENTS, audience) for audience in audiences))

    def every_remembered(self) -> dict[str, dict[str, str]]:
        """Every audience's segment record (eventually consistent: read when the settings changed)."""
        return _segment_records(self._query(SEGMENTS, consistent=False))

    def recall(self, waiting: Waiting) -> None:
        """Fill in what the audience's segment record remembers, for an item that had forgotten it (new, or
        expired after an hour idle): the segment to rename, the advertiser it is in, its lookalike."""
        record = self.remembered([waiting.audience_key]).get(waiting.audience_key, {})
        waiting.segment_id, waiting.segment_name = record.get("segment_id", ""), record.get("segment_name", "")
        waiting.lookalike_id = record.get("lookalike_id", "")
        waiting.advertiser = record.get("advertiser", DEFAULT_ADVERTISER)

    def failed(self, waiting: Waiting, retry_at: float) -> None:
        """Count a failed flush and when to try again (on the item and on `waiting`)."""
        values = {":f": {"N": str(waiting.fails + 1)}, ":r": {"N": f"{retry_at:.3f}"}, **_values(waiting.unsaved)}
        expression = f"SET fails = :f, retry = :r{_setting(waiting.unsaved)}"
        self._update_item(waiting.audience_key, expression, values, _names(waiting.unsaved) or None)
        waiting.unsaved = {}
        waiting.fails, waiting.retry = waiting.fails + 1, float(f"{retry_at:.3f}")

    def _update_item(
        self,
        audience_key: str,
        expression: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        condition: str | None = "attribute_exists(pk)",
        pk: str = SUMMARIES,
        returned: str = "NONE",
    ) -> dict[str, Any] | None:
        """UpdateItem on the audience's item (or its segment record): the response, or None when `condition` did
        not hold."""
        return self._update((pk, audience_key), expression, values, names, condition, returned)


def _setting(attributes: dict[str, str]) -> str:
    """`, #s0 = :s0, ...`: the SET clauses (to follow others) that write these string attributes."""
    return "".join(f", #s{i} = :s{i}" for i in range(len(attributes)))


def _names(attributes: dict[str, str]) -> dict[str, str]:
    return {f"#s{i}": name for i, name in enumerate(attributes)}


def _values(attributes: dict[str, str]) -> dict[str, Any]:
    return {f":s{i}": {"S": value} for i, value in enumerate(attributes.values())}


def carry_key(after: str, index: int) -> str:
    """The sort key of part `index` of a carry written after the entry `after`: after it (`d` sorts after the
    digits of its parts and an earlier version's `c` carries; a carry read again gets the next generation) and
    before any entry appended since (a higher sequence number)."""
    seq, _, part = after.partition("#")
    generation = int(part[1:7]) + 1 if part.startswith("d") else 1
    return f"{seq}#d{generation:06d}{index:04d}"


def forgotten(advertiser: str) -> dict[str, str]:
    """The segment attributes of an audience moved to `advertiser`: its segments there are not known yet."""
    return {"advertiser": advertiser, "segment_id": "", "segment_name": "", "lookalike_id": ""}


def _segment_records(items: Iterable[Item]) -> dict[str, dict[str, str]]:
    """Segment record items as audience -> attribute -> value."""
    return {item["sk"]["S"]: {name: item[name]["S"] for name in SEGMENT_ATTRIBUTES if name in item} for item in items}


def _waiting(item: Item) -> Waiting:
    counts: dict[Group, int] = {}
    counters = tuple(sorted(name for name in item if name.startswith("n_")))
    for name in counters:
        value = item[name]
        if int(value["N"]) > 0:
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
        counters=counters,
        segment_id=item.get("segment_id", {}).get("S", ""),
        segment_name=item.get("segment_name", {}).get("S", ""),
        lookalike_id=item.get("lookalike_id", {}).get("S", ""),
        advertiser=item.get("advertiser", {}).get("S", DEFAULT_ADVERTISER),
        cursor=item.get("cursor", {}).get("S", ""),
        kept=float((item.get("kept") or item["last"])["N"]),  # (an item an earlier version wrote: its last append)
    )


def stored_counts(read: Iterable[Stored]) -> dict[Group, int]:
    """The counts the summary holds for these entries."""
    total: dict[Group, int] = {}
    for stored in read:
        for group, n in stored.entry.counts().items():
            total[group] = total.get(group, 0) + n
    return total
