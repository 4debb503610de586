"""The flush: the inbox gathered into each audience's outbox, and each outbox to Criteo when a call is worth
making, within the shared call budget.

A group of the inbox is gathered when its oldest change is `interval` old, or when changes stopped coming
anywhere for a quiet moment. An audience is sent when its oldest waiting change is `interval` old, unless the
budget can't send the whole backlog within that: then when changes stopped coming for a quiet moment, or when
the audience has waited as long as the budget needs for the backlog (see FlushPolicy.mode). The budget goes to
full groups first, then to the oldest (docs/design.md, "Fewest calls").
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from audience_sync.advertisers import Advertiser, Advertisers
from audience_sync.allowance import Allowance
from audience_sync.audience_config import AudienceConfig, AudienceSettings
from audience_sync.criteo.errors import (
    CriteoError,
    InvalidCredentials,
    RejectedRequest,
    SegmentGone,
    SegmentOwnedElsewhere,
)
from audience_sync.errors import DependencyUnavailable
from audience_sync.identifiers import GUM
from audience_sync.inbox import GroupWaiting, Inbox
from audience_sync.ledger import Ledger
from audience_sync.moves import MOVED, Moves
from audience_sync.observability import logger
from audience_sync.outbox import (
    MAX_IDENTIFIERS_PER_FLUSH,
    REFRESH_SECONDS,
    Outbox,
    Outcome,
    Waiting,
    forgotten,
    stored_counts,
)
from audience_sync.plan import MAX_IDENTIFIERS_PER_PATCH, PatchPlan, calls_needed, net, patches, remainder
from audience_sync.records import ADD, Parked, pack_parked
from audience_sync.sync import SAFETY_SECONDS, DeadLetters, SyncOptions
from audience_sync.ticks import KEEP, next_tick

ALL = "all"
FULL_ONLY = "full"
MAX_RETRY_SECONDS = 300.0
WORKERS = 8  # audiences flushed at once (their Criteo calls overlap; an audience's own calls go in order)


@dataclass(frozen=True)
class FlushPolicy:
    """When an audience's waiting changes are sent."""

    interval_seconds: float = 60.0  # L: changes wait this long for others to share their calls
    quiet_seconds: float = 15.0  # no change anywhere for this long (capped at L): a burst is over
    calls_per_minute: int = 200  # the budget every invocation shares
    retry_seconds: float = 5.0  # an audience whose call failed waits this, doubled per failure

    def backlog_seconds(self, waiting: list[Waiting], calls_per_minute: int | None = None) -> float:
        """How long the budget (default: the deployment's) needs for every call waiting (counts are upper
        bounds)."""
        return sum(calls_needed(w.counts) for w in waiting) * 60.0 / (calls_per_minute or self.calls_per_minute)

    def mode(self, waiting: Waiting, now: float, backlog_seconds: float, last_change: float) -> str | None:
        """ALL: send everything; FULL_ONLY: only groups of 50,000; None: keep waiting.

        `backlog_seconds`: what the budget needs for every call waiting; `last_change`: the newest append to
        any audience. While the budget can send everything within one interval, an audience goes when its
        oldest change is `interval` old. Beyond that, changes keep sharing calls: an audience goes once the
        changes stopped coming anywhere for a quiet moment (a burst is over), or once it has waited as long
        as the budget needs for the whole backlog (a steady overload: each audience's turn comes round);
        meanwhile only full groups go, which waiting could not make cheaper.
        """
        if waiting.retry > now:
            return None
        age = now - waiting.first
        if backlog_seconds < self.interval_seconds:
            return ALL if age >= self.interval_seconds else None
        if now - last_change >= min(self.quiet_seconds, self.interval_seconds) or age >= backlog_seconds:
            return ALL
        if _has_full(waiting):
            return FULL_ONLY
        return None


