"""The sync use case: one SQS batch → per-user ledger changes → one inbox entry per group of audiences, with
exact failure reporting. The flush (flush.py) gathers the inbox into each audience's outbox and takes it to
Criteo."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from audience_sync.errors import DependencyUnavailable
from audience_sync.inbox import Appended, Inbox, Slice, group_of
from audience_sync.ledger import Consent, Ledger, Suppression
from audience_sync.membership import ByType, Membership, difference
from audience_sync.observability import logger
from audience_sync.plan import Entry, outbox_entry
from audience_sync.queue import QueueWriter, number_attribute
from audience_sync.records import (
    ADD,
    ALL_AUDIENCES,
    CONSENT_OPERATIONS,
    GRANT,
    REMOVE,
    AudienceChange,
    Parked,
    PoisonMessage,
    pack_changes,
    unpack,
)

# Stop starting new work when less than this is left, so the answer to SQS is always delivered.
SAFETY_SECONDS = 5.0
LEDGER_UNAVAILABLE = "membership ledger unavailable"
MAX_LOCK_WAIT_SECONDS = 60.0
# A message attribute: when the changes a sync sent back to the queue were first queued (unix seconds).
QUEUED_ATTRIBUTE = "queued"


class Sourced:
    """A change, its version (computed once), the SQS message it came from (the unit SQS retries) and when
    that message was queued."""

    __slots__ = ("change", "message_id", "queued", "version")

    def __init__(self, change: AudienceChange, message_id: str, queued: float) -> None:
        self.change = change
        self.message_id = message_id
        self.queued = queued
        self.version = change.version


@dataclass
class SyncReport:
    """SQS message ids to hand back, and counters for metrics."""

    failed: dict[str, str] = field(default_factory=dict)  # message id -> why it comes back (first reason wins)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def failed_message_ids(self) -> set[str]:
        """The messages SQS must deliver again."""
        return set(self.failed)

    def hand_back(self, message_ids: Iterable[str], reason: str) -> None:
        """Report messages as failed, so SQS delivers them again."""
        for message_id in message_ids:
            self.failed.setdefault(message_id, reason)


class DeadLetters:
    """Sends records that can never succeed to the DLQ, with the reason as a message attribute."""

    def __init__(self, queue: QueueWriter) -> None:
        self.queue = queue

    def send(self, bodies: list[str], reason: str) -> None:
        """Park bodies with their reason (raises DependencyUnavailable if SQS fails)."""
        self.queue.send(bodies, {"reason": {"DataType": "String", "StringValue": reason[:256]}})
        logger.error("records sent to the dead-letter queue", extra={"reason": reason[:256], "messages": len(bodies)})


@dataclass(frozen=True)
class SyncOptions:
    """Deployment settings the sync use case needs."""

    name_prefix: str = "segment_"
    deployment: str = "segment-criteo-sync"
    adopt_segments: frozenset[str] = frozenset()
    consent_required: bool = False  # CONSENT_CATEGORIES is set: only users who granted them are sent
    gum_caller_id: int | None = None


UserChanges = dict[str, list[Sourced]]  # user -> their changes in this batch (consent-only users: consent)
AudienceChanges = dict[str, UserChanges]  # audience -> its users' changes


@dataclass
class Folded:
    """One audience's changes folded into its users' ledger states, not saved yet."""

    users: UserChanges
    befores: dict[str, Membership]  # the states read
    changed: dict[str, Membership]  # the states to save
    differences: dict[str, tuple[ByType, ByType]]  # per user (added, removed) identifiers
    new_members: set[str]

    @property
    def ahead(self) -> dict[str, Membership]:
        """Users gaining identifiers: saved before the entry is stored (see `AudienceSync._apply_group`)."""
        return {u: self.changed[u] for u, (added, _) in self.differences.items() if added and u in self.changed}

    @property
    def behind(self) -> dict[str, Membership]:
        """The other users changed: saved after the entry is stored."""
        ahead = self.ahead
        return {u: s for u, s in self.changed.items() if u not in ahead}


class AudienceSync:
    """Applies a batch of packed change records to the ledger and the inbox."""

    def __init__(
        self,
        ledger: Ledger,
        inbox: Inbox,
        dead_letters: DeadLetters,
        options: SyncOptions,
        seconds_left: Callable[[], float],
        suppressions: bool = False,
        requeue: QueueWriter | None = None,
    ) -> None:
        self.ledger = ledger
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.options = options
        self.seconds_left = seconds_left
        # The audience-changes queue: what a batch's time did not reach goes back to it as new messages.
        self.requeue = requeue
        # A rule suppresses users from every audience: enters are checked against their stored suppression.
        self.suppressions = suppressions
        self.redelivered: frozenset[str] = frozenset()

    def run(
        self,
        messages: list[tuple[str, str]],
        receive_counts: Mapping[str, int] | None = None,
        queued: Mapping[str, float] | None = None,
    ) -> SyncReport:
        """Sync a batch of (SQS message id, body); returns the message ids that must come back.

        `receive_counts` (SQS's ApproximateReceiveCount per message): a message delivered again may come from a
        sync that wrote its users ahead and died before their identifiers reached the inbox, so their adds
        are queued again. `queued` (SQS's SentTimestamp per message, in seconds): how long changes have waited.

        The groups of audiences synced longest ago go first: when time runs out, the ones left for the next
        delivery are never the same again and again (the last in a fixed order was handed back until its
        messages were parked, in the chaos soak). A group another invocation holds waits until the others are done.
        """
        report = SyncReport()
        self.redelivered = frozenset(m for m, count in (receive_counts or {}).items() if count > 1)
        by_audience: dict[str, UserChanges] = {}
        consent_items: list[Sourced] = []
        everywhere: list[Sourced] = []
        items, parked = self._decode(messages, queued or {}, report)
        for message_id, entry in parked:
            self._put_back(message_id, entry, report)
        for item in items:
            if item.change.operation in CONSENT_OPERATIONS and not item.change.audience_key:
                consent_items.append(item)
            elif item.change.audience_key == ALL_AUDIENCES:
                everywhere.append(item)
            else:
                by_audience.setdefault(item.change.audience_key, {}).setdefault(item.change.user, []).append(item)
        if everywhere:
            self._suppress_everywhere(everywhere, by_audience, report)
        suppressed = self._add_stored_suppressions(by_audience, report) if self.suppressions else {}
        evaluated = self._apply_consent(consent_items, by_audience, report)
        consents = self._read_consents(by_audience, report)
        if consents is None:
            return report
        recheck: AudienceChanges = {}
        not_reached: dict[str, list[Sourced]] = {}
        busy: list[tuple[str, AudienceChanges]] = []  # groups another invocation held: waited for at the end
        for wait, groups in ((False, self._longest_waiting_first(by_audience, report)), (True, busy)):
            for group, audiences in groups:
                if self.seconds_left() < SAFETY_SECONDS:
                    _not_reached(audiences, not_reached)
                    continue
                done = self._sync_group(group, audiences, consents, report, wait)
                if done is None:
                    busy.append((group, audiences))
                else:
                    recheck.update(done)
        if self.options.consent_required:
            self._recheck_consent(recheck, consents, report)
        if self.suppressions:
            self._recheck_suppressions(by_audience, suppressed, consents, report)
        self._requeue_not_reached(not_reached, report)
        if evaluated:
            self._settle_consent(evaluated, report)
        return report

    def _requeue_not_reached(self, not_reached: dict[str, list[Sourced]], report: SyncReport) -> None:
        """The changes of the audiences the time did not reach go back to the queue as new messages, and their
        messages count as done: the work done on the others is kept. (Handed back whole, a message whose
        audiences never all fit in one invocation came back until it was parked; a consent change, which
        re-evaluates every audience of the user, never got further than one delivery's time.) A message that
        comes back anyway, or whose rest can't be queued, is handed back whole, as before. The new messages carry
        when the oldest of them was first queued (QUEUED_ATTRIBUTE), so the flush does not take them for new."""
        rest = {m: changes for m, changes in not_reached.items() if m not in report.failed}
        if not rest:
            return
        if self.requeue is None:
            report.hand_back(rest, "out of time")
            return
        items = [item for items in rest.values() for item in items]
        queued = number_attribute(QUEUED_ATTRIBUTE, min(i.queued for i in items))
        try:  # one send for every message's rest, packed together (not one send per message)
            self.requeue.send(list(pack_changes(i.change for i in items)), queued)
        except DependencyUnavailable:  # some may have been sent: applying them twice is harmless
            report.hand_back(rest, "out of time")
            return
        report.counts["changes_requeued"] += len(items)

    def _longest_waiting_first(
        self, by_audience: dict[str, UserChanges], report: SyncReport
    ) -> list[tuple[str, AudienceChanges]]:
        """The batch's audiences by group, the groups synced longest ago first."""
        groups: dict[str, AudienceChanges] = {}
        for audience_key, users in sorted(by_audience.items()):
            groups.setdefault(group_of(audience_key), {})[audience_key] = users
        try:
            synced = self.inbox.last_synced(groups)
        except DependencyUnavailable as error:  # the leases will tell; the order is only a fairness aid
            logger.warning(LEDGER_UNAVAILABLE, extra={"reason": str(error)})
            synced = {}
        return sorted(groups.items(), key=lambda entry: (synced.get(entry[0], 0.0), entry[0]))

    def _decode(
        self, messages: list[tuple[str, str]], queued: Mapping[str, float], report: SyncReport
    ) -> tuple[list[Sourced], list[tuple[str, Parked]]]:
        items: list[Sourced] = []
        parked: list[tuple[str, Parked]] = []
        now = self.ledger.clock()
        for message_id, body in messages:
            try:
                unpacked = unpack(body)
            except PoisonMessage as error:
                report.counts["poison_messages"] += 1
                try:
                    self.dead_letters.send([body], f"undecodable message: {error}")
                except DependencyUnavailable:
                    report.hand_back([message_id], "dead-letter queue unavailable")
                continue
            if isinstance(unpacked, Parked):
                parked.append((message_id, unpacked))
                continue
            report.counts["records_in"] += len(unpacked)
            sent_at = queued.get(message_id, now)
            items.extend(Sourced(change, message_id, sent_at) for change in unpacked)
        return items, parked

    def _put_back(self, message_id: str, parked: Parked, report: SyncReport) -> None:
        """A parked PATCH redriven from the DLQ goes back into its audience's outbox (through the inbox) as it
        was."""
        identifiers = {parked.identifier_type: set(parked.identifiers)}
        entry = Entry({}, identifiers) if parked.operation == ADD else Entry(identifiers, {})
        group = group_of(parked.audience_key)
        try:
            seq = self.inbox.acquire(group, min(MAX_LOCK_WAIT_SECONDS, self.seconds_left() - SAFETY_SECONDS))
            if seq is None:
                report.hand_back([message_id], "another invocation held the audience's lease")
                return
            try:
                slices = {parked.audience_key: Slice(entry, parked.audience_name, self.ledger.clock())}
                self.inbox.release(group, self.inbox.append(group, seq, slices))
            except DependencyUnavailable:
                self.inbox.release(group)
                raise
        except DependencyUnavailable as error:
            _unavailable(report, [message_id], error, LEDGER_UNAVAILABLE)
            return
        report.counts["parked_patches_put_back"] += 1

    def _suppress_everywhere(
        self, items: list[Sourced], by_audience: dict[str, UserChanges], report: SyncReport
    ) -> None:
        """Store each user's suppression from every audience (so an older enter arriving later is held back
        too), then add its exit to every audience the ledger holds the user in."""
        newest: dict[str, Suppression] = {}
        for item in items:
            change = item.change
            suppression = Suppression(change.timestamp_ms, change.message_id, change.hold_until_ms)
            newest[change.user] = suppression.merged(newest.get(change.user))
        try:
            self.ledger.save_suppressions(newest)
            audiences = self.ledger.audiences_of_users(newest)
        except DependencyUnavailable as error:
            _unavailable(report, (i.message_id for i in items), error, LEDGER_UNAVAILABLE)
            return
        report.counts["suppressions_everywhere"] += len(items)
        for item in items:
            for audience_key in audiences[item.change.user]:
                exit_ = Sourced(item.change._replace(audience_key=audience_key), item.message_id, item.queued)
                by_audience.setdefault(audience_key, {}).setdefault(item.change.user, []).append(exit_)

    def _add_stored_suppressions(
        self, by_audience: dict[str, UserChanges], report: SyncReport
    ) -> dict[str, Suppression | None]:
        """Fold each entering user's stored suppression into their audiences with them (an enter older than
        it, arriving after it, stays out; folding it again changes nothing). Returns what was read per
        entering user, for `_recheck_suppressions`."""
        entering = _entering(by_audience)
        if not entering:
            return {}
        try:
            stored = self.ledger.suppressions(entering)
        except DependencyUnavailable as error:
            _unavailable(report, _message_ids(by_audience), error)
            by_audience.clear()
            return {}
        _fold_suppressions(by_audience, stored)
        return {user: stored.get(user) for user in entering}

    def _recheck_suppressions(
        self,
        by_audience: dict[str, UserChanges],
        used: dict[str, Suppression | None],
        consents: dict[str, Consent],
        report: SyncReport,
    ) -> None:
        """Re-read the suppressions of the entering users once their audiences are saved, and apply again, under
        the lease, the audiences of those suppressed meanwhile by another invocation (which either finds the
        new membership in its Query, or is found here: the same guarantee as the consent re-check)."""
        if not used:
            return
        try:
            fresh = self.ledger.suppressions(used)
        except DependencyUnavailable as error:
            _unavailable(report, _message_ids(by_audience), error)
            return
        moved = {user: s for user in used if (s := fresh.get(user)) is not None and s != used[user]}
        report.counts["suppression_rechecks"] += len(moved)
        again = {
            audience_key: {u: list(items) for u, items in users.items() if u in moved}
            for audience_key, users in by_audience.items()
        }
        _fold_suppressions(again, moved)
        self._sync_again({a: users for a, users in again.items() if users}, consents, report)

    def _apply_consent(
        self, items: list[Sourced], by_audience: dict[str, UserChanges], report: SyncReport
    ) -> dict[str, tuple[Sourced, str]]:
        """Store the newest consent per user; where it changes what may be sent, have every audience the ledger
        holds the user in re-evaluated (one Query per such user). Returns those users, with the consent record
        and the consent version that stays `pending` until that is done.

        A first consent needs no look-up unless the ledger marked the user as held for want of one (see
        `_apply_group`); `pending` is stored with the consent, so a redelivery, or any later consent change,
        finishes the re-evaluation of an earlier one that failed midway.
        """
        if not items:
            return {}
        newest: dict[str, Sourced] = {}
        for item in items:
            held = newest.get(item.change.user)
            if held is None or item.version > held.version:
                newest[item.change.user] = item
        writes: dict[str, Consent] = {}
        evaluate: dict[str, tuple[Sourced, str]] = {}
        try:
            stored = self.ledger.consents(newest)
            for user, item in newest.items():
                granted, old = item.change.operation == GRANT, stored.get(user)
                if old is None or item.version > old.version:
                    pending = old is not None and (granted != old.granted or old.pending)
                    writes[user] = Consent(item.version, granted, pending)
                    version = item.version
                else:
                    pending, version = old.pending, old.version
                if pending:
                    evaluate[user] = (item, version)
            self.ledger.save_consents(writes)
            audiences = self.ledger.audiences_of_users(evaluate)
        except DependencyUnavailable as error:
            _unavailable(report, (i.message_id for i in items), error, LEDGER_UNAVAILABLE)
            return {}
        report.counts["consent_changes"] += len(writes)
        report.counts["consent_reevaluations"] += len(evaluate)
        report.counts["stale_dropped"] += len(items) - len(writes)
        for user, user_audiences in audiences.items():
            for audience_key in user_audiences:
                by_audience.setdefault(audience_key, {}).setdefault(user, []).append(evaluate[user][0])
        return evaluate

    def _read_consents(self, by_audience: dict[str, UserChanges], report: SyncReport) -> dict[str, Consent] | None:
        """Every user's consent, read once for the batch (after this batch's consent changes are stored)."""
        if not self.options.consent_required:
            return {}
        try:
            return self.ledger.consents(user for users in by_audience.values() for user in users)
        except DependencyUnavailable as error:
            _unavailable(report, _message_ids(by_audience), error)
            return None

    def _settle_consent(self, evaluated: dict[str, tuple[Sourced, str]], report: SyncReport) -> None:
        """Clear `pending` for users whose re-evaluation is done (their consent message is not coming back)."""
        done = {user: version for user, (item, version) in evaluated.items() if item.message_id not in report.failed}
        try:
            self.ledger.settle_consents(done)
        except DependencyUnavailable as error:  # stays pending: the next consent change re-evaluates again
            logger.warning(LEDGER_UNAVAILABLE, extra={"reason": str(error)})

    def _sync_again(self, changes: AudienceChanges, consents: dict[str, Consent], report: SyncReport) -> None:
        """Apply these audiences' changes once more, each group under its lease (waited for)."""
        for group, audiences in self._longest_waiting_first(changes, report):
            self._sync_group(group, audiences, consents, report, wait=True)

    def _sync_group(
        self, group: str, audiences: AudienceChanges, consents: dict[str, Consent], report: SyncReport, wait: bool
    ) -> AudienceChanges | None:
        """Apply one group's audiences under its lease; returns the users whose consent must be read again, per
        audience. None: another invocation held the lease and `wait` was False. Waited for in vain, the
        messages come back."""
        message_ids = set(_message_ids(audiences))
        try:
            wait_seconds = min(MAX_LOCK_WAIT_SECONDS, self.seconds_left() - SAFETY_SECONDS) if wait else 0.0
            seq = self.inbox.acquire(group, wait_seconds)
            if seq is None and not wait:
                return None
            if seq is None:
                report.counts["lock_timeouts"] += 1
                report.hand_back(message_ids, "another invocation held the audience's lease")
                return {}
            try:
                return self._apply_group(group, seq, audiences, consents, report)  # releases the lease
            except Exception:
                self.inbox.release(group)
                raise
        except DependencyUnavailable as error:
            _unavailable(report, message_ids, error, LEDGER_UNAVAILABLE)
            return {}

    def _apply_group(
        self, group: str, seq: int, audiences: AudienceChanges, consents: dict[str, Consent], report: SyncReport
    ) -> AudienceChanges:
        """Fold each audience's changes into its users' ledger states, queue the differences in one inbox entry,
        save, release the lease.

        Users gaining identifiers are written ahead of the entry: an add queued for Criteo is never unknown to the
        ledger (a sync that dies in between leaves its messages to come back, and they queue the adds again). The
        others are written after it; the entry counts once the release that ends the lease says so, and if that
        fails every user goes back to what they were, so the messages' next delivery does it all again.

        With consent enforced, returns the users to read consent for again: new members now sent (a withdrawal
        stored meanwhile by another invocation could not see them), and members held for want of a consent
        whose marker could not be written because a consent arrived meanwhile.
        """
        states = self.ledger.memberships_of(audiences)
        folded = {a: self._fold(users, states[a], consents, report) for a, users in audiences.items()}
        self.ledger.save_memberships({a: fold.ahead for a, fold in folded.items()})
        slices: dict[str, Slice] = {}
        for audience_key, fold in folded.items():
            entry = outbox_entry(fold.differences)
            if entry:
                queued = min(i.queued for u in fold.differences for i in fold.users[u])
                slices[audience_key] = Slice(entry, self._display_name(fold.users) or "", queued)
        try:
            appended: Appended | None = self.inbox.append(group, seq, slices) if slices else None
            self.ledger.save_memberships({a: fold.behind for a, fold in folded.items()})
            self.inbox.release(group, appended)
        except DependencyUnavailable:
            self.ledger.save_memberships({a: {u: fold.befores[u] for u in fold.changed} for a, fold in folded.items()})
            raise
        report.counts["identifiers_queued"] += appended.identifiers if appended else 0
        if not self.options.consent_required:
            return {}
        recheck: AudienceChanges = {}
        for audience_key, fold in folded.items():
            waiting = [u for u, s in fold.changed.items() if s.is_in and u not in consents]
            live = {u for u in fold.new_members if fold.changed.get(u) and fold.changed[u].live}
            users = live | self.ledger.mark_held(waiting)
            if users:
                recheck[audience_key] = {u: fold.users[u] for u in users}
        return recheck

    def _fold(
        self, users: UserChanges, states: dict[str, Membership], consents: dict[str, Consent], report: SyncReport
    ) -> Folded:
        """One audience's changes folded into its users' ledger states (as read), and what Criteo must be told."""
        fold = Folded(users, {}, {}, {}, set())
        for user, items in users.items():
            state = states[user]
            fold.befores[user], sent_before = state.copy(), state.sent()
            unknown = not (state.entered or state.exited)
            for item in sorted(items, key=lambda i: i.version):
                state.apply(item.change, item.version)
            consent = consents.get(user)
            allowed = not self.options.consent_required or (consent is not None and consent.granted)
            state.live = state.is_in and allowed
            if unknown and not state.is_in:
                # A user the ledger never saw may be in Criteo from before it (an adopted segment, a migration):
                # their exit removes what it carries.
                sent_before = carried_by_exits(items)
            resend = state.live and any(i.message_id in self.redelivered for i in items)
            unchanged = state == fold.befores[user]
            if unchanged and not resend:
                report.counts["stale_dropped"] += len(items)
                continue
            if not unchanged:
                fold.changed[user] = state
            if unknown:
                fold.new_members.add(user)
            added, removed = difference(sent_before, state.sent())
            if resend:
                added = state.sent()
            if added or removed:
                fold.differences[user] = (added, removed)
        return fold

    def _recheck_consent(self, recheck: AudienceChanges, used: dict[str, Consent], report: SyncReport) -> None:
        """Re-read the consent of the users `_apply_group` named and re-apply, under the lease, the audiences
        of those whose consent changed meanwhile (their changes go along again: folding twice changes nothing,
        and a failure hands their messages back)."""
        users = {u for audience_users in recheck.values() for u in audience_users}
        if not users:
            return
        try:
            fresh = self.ledger.consents(users)
        except DependencyUnavailable as error:
            _unavailable(report, _message_ids(recheck), error)
            return
        moved = {u for u in users if getattr(fresh.get(u), "version", None) != getattr(used.get(u), "version", None)}
        report.counts["consent_rechecks"] += len(moved)
        again = {
            audience_key: {u: items for u, items in audience_users.items() if u in moved}
            for audience_key, audience_users in recheck.items()
        }
        self._sync_again({a: users for a, users in again.items() if users}, {**used, **fresh}, report)

    @staticmethod
    def _display_name(users: UserChanges) -> str | None:
        names = (i.change.audience_name for items in users.values() for i in items if i.change.audience_name)
        return next(names, None)


def _unavailable(
    report: SyncReport, message_ids: Iterable[str], error: DependencyUnavailable, reason: str | None = None
) -> None:
    """The ledger failed: say so, and hand the messages back (with `reason`, else the error's)."""
    logger.warning(LEDGER_UNAVAILABLE, extra={"reason": str(error)})
    report.hand_back(message_ids, reason or str(error))


def _not_reached(audiences: AudienceChanges, not_reached: dict[str, list[Sourced]]) -> None:
    """Note the changes of audiences this batch's time did not reach, by message; a consent change goes back as
    the re-evaluation of each audience alone."""
    for audience_key, users in audiences.items():
        for items in users.values():
            for item in items:
                change = item.change._replace(audience_key=audience_key)
                not_reached.setdefault(item.message_id, []).append(Sourced(change, item.message_id, item.queued))


def _message_ids(changes: Mapping[str, UserChanges]) -> Iterator[str]:
    """The message of every change in `changes`."""
    return (i.message_id for users in changes.values() for items in users.values() for i in items)


def _entering(by_audience: dict[str, UserChanges]) -> set[str]:
    """The users with an enter among their changes."""
    return {
        user
        for users in by_audience.values()
        for user, items in users.items()
        if any(item.change.operation == ADD for item in items)
    }


def _fold_suppressions(by_audience: dict[str, UserChanges], suppressions: Mapping[str, Suppression]) -> None:
    """Add each user's suppression, as an exit, to their changes in every audience (attributed to the message
    of their first change there)."""
    for audience_key, users in by_audience.items():
        for user, items in users.items():
            suppression = suppressions.get(user)
            if suppression is not None:
                first = items[0]
                items.append(Sourced(suppression.exit(audience_key, user), first.message_id, first.queued))


def carried_by_exits(items: list[Sourced]) -> ByType:
    """The identifiers the exits among these changes carry, by type."""
    carried: ByType = {}
    for item in items:
        if item.change.operation == REMOVE:
            for id_type, identifiers in item.change.identifiers.items():
                carried.setdefault(id_type, set()).update(identifiers)
    return carried


def park_exhausted(
    report: SyncReport, dead_letters: DeadLetters, messages: dict[str, str], receive_counts: dict[str, int], limit: int
) -> None:
    """Messages failing on their last allowed delivery go to the DLQ ourselves, with the reason attached.

    SQS would move them anyway after `limit` receives, but without saying why; we know why.
    """
    for message_id, why in sorted(report.failed.items()):
        received = receive_counts.get(message_id, 0)
        if limit <= 0 or received < limit:
            continue
        try:
            dead_letters.send([messages[message_id]], f"still failing after {received} deliveries: {why}")
        except DependencyUnavailable:
            continue  # SQS's own redrive policy parks it instead
        del report.failed[message_id]
        report.counts["parked_messages"] += 1
