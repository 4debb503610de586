"""The chaos soak's event stream and its truth, computed independently of the code under test.

The generator writes Segment Engage events the way Engage sends them: per user (key `userId`, else
`anonymousId`) with 2-3 identifiers, enters split into one event per identifier (same timestamp), emails
that change, exits with no identifier, clocks years ahead, zero or limited advertising ids and consent
granted, refused, withdrawn and granted again. The truth reads only those payloads (the JSON sent) and
applies the rules below with plain code; it never imports the pipeline (audience_sync).

- Version of an event: (effective time in ms, messageId); effective time = timestamp, or receivedAt when
  timestamp > receivedAt + 300 s.
- Per (audience, user): IN iff the newest enter is newer than the newest exit (or there is no exit).
- An IN user's identifiers of a type: among its enters newer than the newest exit that carry the type,
  those with the largest effective time; the union of their values. A zero advertising id or
  `adTrackingEnabled: false` carries madid with no value.
- Consent (per user, every audience): the newest event with `context.consent.categoryPreferences`
  decides; granted iff every required category is true. No such event: not granted.
- Rules (`rules_for`, the settings document the soak configures): an ordinary track event named by a rule
  is an exit from each `remove_from` audience (`*`: every audience any event names) and an enter to
  `add_to`, at the event's version. With `cool_down_hours`, an enter to those audiences counts only if the
  newest enter is dated at least that long after the event.
- Criteo form: email sha256(trim + lowercase); phoneNumber sha256(digits only, no '+'); madid
  lowercase; identityLink as is.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devtools.criteo_emulator.api import MAX_IDENTIFIERS

# Every generated event was received before this (2026-11-18): the pipeline clamps a receivedAt later than
# its own clock to now, so a timeline reaching past the day of the run would not be the truth's order.
TIMELINE_END_MS = 1_795_000_000_000
# How far a user's events run past its activity window at most: 1-5 operations up to 15 min apart, consent
# changes up to 2.5 h after its last event, late receipts 10 min after that (and a few ms to keep times unique).
WINDOW_OVERRUN_MS = 4 * 3_600_000
ID_TYPES = ("email", "madid", "phoneNumber", "identityLink")
OPTIONAL_TYPES = ID_TYPES[1:]
ZERO_MADID = "00000000-0000-0000-0000-000000000000"
REQUIRED_CONSENT = ("Advertising",)
CONSENT_EVENT = "Segment Consent Preference Updated"
CLAMP_MS = 300_000  # a timestamp more than this after receivedAt is replaced by receivedAt
ENTERED, EXITED = "Audience Entered", "Audience Exited"
# Where each identifier type is read from (first one present wins).
ID_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "email": (("context", "traits", "email"), ("properties", "email"), ("traits", "email")),
    "phoneNumber": (("context", "traits", "phone"), ("properties", "phone"), ("traits", "phone")),
    "identityLink": (("context", "traits", "identity_link"), ("traits", "identity_link")),
}
# The kinds of event the summary counts (an event can be of several).
KINDS = (
    "anonymous_user",
    "identify",
    "sibling",
    "id_change",
    "key_only_exit",
    "future_dated",
    "clock_skew_kept",
    "zero_madid",
    "limited_ad_tracking",
    "consent_grant",
    "consent_grant_on_event",
    "consent_denied",
    "consent_withdrawal",
    "consent_regrant",
    "consent_carried",
    "rule_suppression",
    "rule_suppression_everywhere",
    "rule_lifecycle",
)
RULE_KINDS = {"Order Completed": "rule_suppression", "Subscription Started": "rule_suppression_everywhere"}

Version = tuple[int, str]
Payload = Mapping[str, Any]


def rules_for(audiences: int) -> list[dict[str, Any]]:
    """The rules the soak puts in the settings document (none below three audiences)."""
    if audiences < 3:
        return []
    return [
        {"event": "Order Completed", "remove_from": ["chaos_audience_00"], "cool_down_hours": 1},
        {"event": "Subscription Started", "remove_from": "*", "cool_down_hours": 0.5},
        {"event": "Trial Started", "add_to": "chaos_audience_01", "remove_from": ["chaos_audience_02"]},
    ]


# ---------------------------------------------------------------- the truth (reads payloads only)


def iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (`...Z` or with an offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _get(body: Payload, path: tuple[str, ...]) -> Any:
    value: Any = body
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def effective_ms(body: Payload) -> int:
    """The event's time: its timestamp, unless that is more than 300 s after Segment received it."""
    stamp = iso_ms(body["timestamp"])
    received = body.get("receivedAt")
    if received and stamp > iso_ms(received) + CLAMP_MS:
        return iso_ms(received)
    return stamp


