"""Realistic audience-change streams, how they reach the sync function, and the fewest Criteo calls they need.

Nothing here uses the planner, the membership fold or the ledger (audience_sync.plan, .membership, .ledger):
the minimum is computed from the stream itself by devtools.minimum, so the ratio "calls made / minimum" can fail.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from audience_sync.records import ADD, REMOVE, AudienceChange, Identifiers, pack_changes
from devtools.minimum import Replay, minimum_patches, patches_for

EVENTS_PER_SEGMENT_REQUEST = 1_000  # Segment's batches (peers.md: up to ~1,000 events)
LAMBDA_PAYLOAD_BYTES = 6_000_000  # Lambda's invocation payload cap; the SQS event source fills up to it
SQS_RECORD_OVERHEAD_BYTES = 1_000  # receipt handle, attributes, ARN... per SQS record in the Lambda event
MAX_MESSAGES_PER_INVOCATION = 1_000  # SyncBatchSize default
TOKEN_LIFETIME_SECONDS = 900.0
DUPLICATE_SHARE = 0.05  # redeliveries of an earlier event (same messageId)
DUPLICATE_REACH = 2_000  # ... among the last this many
REMOVE_SHARE = 0.3
MADID_SHARE = 0.15  # users with a mobile advertising id besides their email: their events carry both
BARE_EXIT_SHARE = 0.1  # exits that carry no identifier (only the userId): the ledger removes what it holds
EMAIL_CHANGE_SHARE = 0.05  # users whose email changes halfway through the stream (the old one must go)


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _user_key(user: int) -> str:
    """As ingest keys a Segment userId (segment.user_key): a 32-hex hash."""
    return _sha256(f"u:user{user}")[:32]


def _identifiers(user: int, email_generation: int, madid: bool) -> Identifiers:
    """What one of the user's events carries, normalized as ingest sends it (emails hashed)."""
    local = f"user{user}" if email_generation == 0 else f"user{user}.v{email_generation}"
    identifiers: Identifiers = {"email": [_sha256(f"{local}@example.com")]}
    if madid:
        identifiers["madid"] = [f"{user:08x}-0000-4000-8000-{user:012x}"]
    return identifiers


def generate(spec: StreamSpec) -> list[AudienceChange]:
    """The whole stream (`stream`) as a list."""
    return list(stream(spec))


def stream(spec: StreamSpec) -> Iterator[AudienceChange]:
    """Changes in arrival order, one per Segment event: mixed enters and exits (some carrying no identifier),
    users with an email and some with a madid too, repeat users, emails that change, late and duplicate
    deliveries. Yielded one by one (10M changes do not fit in memory as objects)."""
    rng = random.Random(spec.seed)
    users = max(10, spec.changes // 3)
    start_ms = 1_790_000_000_000
    keys: dict[int, str] = {}
    recent: deque[AudienceChange] = deque(maxlen=DUPLICATE_REACH)
    for index in range(spec.changes):
        if recent and rng.random() < DUPLICATE_SHARE:
            duplicate = recent[max(0, len(recent) - rng.randrange(1, DUPLICATE_REACH))]
            recent.append(duplicate)
            yield duplicate
            continue
        user = rng.randrange(users)
        key = keys.get(user) or keys.setdefault(user, _user_key(user))
        audience = f"bench_audience_{rng.randrange(spec.audiences):03d}"
        operation = REMOVE if rng.random() < REMOVE_SHARE else ADD
        changes_email = user % round(1 / EMAIL_CHANGE_SHARE) == 1 and index >= spec.changes // 2
        identifiers = _identifiers(user, int(changes_email), user % round(1 / MADID_SHARE) == 0)
        if operation == REMOVE and rng.random() < BARE_EXIT_SHARE:
            identifiers = {}
        # Events arrive roughly in time order, up to 5 minutes late.
        timestamp = start_ms + index * 10 - rng.randrange(300_000)
        change = AudienceChange(audience, "", operation, key, timestamp, f"evt-{index}", identifiers)
        recent.append(change)
        yield change


def segment_requests(changes: list[AudienceChange]) -> Iterator[list[AudienceChange]]:
    """The stream cut into Segment deliveries (one webhook request each)."""
    for start in range(0, len(changes), EVENTS_PER_SEGMENT_REQUEST):
        yield changes[start : start + EVENTS_PER_SEGMENT_REQUEST]


def invocations(requests: list[list[AudienceChange]], first_serial: int = 0) -> list[list[tuple[str, str]]]:
    """Segment requests as the sync function receives them: ingest packs each into messages, cut into batches."""
    return cut_batches([body for request in requests for body in pack_changes(request)], first_serial)


def cut_batches(bodies: list[str], first_serial: int = 0) -> list[list[tuple[str, str]]]:
    """Queued message bodies as the SQS event source delivers them: each invocation filled up to 6 MB (or 1,000
    messages). Each batch is a list of (message id, body), ids numbered from `first_serial`."""
    batches: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    size = 0
    for serial, body in enumerate(bodies, first_serial):
        cost = len(body) + SQS_RECORD_OVERHEAD_BYTES
        if current and (size + cost > LAMBDA_PAYLOAD_BYTES or len(current) >= MAX_MESSAGES_PER_INVOCATION):
            batches.append(current)
            current, size = [], 0
        current.append((f"msg-{serial}", body))
        size += cost
    if current:
        batches.append(current)
    return batches


def sync_batches(changes: list[AudienceChange]) -> list[list[tuple[str, str]]]:
    """The whole stream as the sync function receives it, delivered as fast as it can take it."""
    return invocations(list(segment_requests(changes)))


@dataclass(frozen=True)
class Minimum:
    """The fewest Criteo calls (PATCHes for the batches as delivered, for the whole stream at once, look-ups),
    the identifiers those PATCHes carry, and the (audience, user) pairs each batch touches."""

    patches_per_batch: int
    patches_whole_stream: int
    new_audiences: int
    identifiers: int
    user_pairs: int

    def total(self, tokens: int) -> int:
        """Calls including `tokens` tokens (one per 15 minutes of running) and one look-up per new audience."""
        return self.patches_per_batch + tokens + self.new_audiences


def minimum_calls(changes: list[AudienceChange], batches: list[list[AudienceChange]]) -> Minimum:
    """Per delivered batch, in order: what each (audience, user) it touches must hold in Criteo against what
    the earlier batches left there (devtools.minimum.Replay), then groups x ceil(n / 50,000). Also the same
    for the whole stream in one batch. `user_pairs` sums the distinct (audience, user) pairs per batch: the
    ledger items a sync must read (and at most write)."""
    replay = Replay()
    per_batch = identifiers = pairs = 0
    audiences: set[str] = set()
    for batch in batches:
        groups = replay.batch(batch)
        per_batch += patches_for(groups.values())
        identifiers += sum(groups.values())
        audiences.update(audience for audience, _, _ in groups)
        pairs += len({(c.audience_key, c.user) for c in batch})
    return Minimum(per_batch, minimum_patches(changes), len(audiences), identifiers, pairs)


def tokens_needed(elapsed_seconds: float) -> int:
    """One token per started 15 minutes."""
    return max(1, math.ceil(elapsed_seconds / TOKEN_LIFETIME_SECONDS))