@dataclass
class FlushReport:
    """Counters for metrics, the outbox's state (`gauges`, from the last pass), and how long the identifiers
    sent had waited (seconds, identifiers)."""

    counts: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, int] = field(default_factory=dict)
    waited: list[tuple[float, int]] = field(default_factory=list)
    emptied: int = 0  # audiences with nothing waiting any more

    def add(self, other: FlushReport) -> None:
        """Add another report's counts and waits; its gauges replace these."""
        self.counts.update(other.counts)
        self.gauges.update(other.gauges)
        self.waited.extend(other.waited)
        self.emptied += other.emptied


class Flusher:
    """Sends what is ready in the outbox, each audience to its advertiser within its app's budget; one flusher
    runs at a time (the caller holds the flusher lease for as long as this object lives).

    The outboxes' only writer, it reads their summaries once and keeps them in step with what it writes (a
    gathering's appends return the summaries they wrote); `summaries`: as the pass before left them (see
    KeptSummaries)."""

    def __init__(
        self,
        advertisers: Advertisers,
        inbox: Inbox,
        outbox: Outbox,
        dead_letters: DeadLetters,
        options: SyncOptions,
        policy: FlushPolicy,
        seconds_left: Callable[[], float],
        workers: int = WORKERS,
        config: Callable[[], AudienceConfig] = AudienceConfig,
        moves: Moves | None = None,
        held_identifiers: int = MAX_IDENTIFIERS_PER_FLUSH,
        summaries: list[Waiting] | None = None,
    ) -> None:
        self.advertisers = advertisers
        self.moves = moves  # where an audience moved to another advertiser starts carrying its members over
        self.config = config
        self._config = AudienceConfig()  # this tick's
        self.inbox = inbox
        self.outbox = outbox
        self.dead_letters = dead_letters
        self.options = options
        self.policy = policy
        self.seconds_left = seconds_left
        self.clock = outbox.clock
        self.workers = workers
        self.allowance = Allowance(held_identifiers)  # what all workers read at once: one audience's limit
        self._stop = threading.Event()  # the outbox is unavailable: no new flush this tick
        self._summaries = summaries  # the outbox's summaries, kept in step (None: read them)

    def tick(self) -> FlushReport:
        """One pass: the inbox groups that are due gathered, then every ready audience, fullest and oldest first,
        while budget and time last."""
        report = FlushReport()
        self._stop.clear()
        for advertiser in self.advertisers.connected():
            advertiser.app.stop.clear()
        now = self.clock()
        self._config = self.config()
        groups = self.inbox.waiting()
        last_change = max((g.last for g in groups), default=0.0)  # the newest append anywhere
        every, waiting, backlogs = self._outbox()
        # Under a backlog a group waits as long as the budget needs for what the outboxes hold: its audiences
        # would wait that long anyway, and gathering them every interval wrote each audience again and again.
        due_after = max(self.policy.interval_seconds, min(backlogs.values(), default=0.0))
        inbox_groups = self._gather(groups, now - last_change, due_after, report)
        every, waiting, backlogs = self._outbox()  # with what the gathering wrote
        self._refresh(every, now, report)
        ready = [
            (w, mode)
            for w in waiting
            if (mode := self.policy.mode(w, now, backlogs[self._settings(w).advertiser], last_change))
        ]
        ready.sort(key=lambda pair: (not _has_full(pair[0]), pair[0].first))
        report.gauges = {
            "outbox_paused_audiences": len(every) - len(waiting),
            "outbox_audiences": len(waiting),
            # The oldest change waiting anywhere: in an audience's outbox or in a group not gathered yet.
            "outbox_oldest_seconds": int(
                max(
                    [*(now - w.first for w in waiting), *(now - g.first for g in groups if g.first is not None)],
                    default=0,
                )
            ),
            "outbox_backlog_seconds": int(max(backlogs.values(), default=0)),
        }
        try:
            if self.workers == 1:
                reports = [self._flush(w, mode) for w, mode in ready]
            else:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="flush") as pool:
                    reports = list(pool.map(lambda pair: self._flush(*pair), ready))
        finally:  # (a pass that is killed loses them: the bucket refills within seconds)
            for app in {id(a.app): a.app for a in self.advertisers.connected()}.values():
                app.give_back()
        for audience_report in reports:
            report.add(audience_report)
        report.counts["flush_passes"] += 1
        report.gauges["outbox_audiences"] = len(waiting) - report.emptied
        report.gauges["inbox_groups"] = inbox_groups
        unreadable = set(self.advertisers.unreadable())
        report.gauges["outbox_without_credentials"] = sum(self._settings(w).advertiser in unreadable for w in waiting)
        return report

    @property
    def summaries(self) -> list[Waiting] | None:
        """The outbox's summaries as this flusher left them (None: not read)."""
        return self._summaries

    def _outbox(self) -> tuple[list[Waiting], list[Waiting], dict[str, float]]:
        """Every audience waiting in the outbox, those not paused (a paused audience's changes wait), and per
        advertiser how long its budget needs for their calls."""
        if self._summaries is None:
            self._summaries = self.outbox.waiting()
        every = self._summaries = [w for w in self._summaries if not w.emptied]
        waiting = [w for w in every if not self._settings(w).paused]
        by_advertiser: dict[str, list[Waiting]] = {}
        for w in waiting:
            by_advertiser.setdefault(self._settings(w).advertiser, []).append(w)
        backlogs = {
            name: self.policy.backlog_seconds(group, self._config.rate(name, self.policy.calls_per_minute))
            for name, group in by_advertiser.items()
        }
        return every, waiting, backlogs

    def _gather(self, groups: list[GroupWaiting], quiet_for: float, due_after: float, report: FlushReport) -> int:
        """Gather the groups whose oldest change is `due_after` old, or all once changes stopped coming for a
        quiet moment (a burst is over: everything that shares calls has come), oldest first; returns the groups
        still waiting."""
        quiet = quiet_for >= min(self.policy.quiet_seconds, self.policy.interval_seconds)
        now = self.clock()
        waiting = sorted(((g.first, g) for g in groups if g.first is not None), key=lambda pair: pair[0])
        left = len(waiting)
        for first, group in waiting:
            if not quiet and now - first < due_after:
                continue
            if self.seconds_left() < SAFETY_SECONDS:
                break
            try:
                summaries, emptied = self.inbox.gather(group, self.outbox)
            except DependencyUnavailable as error:  # the entries stay and are gathered again
                logger.warning("inbox unavailable", extra={"reason": str(error)})
                report.counts["dependency_errors"] += 1
                self._summaries = None  # some audiences may have been written: read them
                break
            self._keep(summaries)
            report.counts["audiences_gathered"] += len(summaries)
            left -= emptied
        return left

    def _refresh(self, every: list[Waiting], now: float, report: FlushReport) -> None:
        """Write again the entries of the audiences whose changes have waited REFRESH_SECONDS (Outbox.refresh):
        flushed entries expire instead of being deleted, and these must not."""
        for waiting in every:
            if now - waiting.kept < REFRESH_SECONDS or self.seconds_left() < SAFETY_SECONDS:
                continue
            try:
                self.outbox.refresh(waiting)
            except DependencyUnavailable as error:  # written again at the next pass
                logger.warning("outbox unavailable", extra={"reason": str(error)})
                report.counts["dependency_errors"] += 1
                return
            logger.info("outbox entries written again to outlive their wait", extra={"audience": waiting.audience_key})

    def _keep(self, written: list[Waiting]) -> None:
        """Keep the summaries of audiences a gathering wrote (as the appends returned them) in place of theirs."""
        if self._summaries is not None:
            fresh = {w.audience_key for w in written}
            self._summaries = [w for w in self._summaries if w.audience_key not in fresh] + written

    def _may_go_on(self) -> bool:
        """The outbox is available and time is left for one more audience."""
        return not self._stop.is_set() and self.seconds_left() >= SAFETY_SECONDS

    def _flush(self, waiting: Waiting, mode: str) -> FlushReport:
        report = FlushReport()
        if not self._may_go_on():
            return report
        name = self._settings(waiting).advertiser
        advertiser = self.advertisers.get(name, self._config.rate(name, self.policy.calls_per_minute))
        if advertiser is None or advertiser.app.stop.is_set():  # its changes wait (the credentials are counted)
            return report
        try:
            with self.allowance.holding(sum(waiting.counts.values()), self._may_go_on) as held:
                if held:
                    self._send(advertiser, waiting, mode, report)
        except DependencyUnavailable as error:  # the entries stay: what was sent is sent again, in order
            logger.warning("outbox unavailable", extra={"reason": str(error)})
            report.counts["dependency_errors"] += 1
            self._summaries = None  # a write may have been made or not: read them again
            self._stop.set()
        return report

    def _send(self, advertiser: Advertiser, waiting: Waiting, mode: str, report: FlushReport) -> None:
        read, complete = self.outbox.oldest(waiting.audience_key, waiting.cursor)
        plans = patches(waiting.audience_key, net(s.entry for s in read))
        types = self._settings(waiting).identifier_types
        # Adds of types the audience does not send are dropped; removes always go (they may be in Criteo).
        dropped = {id(p) for p in plans if types is not None and p.operation == ADD and p.identifier_type not in types}
        report.counts["identifiers_not_sent_by_setting"] += sum(len(p.identifiers) for p in plans if id(p) in dropped)
        chosen = [p for p in plans if id(p) not in dropped and (mode == ALL or p.full)]
        if not chosen and mode == FULL_ONLY:
            return
        sent, failed = self._patch_all(advertiser, waiting, chosen, report)
        sent |= dropped
        unsent = [p for p in plans if id(p) not in sent]
        carry = remainder(unsent) if unsent else None
        if self.outbox.finish(waiting, Outcome(read, carry, stored_counts(read), complete)):
            report.emptied += 1
        if sent:
            now = self.clock()
            identifiers = sum(len(p.identifiers) for p in plans if id(p) in sent)
            if unsent:
                report.waited.append((now - min(s.queued for s in read), identifiers))
            else:
                report.waited.extend((now - s.queued, sum(s.entry.counts().values())) for s in read)
        if failed:
            self.outbox.failed(
                waiting, self.clock() + min(MAX_RETRY_SECONDS, self.policy.retry_seconds * 2**waiting.fails)
            )

    def _patch_all(
        self, advertiser: Advertiser, waiting: Waiting, plans: list[PatchPlan], report: FlushReport
    ) -> tuple[set[int], bool]:
        """PATCH in order while budget and time last; the ids of the plans Criteo has (or that were parked),
        and whether a call failed (the audience then backs off).

        An audience whose calls fit in the budget's bucket takes them all at once, or waits whole for the next
        pass: sending part of it now would leave its other groups to be joined by newer changes, and the
        groups sent now would need another call for theirs (the 1M/20 burst made 170 PATCHes for 160)."""
        sent: set[int] = set()
        if not plans:
            return sent, False
        app = advertiser.app
        whole = len(plans) <= app.budget.capacity
        try:
            segment_id = self._segment_id(advertiser, waiting)
            self._lookalike(advertiser, waiting, segment_id, report)
            if whole and not app.take(len(plans)):
                report.counts["budget_waits"] += 1
                app.stop.set()
                return sent, False
            for plan in plans:
                if self._stop.is_set() or app.stop.is_set() or self.seconds_left() < SAFETY_SECONDS:
                    break
                if not whole and not app.take(1):
                    report.counts["budget_waits"] += 1
                    app.stop.set()
                    break
                segment_id = self._patch(advertiser, plan, segment_id, waiting, report)
                sent.add(id(plan))
        except SegmentOwnedElsewhere as error:
            report.counts["segment_ownership_conflicts"] += 1
            logger.error("segment owned by another deployment", extra={"reason": str(error)})
        except InvalidCredentials as error:
            report.counts["criteo_credentials_errors"] += 1
            logger.error(
                "Criteo credentials rejected: fix the Criteo secret",
                extra={"reason": str(error), "advertiser": advertiser.name},
            )
            app.stop.set()
        except CriteoError as error:
            report.counts["flush_failures"] += 1
            logger.warning("Criteo call failed; the changes wait in the outbox", extra={"reason": str(error)})
        else:
            return sent, False
        return sent, True

    def _patch(
        self, advertiser: Advertiser, plan: PatchPlan, segment_id: str, waiting: Waiting, report: FlushReport
    ) -> str:
        """One PATCH (a segment that vanished is looked up once more); returns the segment id used. A request
        Criteo refuses is parked in the DLQ with its reason."""
        gum_caller_id = self.options.gum_caller_id if plan.identifier_type == GUM else None
        patch = partial(
            advertiser.criteo.patch_contact_list,
            operation=plan.operation,
            identifier_type=plan.identifier_type,
            identifiers=plan.identifiers,
            gum_caller_id=gum_caller_id,
        )
        try:
            try:
                result = patch(segment_id)
            except SegmentGone:
                if self._settings(waiting).segment_id:
                    raise  # the configured segment is gone: the changes wait until the setting is fixed
                advertiser.directory.forget(self._segment_name(waiting))
                segment_id = self._segment_id(advertiser, waiting)
                result = patch(segment_id)
        except RejectedRequest as error:
            self.dead_letters.send([parked_body(plan, waiting.name)], str(error))
            report.counts["dead_lettered_identifiers"] += len(plan.identifiers)
            return segment_id
        valid = int(result.get("nbValidIdentifiers") or 0)
        report.counts["identifiers_added" if plan.operation == ADD else "identifiers_removed"] += valid
        report.counts["invalid_identifiers"] += int(result.get("nbInvalidIdentifiers") or 0)
        report.counts["patches"] += 1
        return segment_id

    def _settings(self, waiting: Waiting) -> AudienceSettings:
        return self._config.settings(waiting.audience_key)

    def _segment_name(self, waiting: Waiting) -> str:
        return self._settings(waiting).segment_name or self.options.name_prefix + waiting.audience_key

    def _segment_id(self, advertiser: Advertiser, waiting: Waiting) -> str:
        """The configured segment; else the one the audience was last sent to in this advertiser's account,
        renamed if its name in the settings changed; else resolve (or create) it by name. Criteo calls made
        here are charged to the budget."""
        settings = self._settings(waiting)
        if not waiting.segment_id and not settings.segment_id:  # (a configured segment is never remembered)
            self.outbox.recall(waiting)
        if waiting.advertiser != advertiser.name:  # moved to another advertiser: its segments there are new
            if waiting.segment_id and self.moves is not None:  # (a new audience's first flush is no move)
                self.moves.start(waiting.audience_key)
                logger.warning(
                    MOVED,
                    extra={"audience": waiting.audience_key, "advertiser": advertiser.name, "was": waiting.advertiser},
                )
            moved = forgotten(advertiser.name)
            self.outbox.remember(waiting.audience_key, moved)
            waiting.advertiser, waiting.segment_id, waiting.segment_name, waiting.lookalike_id = moved.values()
        if settings.segment_id:
            return settings.segment_id
        name = self._segment_name(waiting)
        display = waiting.name or waiting.audience_key
        description = settings.description or f"Segment Engage audience {display} (synced by segment-criteo-sync)"
        with self._charged(advertiser):
            if waiting.segment_id and waiting.segment_name != name:
                advertiser.criteo.update_segment(waiting.segment_id, name=name)
                advertiser.directory.renamed(waiting.segment_name, name, waiting.segment_id)
                logger.info("renamed a Criteo segment", extra={"segment": name, "was": waiting.segment_name})
            segment_id = advertiser.directory.resolve(name, description)
        if (segment_id, name) != (waiting.segment_id, waiting.segment_name):
            self.outbox.remember_at_finish(waiting, {"segment_id": segment_id, "segment_name": name})
            waiting.segment_id, waiting.segment_name = segment_id, name
        return segment_id

    @staticmethod
    @contextmanager
    def _charged(advertiser: Advertiser) -> Iterator[None]:
        """Segment look-ups, one at a time, their Criteo calls charged to the app's budget once made."""
        with advertiser.resolving:
            before = advertiser.criteo.stats.total_calls
            try:
                yield
            finally:
                advertiser.app.charge(advertiser.criteo.stats.total_calls - before)

    def _lookalike(self, advertiser: Advertiser, waiting: Waiting, seed_id: str, report: FlushReport) -> None:
        """Create the audience's lookalike segment once, if its settings ask for one (a failure is tried again
        at its next flush and does not hold back its changes)."""
        wanted = self._settings(waiting).lookalike
        if wanted is None or waiting.lookalike_id:
            return
        name = wanted.segment_name or f"{self._segment_name(waiting)} (lookalike)"
        description = f"Lookalike of Segment Engage audience {waiting.name or waiting.audience_key}"
        try:
            with self._charged(advertiser):
                lookalike_id = advertiser.directory.lookalike(seed_id, name, description, wanted.target_size)
        except CriteoError as error:
            report.counts["lookalike_failures"] += 1
            logger.warning("lookalike segment not created; tried again next time", extra={"reason": str(error)})
            return
        self.outbox.remember_at_finish(waiting, {"lookalike_id": lookalike_id})
        waiting.lookalike_id = lookalike_id
        logger.info("lookalike segment ready", extra={"segment": name, "lookalike_id": lookalike_id})