def version(body: Payload) -> Version:
    """(effective time, messageId): what orders two events of a user."""
    return effective_ms(body), str(body["messageId"])


def user_key(body: Payload) -> str | None:
    """userId, else anonymousId."""
    return body.get("userId") or body.get("anonymousId") or None


def audience_change(body: Payload) -> tuple[str, bool] | None:
    """(audience, entered) for an Engage audience event (track or identify form), else None."""
    personas_key = _get(body, ("context", "personas", "computation_key"))
    if body.get("type") == "track" and body.get("event") in (ENTERED, EXITED):
        audience = _get(body, ("properties", "audience_key")) or personas_key
        return (audience, body["event"] == ENTERED) if audience else None
    if body.get("type") == "identify" and personas_key:
        flag = _get(body, ("traits", personas_key))
        return (personas_key, flag) if isinstance(flag, bool) else None
    return None


def criteo_identifier(id_type: str, raw: str) -> str:
    """What Criteo must hold for a raw identifier (Criteo's documented forms)."""
    if id_type == "email":
        return hashlib.sha256(raw.strip().lower().encode()).hexdigest()
    if id_type == "phoneNumber":
        return hashlib.sha256("".join(c for c in raw if c.isdigit()).encode()).hexdigest()
    if id_type == "madid":
        return raw.strip().lower()
    return raw


def carried(body: Payload) -> dict[str, set[str]]:
    """Identifier type -> Criteo identifiers, for each type the event carries (madid may carry none)."""
    found: dict[str, set[str]] = {}
    for id_type, paths in ID_PATHS.items():
        for path in paths:
            raw = _get(body, path)
            if isinstance(raw, str) and raw.strip():
                found[id_type] = {criteo_identifier(id_type, raw)}
                break
    device = _get(body, ("context", "device"))
    if isinstance(device, Mapping) and "advertisingId" in device:
        madid = str(device["advertisingId"] or "").strip().lower()
        usable = madid and madid != ZERO_MADID and device.get("adTrackingEnabled") is not False
        found["madid"] = {criteo_identifier("madid", madid)} if usable else set()
    return found


def _bodies(events: Iterable[ChaosEvent | Payload]) -> list[Payload]:
    return [event.payload() if isinstance(event, ChaosEvent) else event for event in events]


