"""Realistic audience-change streams, how they reach the sync function, and the fewest Criteo calls they need.

Nothing here uses the planner (audience_sync.plan): the minimum is computed from the stream itself, so
the ratio "calls made / minimum" can fail.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from audience_sync.records import ADD, REMOVE, AudienceChange, pack_changes
from devtools.minimum import minimum_patches, newest_per_user, patches_for

EVENTS_PER_SEGMENT_REQUEST = 1_000  # Segment's batches (peers.md: up to ~1,000 events)
LAMBDA_PAYLOAD_BYTES = 6_000_000  # Lambda's invocation payload cap; the SQS event source fills up to it
SQS_RECORD_OVERHEAD_BYTES = 1_000  # receipt handle, attributes, ARN... per SQS record in the Lambda event
MAX_MESSAGES_PER_INVOCATION = 1_000  # SyncBatchSize default
TOKEN_LIFETIME_SECONDS = 900.0
DUPLICATE_SHARE = 0.05  # redeliveries of an earlier event (same messageId)
REMOVE_SHARE = 0.3
MADID_SHARE = 0.15


@dataclass(frozen=True)
class StreamSpec:
    """A stream: how many changes over how many audiences."""

    changes: int
    audiences: int
    seed: int = 7

    @property
    def label(self) -> str:
        """Short name, e.g. `100k/20`."""
        n = self.changes
        size = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1_000}k" if n >= 1_000 else str(n)
        return f"{size}/{self.audiences}"


def generate(spec: StreamSpec) -> list[AudienceChange]:
    """Changes in arrival order: mixed add/remove, email and madid, repeat users, late and duplicate deliveries."""
    rng = random.Random(spec.seed)
    users = max(10, spec.changes // 3)
    start_ms = 1_790_000_000_000
    changes: list[AudienceChange] = []
    for index in range(spec.changes):
        if changes and rng.random() < DUPLICATE_SHARE:
            changes.append(changes[max(0, len(changes) - rng.randrange(1, 2_000))])
            continue
        user = rng.randrange(users)
        if rng.random() < MADID_SHARE:
            id_type, identifier = "madid", f"{user:08x}-0000-4000-8000-{user:012x}"
        else:
            id_type, identifier = "email", hashlib.sha256(f"user{user}@example.com".encode()).hexdigest()
        audience = f"bench_audience_{rng.randrange(spec.audiences):03d}"
        operation = REMOVE if rng.random() < REMOVE_SHARE else ADD
        # Events arrive roughly in time order, up to 5 minutes late.
        timestamp = start_ms + index * 10 - rng.randrange(300_000)
        changes.append(AudienceChange(audience, "", operation, id_type, identifier, timestamp, f"evt-{index}"))
    return changes


def segment_requests(changes: list[AudienceChange]) -> Iterator[list[AudienceChange]]:
    """The stream cut into Segment deliveries (one webhook request each)."""
    for start in range(0, len(changes), EVENTS_PER_SEGMENT_REQUEST):
        yield changes[start : start + EVENTS_PER_SEGMENT_REQUEST]


def sync_batches(changes: list[AudienceChange]) -> list[list[tuple[str, str]]]:
    """What the sync function receives: ingest packs each request into messages; the SQS event source
    fills each invocation up to 6 MB (or 1,000 messages). Each batch is a list of (message id, body)."""
    batches: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    size = 0
    serial = 0
    for request in segment_requests(changes):
        for body in pack_changes(request):
            cost = len(body) + SQS_RECORD_OVERHEAD_BYTES
            if current and (size + cost > LAMBDA_PAYLOAD_BYTES or len(current) >= MAX_MESSAGES_PER_INVOCATION):
                batches.append(current)
                current, size = [], 0
            current.append((f"msg-{serial}", body))
            serial += 1
            size += cost
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Minimum:
    """The fewest Criteo calls: PATCHes for the batches as delivered, for the whole stream at once, look-ups."""

    patches_per_batch: int
    patches_whole_stream: int
    new_audiences: int
    identifiers: int

    def total(self, tokens: int) -> int:
        """Calls including `tokens` tokens (one per 15 minutes of running) and one look-up per new audience."""
        return self.patches_per_batch + tokens + self.new_audiences


def minimum_calls(changes: list[AudienceChange], batches: list[list[AudienceChange]]) -> Minimum:
    """Per batch: newest change per (audience, type, identifier), minus what an earlier batch already applied
    at the same or a newer version; then groups x ceil(n / 50,000). Also the same for the stream in one batch."""
    applied: dict[tuple[str, str, str], tuple[int, str]] = {}
    per_batch = 0
    identifiers = 0
    for batch in batches:
        groups: Counter[tuple[str, str, str]] = Counter()
        for key, change in newest_per_user(batch).items():
            version = (change.timestamp_ms, change.message_id)
            if key in applied and applied[key] >= version:
                continue
            applied[key] = version
            groups[(change.audience_key, change.operation, change.identifier_type)] += 1
        per_batch += patches_for(groups.values())
        identifiers += sum(groups.values())
    audiences = len({c.audience_key for c in changes})
    return Minimum(per_batch, minimum_patches(changes), audiences, identifiers)


def tokens_needed(elapsed_seconds: float) -> int:
    """One token per started 15 minutes."""
    return max(1, math.ceil(elapsed_seconds / TOKEN_LIFETIME_SECONDS))
