"""Benchmark 2: records/s on one core of the pure sync path, against json.loads + SHA-256 (the floor).

Pure path, as AudienceSync and the flusher run it minus the I/O, against an empty ledger: decode SQS bodies ->
group per audience and user -> fold each user's changes into their Membership in version order -> the
difference with what Criteo held -> one inbox entry per group of audiences (encoded as stored) -> gathered:
decoded, netted per audience, each audience's outbox entry encoded as stored -> decoded, netted and chunked
(net, patches) -> the PATCH request bodies and the ledger items' encoded identifiers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from audience_sync.inbox import Slice, decode_slices, encode_slices, group_of
from audience_sync.membership import ByType, Membership, difference
from audience_sync.outbox import decode, encode
from audience_sync.plan import Entry, net, outbox_entry, patches
from audience_sync.records import pack_changes, unpack_changes
from audience_sync.sync import Sourced, carried_by_exits
from bench.streams import StreamSpec, generate, segment_requests
from bench.timing import best_thread_seconds

TARGET_RECORDS_PER_SECOND = 200_000


def pure_sync(messages: list[tuple[str, str]]) -> int:
    """The sync core without I/O; returns the bytes of PATCH bodies and ledger items it would send."""
    by_audience: dict[str, dict[str, list[Sourced]]] = {}
    for message_id, body in messages:
        for change in unpack_changes(body):
            by_audience.setdefault(change.audience_key, {}).setdefault(change.user, []).append(
                Sourced(change, message_id, 0.0)
            )
    sent = 0
    groups: dict[str, dict[str, Slice]] = {}
    for audience_key, users in sorted(by_audience.items()):
        differences: dict[str, tuple[ByType, ByType]] = {}
        for user, items in users.items():
            state = Membership()  # the ledger knows nobody yet
            for item in sorted(items, key=lambda i: i.change.version):
                state.apply(item.change)
            state.live = state.is_in
            # A user the ledger never saw who ends out: their exits remove what they carry.
            before = {} if state.is_in else carried_by_exits(items)
            added, removed = difference(before, state.sent())
            if added or removed:
                differences[user] = (added, removed)
            sent += len(state.encode())
        groups.setdefault(group_of(audience_key), {})[audience_key] = Slice(outbox_entry(differences), "", 0.0)
    for slices in groups.values():
        stored = encode_slices(slices)
        sent += len(stored)
        for audience_key, piece in sorted(decode_slices(stored).items()):
            gathered = encode(net([piece.entry]))
            sent += len(gathered)
            sent += _bodies(audience_key, decode(gathered))
    return sent


def _bodies(audience_key: str, entry: Entry) -> int:
    """The bytes of the PATCH request bodies for an audience's netted entry."""
    sent = 0
    for plan in patches(audience_key, net([entry])):
        attributes = {
            "operation": plan.operation,
            "identifierType": plan.identifier_type,
            "identifiers": plan.identifiers,
        }
        sent += len(json.dumps({"data": {"type": "ContactlistAmendment", "attributes": attributes}}))
    return sent


def floor(messages: list[tuple[str, str]]) -> int:
    """The near-physical floor: json.loads of every body, one SHA-256 per record (of its audience and user),
    one dict insert."""
    seen: dict[str, list[Any]] = {}
    for _, body in messages:
        for row in json.loads(body)["r"]:
            seen[hashlib.sha256(f"{row[0]}\x1f{row[3]}".encode()).hexdigest()] = row
    return len(seen)


def messages_of(records: int) -> list[tuple[str, str]]:
    """A sync batch of `records` records (20 audiences), packed as ingest packs them."""
    changes = generate(StreamSpec(records, 20, seed=3))
    bodies = [body for request in segment_requests(changes) for body in pack_changes(request)]
    return [(f"msg-{i}", body) for i, body in enumerate(bodies)]


def run(quick: bool) -> list[dict[str, Any]]:
    """Throughput at each batch size, and our time over the floor's."""
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    rows = []
    for size in sizes:
        messages = messages_of(size)
        repeats = max(3, 300_000 // size) if not quick else 2
        ours = best_thread_seconds(lambda m=messages: pure_sync(m), repeats)  # type: ignore[misc]
        base = best_thread_seconds(lambda m=messages: floor(m), repeats)  # type: ignore[misc]
        rows.append(
            {
                "records": size,
                "seconds": round(ours, 5),
                "records_per_second": round(size / ours),
                "floor_records_per_second": round(size / base),
                "ratio_to_floor": round(ours / base, 2),
                "target_records_per_second": TARGET_RECORDS_PER_SECOND,
            }
        )
    return rows