def members_in(
    events: Iterable[ChaosEvent | Payload], rules: Iterable[Mapping[str, Any]] = ()
) -> dict[tuple[str, str], dict[str, set[str]]]:
    """(audience, user) -> identifier type -> Criteo identifiers, for the users IN each audience."""
    bodies = _bodies(events)
    by_event = {rule["event"]: rule for rule in rules}
    named = {change[0] for body in bodies if (change := audience_change(body))}
    named |= {rule["add_to"] for rule in by_event.values() if "add_to" in rule}
    enters: dict[tuple[str, str], list[Payload]] = {}
    newest_exit: dict[tuple[str, str], Version] = {}
    hold_until: dict[tuple[str, str], int] = {}
    for body in bodies:
        user = user_key(body)
        change = audience_change(body)
        rule = by_event.get(body.get("event")) if body.get("type") == "track" else None
        if user is None or (change is None and rule is None):
            continue
        exits = [] if change is None or change[1] else [change[0]]
        if change is not None and change[1]:
            enters.setdefault((change[0], user), []).append(body)
        if rule is not None:
            exits = sorted(named) if rule.get("remove_from") == "*" else list(rule.get("remove_from", []))
            if "add_to" in rule:
                enters.setdefault((rule["add_to"], user), []).append(body)
        for audience in exits:
            pair = (audience, user)
            if pair not in newest_exit or version(body) > newest_exit[pair]:
                newest_exit[pair] = version(body)
            if rule is not None and rule.get("cool_down_hours"):
                hold = effective_ms(body) + round(rule["cool_down_hours"] * 3_600_000)
                hold_until[pair] = max(hold_until.get(pair, 0), hold)
    members: dict[tuple[str, str], dict[str, set[str]]] = {}
    for pair, bodies in enters.items():
        after_exit = [b for b in bodies if pair not in newest_exit or version(b) > newest_exit[pair]]
        if not after_exit or max(effective_ms(b) for b in after_exit) < hold_until.get(pair, 0):
            continue
        identifiers: dict[str, set[str]] = {}
        for id_type in ID_TYPES:
            with_type = [b for b in after_exit if id_type in carried(b)]
            if with_type:
                newest = max(effective_ms(b) for b in with_type)
                for b in with_type:
                    if effective_ms(b) == newest:
                        identifiers.setdefault(id_type, set()).update(carried(b)[id_type])
        members[pair] = identifiers
    return members


def consent_granted(
    events: Iterable[ChaosEvent | Payload], required: Iterable[str] = REQUIRED_CONSENT
) -> dict[str, bool]:
    """user -> whether the newest event with consent preferences grants every required category."""
    newest: dict[str, tuple[Version, Mapping[str, Any]]] = {}
    for body in _bodies(events):
        preferences, user = _get(body, ("context", "consent", "categoryPreferences")), user_key(body)
        if isinstance(preferences, Mapping) and user and (user not in newest or version(body) > newest[user][0]):
            newest[user] = (version(body), preferences)
    categories = tuple(required)
    return {user: all(prefs.get(c) is True for c in categories) for user, (_, prefs) in newest.items()}


def expected_members(
    events: Iterable[ChaosEvent | Payload],
    prefix: str = "segment_",
    required: Iterable[str] = REQUIRED_CONSENT,
    rules: Iterable[Mapping[str, Any]] = (),
) -> dict[str, dict[str, set[str]]]:
    """Segment name -> identifier type -> Criteo identifiers: the IN users that granted consent.

    Every audience named by an event has a segment, empty or not.
    """
    bodies = _bodies(events)
    granted = consent_granted(bodies, required)
    members: dict[str, dict[str, set[str]]] = {}
    for body in bodies:
        change = audience_change(body)
        if change is not None:
            members.setdefault(prefix + change[0], {t: set() for t in ID_TYPES})
    for (audience, user), identifiers in members_in(bodies, rules).items():
        if granted.get(user, False):
            for id_type, values in identifiers.items():
                members.setdefault(prefix + audience, {t: set() for t in ID_TYPES})[id_type].update(values)
    return members


def single_batch_patches(
    events: Iterable[ChaosEvent | Payload], prefix: str = "segment_", rules: Iterable[Mapping[str, Any]] = ()
) -> int:
    """The fewest PATCHes that bring empty segments to the final state: one add per non-empty (segment,
    identifier type), chunked at Criteo's limit."""
    expected = expected_members(events, prefix, rules=rules)
    sizes = [len(v) for by_type in expected.values() for v in by_type.values()]
    return sum(math.ceil(size / MAX_IDENTIFIERS) for size in sizes)


# ---------------------------------------------------------------- the generator


