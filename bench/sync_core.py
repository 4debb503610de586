"""Benchmark 2: records/s on one core of the pure sync path, against json.loads + SHA-256 (the floor).

Pure path, as AudienceSync runs it minus the I/O: decode SQS bodies -> dedupe and keep the newest change
per user -> the ordering-store key of each user -> group and chunk -> the PATCH request bodies.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from audience_sync.ordering import state_key
from audience_sync.plan import Sourced, newest_per_identity, plan_contact_list_patches
from audience_sync.records import pack_changes, unpack_changes
from bench.streams import StreamSpec, generate, segment_requests
from bench.timing import best_thread_seconds

TARGET_RECORDS_PER_SECOND = 200_000


def pure_sync(messages: list[tuple[str, str]]) -> int:
    """The sync core without I/O; returns the bytes of PATCH bodies it would send."""
    items: list[Sourced] = []
    for message_id, body in messages:
        items.extend(Sourced(change, message_id) for change in unpack_changes(body))
    newest = newest_per_identity(items)
    keys = {state_key(item.change) for item in newest.values()}
    sent = 0
    for plan in plan_contact_list_patches(newest.values()):
        attributes = {
            "operation": plan.operation,
            "identifierType": plan.identifier_type,
            "identifiers": plan.identifiers,
        }
        sent += len(json.dumps({"data": {"type": "ContactlistAmendment", "attributes": attributes}}))
    return sent + len(keys)


def floor(messages: list[tuple[str, str]]) -> int:
    """The near-physical floor: json.loads of every body, one SHA-256 per record, one dict insert."""
    seen: dict[str, list[Any]] = {}
    for _, body in messages:
        for row in json.loads(body)["r"]:
            seen[hashlib.sha256(f"{row[0]}\x1f{row[3]}\x1f{row[4]}".encode()).hexdigest()] = row
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