def _has_full(waiting: Waiting) -> bool:
    return any(n >= MAX_IDENTIFIERS_PER_PATCH for n in waiting.counts.values())


def parked_body(plan: PatchPlan, name: str) -> str:
    """A PATCH Criteo refused, as a DLQ message that a redrive puts back in the outbox."""
    return pack_parked(Parked(plan.audience_key, name, plan.operation, plan.identifier_type, plan.identifiers))


def waits_for_this_invocation(report: FlushReport) -> bool:
    """After a pass: whether anything waits that this invocation could send (an advertiser whose credentials
    could not be read is read again by the next invocation, not at every pass)."""
    sendable = report.gauges["outbox_audiences"] > report.gauges["outbox_without_credentials"]
    return sendable or bool(report.gauges["inbox_groups"])


class KeptSummaries:
    """The outbox's summaries as the last pass in this container left them, for the next pass instead of reading
    them again: under a backlog a pass comes every few seconds, and on 100k changes over 2,000 audiences reading
    them at every pass was ~2.5% of the bill. Kept only while no other invocation flushed in between (the
    flusher lease's number is the next one) and for at most MAX_AGE_SECONDS since they were read (what is
    written outside the flusher, a redrive's parked changes, is seen within that)."""

    MAX_AGE_SECONDS = 60.0

    def __init__(self) -> None:
        self._kept: tuple[int, list[Waiting]] | None = None
        self._since = 0.0  # when the summaries handed out last were read

    def take(self, turn: int, now: float) -> list[Waiting] | None:
        """The summaries for the pass holding lease number `turn` (None: read them)."""
        kept, self._kept = self._kept, None
        if kept is None or kept[0] != turn - 1 or now - self._since > self.MAX_AGE_SECONDS:
            self._since = now
            return None
        return kept[1]

    def keep(self, turn: int, summaries: list[Waiting] | None) -> None:
        """What the pass holding lease number `turn` left."""
        self._kept = None if summaries is None else (turn, summaries)


def one_pass(
    ledger: Ledger,
    turn: int,
    flusher: Callable[[list[Waiting] | None], Flusher],
    kept: KeptSummaries,
    carried: Collection[float] = (),
    tick_delay: int | None = None,
) -> tuple[FlushReport, float | None]:
    """One pass by the holder of flusher lease number `turn` (`flusher`: built from the summaries kept), which
    then gives the lease back, arming the next flush tick while anything waits (ticks.py; `carried`: the ticks
    that brought this pass; `tick_delay` None: no ticks). Returns the report and the tick armed (None: none)."""
    tick = KEEP
    try:
        current = flusher(kept.take(turn, ledger.clock()))
        report = current.tick()
        kept.keep(turn, current.summaries)
        if tick_delay is not None:
            waiting = waits_for_this_invocation(report)
            tick = next_tick(waiting, ledger.flusher_tick, carried, ledger.clock(), tick_delay)
    finally:
        armed = ledger.release_flusher(tick)
    return report, tick.arm if armed else None