@dataclass
class ChaosEvent:
    """One Segment event as sent (`payload()`), with the kinds of chaos it carries."""

    message_id: str
    user: str
    audience: str | None
    kinds: tuple[str, ...]
    body: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The JSON object Segment posts."""
        return self.body


def raw_identifier(id_type: str, user: int, generation: int = 0) -> str:
    """User `user`'s identifier of a type (email generation n after n changes), written untidily."""
    if id_type == "email":
        local = f"user.{user}" if generation == 0 else f"user.{user}.v{generation}"
        return f"  {local.title()}@Example.COM " if (user + generation) % 3 == 0 else f"{local}@example.com"
    if id_type == "madid":
        value = f"{user:08x}-0000-4000-8000-{user * 7919 % 16**12:012x}"
        return value.upper() if user % 2 else value
    if id_type == "phoneNumber":
        a, b = user // 10000 % 10000, user % 10000
        return (f"+44 (20) {a:04d}-{b:04d}", f"+44 20 {a:04d} {b:04d}", f"+4420{a:04d}{b:04d}")[user % 3]
    return f"XY{user:012d}LR"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _User:
    """A generated profile: its key, identifier types, activity window, email change and consent plan."""

    index: int
    anonymous: bool
    id_types: tuple[str, ...]
    start_ms: int
    window_ms: int
    email_change_ms: int | None
    consent_mode: str  # track_grant | event_grant | deny | none
    withdraws: bool
    regrants: bool
    used: set[int] = field(default_factory=set)

    @property
    def key(self) -> str:
        return f"anon-{self.index:06d}" if self.anonymous else f"u{self.index:06d}"

    def fresh(self, ms: int) -> int:
        """`ms`, or the next millisecond no other event of this user has; reserved."""
        while ms in self.used:
            ms += 1
        self.used.add(ms)
        return ms


@dataclass
class _Draft:
    """An event before its payload is written (consent needs every time of the user first)."""

    user: _User
    audience: str | None  # None: a consent event
    entered: bool
    true_ms: int
    ids: dict[str, str]  # id type -> raw value (madid: the device's id, maybe the zero id)
    identify: bool = False
    kinds: set[str] = field(default_factory=set)
    limited: bool = False  # adTrackingEnabled: false
    tracking_flag: bool = False  # adTrackingEnabled: true written out
    preferences: dict[str, bool] | None = None
    stamp_ms: int = 0  # the timestamp written (ahead of true_ms when future-dated)
    received_ms: int = 0
    with_anonymous_id: bool = False
    rule: str | None = None  # an ordinary track event a rule names (audience None)


@dataclass
class ChaosStream:
    """The unique events, the stream as delivered (shuffled, with duplicates) and how it was built."""

    events: list[ChaosEvent]
    delivered: list[ChaosEvent]
    flipped_pairs: int
    users: int = 0

    def kinds(self) -> dict[str, int]:
        """How many unique events of each chaos kind (an event can count for several)."""
        counted = Counter(kind for event in self.events for kind in event.kinds)
        return {kind: counted[kind] for kind in KINDS}

    def clear_identifiers(self) -> set[str]:
        """Every identifier that must never reach a log: as sent, trimmed, lowercased, phone digits."""
        found: set[str] = set()
        for event in self.events:
            body = event.payload()
            raws = [_get(body, path) for paths in ID_PATHS.values() for path in paths]
            raws.append(_get(body, ("context", "device", "advertisingId")))
            for raw in raws:
                if isinstance(raw, str) and raw.strip().lower() != ZERO_MADID:
                    found.update({raw, raw.strip(), raw.strip().lower()})
                    if raw.lstrip().startswith("+"):
                        digits = "".join(c for c in raw if c.isdigit())
                        found.update({digits, "+" + digits})
        return found


def _activity_ms(count: int) -> int:
    """How long the users of a stream of `count` events are active: 2 s per event."""
    return max(count, 1000) * 2000


def timeline_ms(count: int) -> tuple[int, int]:
    """(start, end) of a stream of `count` events: its users' activity, then the overrun."""
    return TIMELINE_END_MS - WINDOW_OVERRUN_MS - _activity_ms(count), TIMELINE_END_MS


