"""The sync use case: one SQS batch → per-user ledger changes → the fewest Criteo PATCHes, with exact
failure reporting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.errors import (
    CriteoError,
    InvalidCredentials,
    RejectedRequest,
    SegmentGone,
    SegmentOwnedElsewhere,
)
from audience_sync.criteo.segments import SegmentDirectory
from audience_sync.errors import DependencyUnavailable
from audience_sync.identifiers import GUM
from audience_sync.ledger import Consent, Ledger
from audience_sync.membership import ByType, Membership, difference
from audience_sync.observability import logger
from audience_sync.plan import PatchPlan, plan_contact_list_patches
from audience_sync.queue import QueueWriter
from audience_sync.records import (
    ADD,
    CONSENT_OPERATIONS,
    GRANT,
    REMOVE,
    AudienceChange,
    PoisonMessage,
    pack_changes,
    unpack_changes,
)

CREDENTIALS_REJECTED = "Criteo credentials rejected"
# Stop starting new work when less than this is left, so the answer to SQS is always delivered.
SAFETY_SECONDS = 5.0
MAX_LOCK_WAIT_SECONDS = 60.0


class Sourced:
    """A change, its version (computed once) and the SQS message it came from (the unit SQS retries)."""

    __slots__ = ("change", "message_id", "version")

    def __init__(self, change: AudienceChange, message_id: str) -> None:
        self.change = change
        self.message_id = message_id
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


class AudienceSync:
    """Applies a batch of packed change records to the ledger and Criteo."""

    def __init__(
        self,
        criteo: CriteoClient,
        ledger: Ledger,
        dead_letters: DeadLetters,
        options: SyncOptions,
        seconds_left: Callable[[], float],
    ) -> None:
        self.criteo = criteo
        self.directory = SegmentDirectory(criteo, options.deployment, options.adopt_segments)
        self.ledger = ledger
        self.dead_letters = dead_letters
        self.options = options
        self.seconds_left = seconds_left
        self.redelivered: frozenset[str] = frozenset()

    def run(self, messages: list[tuple[str, str]], receive_counts: Mapping[str, int] | None = None) -> SyncReport:
        """Sync a batch of (SQS message id, body); returns the message ids that must come back.

        `receive_counts` (SQS's ApproximateReceiveCount per message): a message delivered again may come from a
        sync that wrote its users ahead and died before Criteo had their identifiers, so their adds are re-sent.

        The audiences synced longest ago go first: when time runs out, the ones left for the next delivery
        are never the same again and again (the last in a fixed order was handed back until its messages
        were parked, in the chaos soak).
        """
        report = SyncReport()
        self.redelivered = frozenset(m for m, count in (receive_counts or {}).items() if count > 1)
        by_audience: dict[str, UserChanges] = {}
        consent_items: list[Sourced] = []
        for item in self._decode(messages, report):
            if item.change.operation in CONSENT_OPERATIONS:
                consent_items.append(item)
            else:
                by_audience.setdefault(item.change.audience_key, {}).setdefault(item.change.user, []).append(item)
        evaluated = self._apply_consent(consent_items, by_audience, report)
        consents = self._read_consents(by_audience, report)
        if consents is None:
            return report
        recheck: dict[str, UserChanges] = {}
        for audience_key, users in self._longest_waiting_first(by_audience, report):
            if report.counts["criteo_credentials_errors"] or self.seconds_left() < SAFETY_SECONDS:
                reason = CREDENTIALS_REJECTED if report.counts["criteo_credentials_errors"] else "out of time"
                report.hand_back((i.message_id for items in users.values() for i in items), reason)
                continue
            recheck[audience_key] = self._sync_audience(audience_key, users, consents, report)
        if self.options.consent_required:
            self._recheck_consent(recheck, consents, report)
        if evaluated:
            self._settle_consent(evaluated, report)
        return report

    def _longest_waiting_first(
        self, by_audience: dict[str, UserChanges], report: SyncReport
    ) -> list[tuple[str, UserChanges]]:
        try:
            synced = self.ledger.last_synced(by_audience)
        except DependencyUnavailable as error:  # the leases will tell; the order is only a fairness aid
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            synced = {}
        return sorted(by_audience.items(), key=lambda entry: (synced.get(entry[0], 0.0), entry[0]))

    def _decode(self, messages: list[tuple[str, str]], report: SyncReport) -> list[Sourced]:
        items: list[Sourced] = []
        for message_id, body in messages:
            try:
                changes = unpack_changes(body)
            except PoisonMessage as error:
                report.counts["poison_messages"] += 1
                try:
                    self.dead_letters.send([body], f"undecodable message: {error}")
                except DependencyUnavailable:
                    report.hand_back([message_id], "dead-letter queue unavailable")
                continue
            report.counts["records_in"] += len(changes)
            items.extend(Sourced(change, message_id) for change in changes)
        return items

    def _apply_consent(
        self, items: list[Sourced], by_audience: dict[str, UserChanges], report: SyncReport
    ) -> dict[str, tuple[Sourced, str]]:
        """Store the newest consent per user; where it changes what may be sent, have every audience the ledger
        holds the user in re-evaluated (one Query per such user). Returns those users, with the consent record
        and the consent version that stays `pending` until that is done.

        A first consent needs no look-up unless the ledger marked the user as held for want of one (see
        `_sync_audience`); `pending` is stored with the consent, so a redelivery, or any later consent change,
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
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back((i.message_id for i in items), "membership ledger unavailable")
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
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back((i.message_id for u in by_audience.values() for x in u.values() for i in x), str(error))
            return None

    def _settle_consent(self, evaluated: dict[str, tuple[Sourced, str]], report: SyncReport) -> None:
        """Clear `pending` for users whose re-evaluation is done (their consent message is not coming back)."""
        done = {user: version for user, (item, version) in evaluated.items() if item.message_id not in report.failed}
        try:
            self.ledger.settle_consents(done)
        except DependencyUnavailable as error:  # stays pending: the next consent change re-evaluates again
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})

    def _sync_audience(
        self, audience_key: str, users: UserChanges, consents: dict[str, Consent], report: SyncReport
    ) -> UserChanges:
        """Apply one audience under its lease; returns the users whose consent must be read again."""
        message_ids = {i.message_id for items in users.values() for i in items}
        try:
            if not self.ledger.acquire(audience_key, min(MAX_LOCK_WAIT_SECONDS, self.seconds_left() - SAFETY_SECONDS)):
                report.counts["lock_timeouts"] += 1
                report.hand_back(message_ids, "another invocation held the audience's lease")
                return {}
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "membership ledger unavailable")
            return {}
        try:
            return self._apply_audience(audience_key, users, consents, report)
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "membership ledger unavailable")
            return {}
        finally:
            self.ledger.release(audience_key)

    def _apply_audience(
        self, audience_key: str, users: UserChanges, consents: dict[str, Consent], report: SyncReport
    ) -> UserChanges:
        """Fold each user's changes into their ledger state, PATCH the differences, save what Criteo has.

        With consent enforced, returns the users to read consent for again: new members now sent (a withdrawal
        stored meanwhile by another invocation could not see them), and members held for want of a consent
        whose marker could not be written because a consent arrived meanwhile.
        """
        states = self.ledger.memberships(audience_key, users)
        differences: dict[str, tuple[ByType, ByType]] = {}
        changed: dict[str, Membership] = {}
        new_members: set[str] = set()
        befores: dict[str, Membership] = {}
        for user, items in users.items():
            state = states[user]
            befores[user], sent_before = state.copy(), state.sent()
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
            unchanged = state == befores[user]
            if unchanged and not resend:
                report.counts["stale_dropped"] += len(items)
                continue
            if not unchanged:
                changed[user] = state
            if unknown:
                new_members.add(user)
            added, removed = difference(sent_before, state.sent())
            if resend:
                added = state.sent()
            if added or removed:
                differences[user] = (added, removed)
        # Users gaining identifiers are written ahead of the PATCH: an add Criteo got is never unknown to the
        # ledger (a sync that dies in between leaves its messages to come back, and they re-send the adds).
        ahead = {u: changed[u] for u, (added, _) in differences.items() if added and u in changed}
        self.ledger.save_memberships(audience_key, ahead)
        failed_users: set[str] = set()
        for plan in plan_contact_list_patches(audience_key, differences):
            if not self._apply_plan(plan, users, report):
                failed_users |= plan.users
        saved = {u: s for u, s in changed.items() if u not in failed_users}
        # Written ahead but not sent: back to what they were, so their messages' next delivery sends them.
        undo = {u: befores[u] for u in failed_users & ahead.keys()}
        self.ledger.save_memberships(audience_key, {u: s for u, s in saved.items() if u not in ahead} | undo)
        if not self.options.consent_required:
            return {}
        waiting = [u for u, s in saved.items() if s.is_in and u not in consents]
        recheck = {u for u in new_members if saved.get(u) and saved[u].live} | self.ledger.mark_held(waiting)
        return {u: users[u] for u in recheck}

    def _recheck_consent(self, recheck: dict[str, UserChanges], used: dict[str, Consent], report: SyncReport) -> None:
        """Re-read the consent of the users `_apply_audience` named and re-apply, under the lease, the audiences
        of those whose consent changed meanwhile (their changes go along again: folding twice changes nothing,
        and a failure hands their messages back)."""
        users = {u for audience_users in recheck.values() for u in audience_users}
        if not users:
            return
        try:
            fresh = self.ledger.consents(users)
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back((i.message_id for a in recheck.values() for x in a.values() for i in x), str(error))
            return
        moved = {u for u in users if getattr(fresh.get(u), "version", None) != getattr(used.get(u), "version", None)}
        report.counts["consent_rechecks"] += len(moved)
        for audience_key, audience_users in sorted(recheck.items()):
            again = {u: items for u, items in audience_users.items() if u in moved}
            if again:
                self._sync_audience(audience_key, again, {**used, **fresh}, report)

    def _apply_plan(self, plan: PatchPlan, users: UserChanges, report: SyncReport) -> bool:
        """One PATCH; True when Criteo has it, False when its users' changes come back or were parked."""
        message_ids = {i.message_id for user in plan.users for i in users[user]}
        try:
            segment_id = self._segment_id(plan.audience_key, users)
            gum_caller_id = self.options.gum_caller_id if plan.identifier_type == GUM else None
            patch = partial(
                self.criteo.patch_contact_list,
                operation=plan.operation,
                identifier_type=plan.identifier_type,
                identifiers=plan.identifiers,
                gum_caller_id=gum_caller_id,
            )
            try:
                result = patch(segment_id)
            except SegmentGone:  # the cached id is gone: look it up (or create it) once more
                self.directory.forget(self.options.name_prefix + plan.audience_key)
                result = patch(self._segment_id(plan.audience_key, users))
        except SegmentOwnedElsewhere as error:
            report.counts["segment_ownership_conflicts"] += 1
            logger.error("segment owned by another deployment", extra={"reason": str(error)})
            report.hand_back(message_ids, str(error))
            return False
        except RejectedRequest as error:
            changes = [i.change for user in plan.users for i in users[user]]
            report.counts["dead_lettered_records"] += len(changes)
            self.dead_letters.send(list(pack_changes(changes)), str(error))
            return False
        except InvalidCredentials as error:
            report.counts["criteo_credentials_errors"] += 1
            logger.error("Criteo credentials rejected: fix the Criteo secret", extra={"reason": str(error)})
            report.hand_back(message_ids, CREDENTIALS_REJECTED)
            return False
        except CriteoError as error:
            logger.warning("Criteo call failed; records go back to SQS", extra={"reason": str(error)})
            report.hand_back(message_ids, str(error))
            return False
        valid = int(result.get("nbValidIdentifiers") or 0)
        report.counts["identifiers_added" if plan.operation == ADD else "identifiers_removed"] += valid
        report.counts["invalid_identifiers"] += int(result.get("nbInvalidIdentifiers") or 0)
        report.counts["patches"] += 1
        return True

    def _segment_id(self, audience_key: str, users: UserChanges) -> str:
        names = (i.change.audience_name for items in users.values() for i in items if i.change.audience_name)
        display = next(names, audience_key)
        description = f"Segment Engage audience {display} (synced by segment-criteo-sync)"
        return self.directory.resolve(self.options.name_prefix + audience_key, description)


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
