"""The chaos soak's event stream and its truth, computed independently of the code under test.

Every event has a unique timestamp, so "newest event per audience and identifier" is unambiguous;
duplicates are verbatim re-sends (same messageId). Expected identifiers are derived here with hashlib
from Criteo's documented rules (email: trim + lowercase + SHA-256; madid: lowercase; phone: E.164 +
SHA-256; identityLink: as is), never with the project's normalizer.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devtools.minimum import patches_for

BASE_MS = 1_795_000_000_000  # 2026-11-18
ID_TYPES = ("email", "madid", "phoneNumber", "identityLink")
_PHONE_NOISE = re.compile(r"[\s().-]")


@dataclass(frozen=True)
class ChaosEvent:
    """One Segment audience event: who, which audience, in or out, when, with which identifiers."""

    message_id: str
    audience: str
    entered: bool
    ts_ms: int
    user: int
    id_types: tuple[str, ...]
    as_identify: bool

    def raw_identifiers(self) -> dict[str, str]:
        """The identifiers as Segment sends them (mixed case, spaces, punctuation)."""
        return {t: raw_identifier(t, self.user) for t in self.id_types}

    def payload(self) -> dict[str, Any]:
        """The Engage event (track `Audience Entered/Exited`, or identify with the audience trait)."""
        raw = self.raw_identifiers()
        traits: dict[str, Any] = {}
        if "email" in raw:
            traits["email"] = raw["email"]
        if "phoneNumber" in raw:
            traits["phone"] = raw["phoneNumber"]
        if "identityLink" in raw:
            traits["identity_link"] = raw["identityLink"]
        timestamp = datetime.fromtimestamp(self.ts_ms / 1000, UTC).isoformat(timespec="milliseconds")
        event: dict[str, Any] = {"messageId": self.message_id, "timestamp": timestamp.replace("+00:00", "Z")}
        context: dict[str, Any] = {"personas": {"computation_class": "audience", "computation_key": self.audience}}
        if "madid" in raw:
            context["device"] = {"advertisingId": raw["madid"]}
        if self.as_identify:
            event.update(type="identify", traits={**traits, self.audience: self.entered}, context=context)
        else:
            event.update(
                type="track",
                event="Audience Entered" if self.entered else "Audience Exited",
                properties={"audience_key": self.audience},
                context={**context, "traits": traits},
            )
        return event


def raw_identifier(id_type: str, user: int) -> str:
    """User `user`'s identifier of a type, written the untidy way sources write them."""
    if id_type == "email":
        return f"  User.{user}@Example.COM " if user % 3 == 0 else f"user.{user}@example.com"
    if id_type == "madid":
        value = f"{user:08x}-0000-4000-8000-{user * 7919 % 16**12:012x}"
        return value.upper() if user % 2 else value
    if id_type == "phoneNumber":
        return f"+44 (20) {user // 10000:04d}-{user % 10000:04d}"
    return f"XY{user:012d}LR"


def criteo_identifier(id_type: str, raw: str) -> str:
    """What Criteo must hold for a raw identifier (hashing on, the default)."""
    if id_type == "email":
        return hashlib.sha256(raw.strip().lower().encode()).hexdigest()
    if id_type == "madid":
        return raw.strip().lower()
    if id_type == "phoneNumber":
        return hashlib.sha256(_PHONE_NOISE.sub("", raw.strip()).encode()).hexdigest()
    return raw.strip()


@dataclass
class ChaosStream:
    """The unique events, the stream as delivered (shuffled, with duplicates) and how it was built."""

    events: list[ChaosEvent]
    delivered: list[ChaosEvent]
    flipped_pairs: int

    def clear_identifiers(self) -> set[str]:
        """Every identifier that must never reach a log: as sent, and as normalized but not hashed."""
        found: set[str] = set()
        for event in self.events:
            for raw in event.raw_identifiers().values():
                found.update({raw, raw.strip(), raw.strip().lower()})
        return found


def generate(count: int, audiences: int, seed: int, duplicate_share: float = 0.1) -> ChaosStream:
    """`count` unique events over `audiences` audiences: (audience, user) pairs get 1-4 alternating
    enter/exit events; every event carries email and some of madid, phoneNumber, identityLink."""
    rng = random.Random(seed)
    users = max(20, count // 5)
    slots: list[tuple[str, int, bool]] = []
    while len(slots) < count:
        audience = f"chaos_audience_{rng.randrange(audiences):02d}"
        user = rng.randrange(users)
        entered = rng.random() < 0.7
        for _ in range(min(rng.choice((1, 1, 2, 3, 4)), count - len(slots))):
            slots.append((audience, user, entered))
            entered = not entered
    # Unique timestamps, ascending in creation order: each pair's alternation is also its order in time.
    stamps = sorted(rng.sample(range(count * 20), count))
    events = [
        ChaosEvent(
            f"chaos-{seed}-{index}",
            audience,
            entered,
            BASE_MS + stamps[index],
            user,
            ("email", *(t for t in ID_TYPES[1:] if rng.random() < 0.5)),
            rng.random() < 0.2,
        )
        for index, (audience, user, entered) in enumerate(slots)
    ]
    operations: dict[tuple[str, int], set[bool]] = {}
    for event in events:
        operations.setdefault((event.audience, event.user), set()).add(event.entered)
    flipped = sum(1 for seen in operations.values() if len(seen) == 2)
    duplicates = rng.sample(events, int(count * duplicate_share))
    delivered = events + duplicates
    rng.shuffle(delivered)
    return ChaosStream(events, delivered, flipped)


def newest_events(events: list[ChaosEvent]) -> dict[tuple[str, str, str], ChaosEvent]:
    """(audience, identifier type, Criteo identifier) -> the newest event carrying it."""
    newest: dict[tuple[str, str, str], ChaosEvent] = {}
    for event in events:
        for id_type, raw in event.raw_identifiers().items():
            key = (event.audience, id_type, criteo_identifier(id_type, raw))
            if key not in newest or event.ts_ms > newest[key].ts_ms:
                newest[key] = event
    return newest


def expected_members(events: list[ChaosEvent], prefix: str = "segment_") -> dict[str, dict[str, set[str]]]:
    """Segment name -> identifier type -> identifiers: the newest event per (audience, identifier) decides."""
    newest = newest_events(events)
    members: dict[str, dict[str, set[str]]] = {}
    for (audience, id_type, identifier), event in newest.items():
        by_type = members.setdefault(prefix + audience, {t: set() for t in ID_TYPES})
        if event.entered:
            by_type[id_type].add(identifier)
    return members


def single_batch_patches(events: list[ChaosEvent]) -> int:
    """The fewest PATCHes for the whole stream in one batch: distinct (audience, final operation, type)."""
    sizes = Counter((a, t, e.entered) for (a, t, _), e in newest_events(events).items())
    return patches_for(sizes.values())