class _Generator:
    """Builds the drafts of `generate`; all randomness from one seeded Random, in a fixed order."""

    def __init__(self, count: int, audiences: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count, self.audiences, self.seed = count, audiences, seed
        self.start_ms = timeline_ms(count)[0]
        self.span_ms = _activity_ms(count)
        self.users: dict[int, _User] = {}
        self.user_count = max(20, count // 8)
        self.drafts: list[_Draft] = []
        self.rules = rules_for(audiences)

    def user(self, index: int) -> _User:
        """The profile of user `index`, made (with its consent events reserved) on first use."""
        if index in self.users:
            return self.users[index]
        rng = self.rng
        optional = rng.sample(OPTIONAL_TYPES, rng.choice((1, 1, 2)))
        window = self.span_ms // 4
        start = rng.randrange(self.span_ms - window)
        mode = rng.choices(("track_grant", "event_grant", "deny", "none"), (45, 37, 8, 10))[0]
        granting = mode in ("track_grant", "event_grant")
        withdraws = granting and rng.random() < 0.15
        user = _User(
            index=index,
            anonymous=rng.random() < 0.15,
            id_types=("email", *(t for t in OPTIONAL_TYPES if t in optional)),
            start_ms=self.start_ms + start,
            window_ms=window,
            email_change_ms=self.start_ms + start + rng.randrange(window // 5, window) if rng.random() < 0.25 else None,
            consent_mode=mode,
            withdraws=withdraws,
            regrants=withdraws and rng.random() < 0.4,
        )
        self.users[index] = user
        plan = {"track_grant": ["consent_grant"], "deny": ["consent_denied"]}.get(mode, [])
        plan += ["consent_withdrawal"] * withdraws + ["consent_regrant"] * user.regrants
        for kind in plan:  # times are set once the user's audience events are known
            self.drafts.append(_Draft(user, None, False, 0, {}, kinds={kind}))
        return user

    def identifiers(self, user: _User, at_ms: int, both_emails: bool = False) -> list[tuple[str, str]]:
        """(type, raw value) the profile holds at a time: the email of that time (or both, old first)."""
        changed = user.email_change_ms is not None and at_ms >= user.email_change_ms
        held = [("email", raw_identifier("email", user.index, int(changed)))]
        if changed and both_emails:
            held.insert(0, ("email", raw_identifier("email", user.index)))
        return held + [(t, raw_identifier(t, user.index)) for t in user.id_types[1:]]

    def device(self, draft: _Draft) -> None:
        """Zero or limited advertising ids on some events (even of users without a madid)."""
        rng = self.rng
        if "madid" in draft.ids:
            roll = rng.random()
            if roll < 0.06:
                draft.ids["madid"] = ZERO_MADID
                draft.kinds.add("zero_madid")
            elif roll < 0.12:
                draft.limited = True
                draft.kinds.add("limited_ad_tracking")
            else:
                draft.tracking_flag = rng.random() < 0.3
        elif draft.ids and rng.random() < 0.03:
            draft.ids["madid"] = ZERO_MADID
            draft.limited = rng.random() < 0.5
            draft.kinds.add("zero_madid")

    def operation(self, user: _User, audience: str, entered: bool, at_ms: int) -> list[_Draft]:
        """The event(s) of one enter or exit: one event, or one per identifier at the same timestamp."""
        rng = self.rng
        identify = rng.random() < 0.2
        held = self.identifiers(user, at_ms, both_emails=rng.random() < 0.4)
        if entered and rng.random() < 0.25:
            drafts = [_Draft(user, audience, True, at_ms, {t: raw}, identify, {"sibling"}) for t, raw in held]
        else:
            emails = [h for h in held if h[0] == "email"]
            held = [emails[-1], *(h for h in held if h[0] != "email")]  # one value per type in one event
            roll = rng.random()
            if not entered and roll < 0.35:
                chosen: list[tuple[str, str]] = []
            elif roll < 0.7:
                chosen = held
            else:
                chosen = rng.sample(held, rng.randrange(1, len(held) + 1))
            drafts = [_Draft(user, audience, entered, at_ms, dict(chosen), identify)]
            if not chosen:
                drafts[0].kinds.add("key_only_exit")
        for draft in drafts:
            self.device(draft)
            if identify:
                draft.kinds.add("identify")
        return drafts

    def stories(self) -> None:
        """(audience, user) stories of 1-5 alternating enters and exits until `count` events exist."""
        rng = self.rng
        while len(self.drafts) < self.count:
            audience = f"chaos_audience_{rng.randrange(self.audiences):02d}"
            user = self.user(rng.randrange(self.user_count))
            at_ms = user.start_ms + rng.randrange(user.window_ms)
            if self.rules and rng.random() < 0.1:
                self.drafts.append(self.rule_event(user, user.fresh(at_ms)))
                continue
            entered = rng.random() < 0.75
            for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 5))):
                at_ms = user.fresh(at_ms)
                self.drafts.extend(self.operation(user, audience, entered, at_ms))
                entered = not entered
                at_ms += rng.randrange(1_000, 900_000)
        del self.drafts[self.count :]

    def rule_event(self, user: _User, at_ms: int) -> _Draft:
        """An ordinary track event one of the rules names (a lifecycle one carries the profile's identifiers)."""
        rule = self.rng.choice(self.rules)
        ids = dict(self.identifiers(user, at_ms)) if "add_to" in rule else {}
        ids.pop("madid", None)  # no zero or limited ids here: a lifecycle enter always has an email
        kind = RULE_KINDS.get(rule["event"], "rule_lifecycle")
        return _Draft(user, None, False, at_ms, ids, kinds={kind}, rule=rule["event"])

    def consent(self) -> None:
        """Times of the consent events, the grant carried by a first event, the state carried by others."""
        rng = self.rng
        by_user: dict[int, list[_Draft]] = {}
        for draft in self.drafts:
            by_user.setdefault(draft.user.index, []).append(draft)
        for index in sorted(by_user):
            drafts = by_user[index]
            user = drafts[0].user
            audience_drafts = sorted((d for d in drafts if d.audience is not None), key=lambda d: d.true_ms)
            drafts = [d for d in drafts if d.rule is None]
            first = audience_drafts[0].true_ms if audience_drafts else user.start_ms
            last = audience_drafts[-1].true_ms if audience_drafts else first
            changes: list[tuple[int, dict[str, bool]]] = []
            withdrawn_at = first
            for draft in (d for d in drafts if d.audience is None):
                kind = next(iter(draft.kinds))
                if kind in ("consent_grant", "consent_denied"):
                    at_ms = first - rng.randrange(1_000, 120_000)
                    preferences = {"Advertising": kind == "consent_grant", "Analytics": rng.random() < 0.7}
                elif kind == "consent_withdrawal":
                    at_ms = withdrawn_at = rng.randrange(first + 1, last + 1_800_000)
                    preferences = {"Advertising": False, "Analytics": rng.random() < 0.5}
                else:
                    at_ms = rng.randrange(withdrawn_at + 1, withdrawn_at + 7_200_000)
                    preferences = {"Advertising": True, "Analytics": rng.random() < 0.5}
                draft.true_ms, draft.preferences = user.fresh(at_ms), preferences
                changes.append((draft.true_ms, preferences))
            if user.consent_mode == "event_grant" and audience_drafts:
                opener = audience_drafts[0]
                opener.preferences = {"Advertising": True, "Analytics": rng.random() < 0.7}
                opener.kinds.add("consent_grant_on_event")
                changes.append((opener.true_ms, opener.preferences))
            changes.sort(key=lambda change: change[0])
            for draft in audience_drafts:
                if draft.preferences is None and rng.random() < 0.35:
                    current = [preferences for at_ms, preferences in changes if at_ms <= draft.true_ms]
                    if current:
                        draft.preferences = dict(current[-1])
                        draft.kinds.add("consent_carried")

    def times(self) -> None:
        """receivedAt for every event; timestamps years or minutes ahead on a few, seconds ahead on fewer."""
        rng = self.rng
        for draft in self.drafts:
            user = draft.user
            late = rng.random() < 0.02
            draft.received_ms = draft.true_ms + (rng.randrange(30_000, 600_000) if late else rng.randrange(20, 1500))
            draft.stamp_ms = draft.true_ms
            draft.with_anonymous_id = not user.anonymous and rng.random() < 0.5
            if user.anonymous:
                draft.kinds.add("anonymous_user")
            if "sibling" in draft.kinds:
                continue  # siblings keep their common timestamp
            roll = rng.random()
            if roll < 0.04:
                draft.received_ms = user.fresh(draft.received_ms)  # the version's time: unique for the user
                years = rng.choice((73, 3, 0))  # 2099, a few years ahead, or minutes beyond the tolerance
                extra = rng.randrange(60_000, 3_600_000)
                draft.stamp_ms = draft.received_ms + CLAMP_MS + extra + years * 365 * 86_400_000
                draft.kinds.add("future_dated")
            elif roll < 0.05:
                draft.stamp_ms = user.fresh(draft.true_ms + rng.randrange(5_000, 200_000))
                draft.kinds.add("clock_skew_kept")

    def id_changes(self) -> None:
        """Mark enters that carry a new email where an earlier enter of the pair carried the old one."""
        old_email: set[tuple[str, str]] = set()
        for draft in sorted(self.drafts, key=lambda d: d.true_ms):
            email = draft.ids.get("email")
            if draft.audience is None or not draft.entered or email is None:
                continue
            pair = (draft.audience, draft.user.key)
            if email == raw_identifier("email", draft.user.index):
                old_email.add(pair)
            elif pair in old_email:
                draft.kinds.add("id_change")

    def payload(self, number: int, draft: _Draft) -> ChaosEvent:
        """The Segment JSON of a draft."""
        user = draft.user
        message_id = f"chaos-{self.seed}-{number}"
        body: dict[str, Any] = {
            "messageId": message_id,
            "timestamp": _iso(draft.stamp_ms),
            "receivedAt": _iso(draft.received_ms),
        }
        if user.anonymous or draft.with_anonymous_id:
            body["anonymousId"] = f"anon-{user.index:06d}"
        if not user.anonymous:
            body["userId"] = user.key
        context: dict[str, Any] = {}
        traits: dict[str, Any] = {}
        for id_type, field_name in (("email", "email"), ("phoneNumber", "phone"), ("identityLink", "identity_link")):
            if id_type in draft.ids:
                traits[field_name] = draft.ids[id_type]
        if "madid" in draft.ids:
            context["device"] = {"advertisingId": draft.ids["madid"]}
            if draft.limited or draft.tracking_flag:
                context["device"]["adTrackingEnabled"] = not draft.limited
        if draft.preferences is not None:
            context["consent"] = {"categoryPreferences": draft.preferences}
        if draft.rule is not None:
            body.update(
                type="track", event=draft.rule, properties={"revenue": 42.0}, context={**context, "traits": traits}
            )
        elif draft.audience is None:
            body.update(type="track", event=CONSENT_EVENT, properties={}, context=context)
        else:
            context["personas"] = {"computation_class": "audience", "computation_key": draft.audience}
            if draft.identify:
                body.update(type="identify", traits={**traits, draft.audience: draft.entered}, context=context)
            else:
                body.update(
                    type="track",
                    event=ENTERED if draft.entered else EXITED,
                    properties={"audience_key": draft.audience, draft.audience: draft.entered},
                    context={**context, "traits": traits},
                )
        return ChaosEvent(message_id, user.key, draft.audience, tuple(sorted(draft.kinds)), body)


def generate(count: int, audiences: int, seed: int, duplicate_share: float = 0.1) -> ChaosStream:
    """`count` unique events over `audiences` audiences (see the module docstring), delivered shuffled
    with `duplicate_share` of them re-sent verbatim."""
    builder = _Generator(count, audiences, seed)
    builder.stories()
    builder.consent()
    builder.times()
    builder.id_changes()
    events = [builder.payload(number, draft) for number, draft in enumerate(builder.drafts)]
    operations: dict[tuple[str, str], set[bool]] = {}
    for draft in builder.drafts:
        if draft.audience is not None:
            operations.setdefault((draft.audience, draft.user.key), set()).add(draft.entered)
    flipped = sum(1 for seen in operations.values() if len(seen) == 2)
    rng = builder.rng
    delivered = events + rng.sample(events, int(count * duplicate_share))
    rng.shuffle(delivered)
    return ChaosStream(events, delivered, flipped, len({event.user for event in events}))
