"""The sync use case: one SQS batch → per-user ledger changes → the fewest Criteo PATCHes, with exact
failure reporting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
    """A change and the SQS message it came from (the unit SQS retries)."""

    __slots__ = ("change", "message_id")

    def __init__(self, change: AudienceChange, message_id: str) -> None:
        self.change = change
        self.message_id = message_id


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

    def run(self, messages: list[tuple[str, str]]) -> SyncReport:
        """Sync a batch of (SQS message id, body); returns the message ids that must come back."""
        report = SyncReport()
        by_audience: dict[str, UserChanges] = {}
        consent_items: list[Sourced] = []
        for item in self._decode(messages, report):
            if item.change.operation in CONSENT_OPERATIONS:
                consent_items.append(item)
            else:
                by_audience.setdefault(item.change.audience_key, {}).setdefault(item.change.user, []).append(item)
        self._apply_consent(consent_items, by_audience, report)
        for audience_key, users in sorted(by_audience.items()):
            if report.counts["config_errors"] or self.seconds_left() < SAFETY_SECONDS:
                reason = CREDENTIALS_REJECTED if report.counts["config_errors"] else "out of time"
                report.hand_back((i.message_id for items in users.values() for i in items), reason)
                continue
            self._sync_audience(audience_key, users, report)
        return report

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

    def _apply_consent(self, items: list[Sourced], by_audience: dict[str, UserChanges], report: SyncReport) -> None:
        """Store the newest consent per user, then have every audience the ledger holds them in re-evaluated.

        A consent change as new as the stored one is re-evaluated too: that is a redelivery whose PATCHes may
        not have been made yet.
        """
        if not items:
            return
        newest: dict[str, Sourced] = {}
        for item in items:
            held = newest.get(item.change.user)
            if held is None or item.change.version > held.change.version:
                newest[item.change.user] = item
        try:
            stored = self.ledger.consents(newest)
            current = {u: i for u, i in newest.items() if i.change.version >= stored.get(u, ("", False))[0]}
            self.ledger.save_consents(
                {
                    u: (i.change.version, i.change.operation == GRANT)
                    for u, i in current.items()
                    if i.change.version > stored.get(u, ("", False))[0]
                }
            )
            audiences = self.ledger.audiences_of_users(current)
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back((i.message_id for i in items), "membership ledger unavailable")
            return
        report.counts["consent_changes"] += len(current)
        report.counts["stale_dropped"] += len(items) - len(current)
        for user, user_audiences in audiences.items():
            for audience_key in user_audiences:
                by_audience.setdefault(audience_key, {}).setdefault(user, []).append(current[user])

    def _sync_audience(self, audience_key: str, users: UserChanges, report: SyncReport) -> None:
        message_ids = {i.message_id for items in users.values() for i in items}
        try:
            if not self.ledger.acquire(audience_key, min(MAX_LOCK_WAIT_SECONDS, self.seconds_left() - SAFETY_SECONDS)):
                report.counts["lock_timeouts"] += 1
                report.hand_back(message_ids, "another invocation held the audience's lease")
                return
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "membership ledger unavailable")
            return
        try:
            self._apply_audience(audience_key, users, report)
        except DependencyUnavailable as error:
            logger.warning("membership ledger unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "membership ledger unavailable")
        finally:
            self.ledger.release(audience_key)

    def _apply_audience(self, audience_key: str, users: UserChanges, report: SyncReport) -> None:
        """Fold each user's changes into their ledger state, PATCH the differences, save what Criteo has."""
        states = self.ledger.memberships(audience_key, users)
        consents: dict[str, Consent] = self.ledger.consents(users) if self.options.consent_required else {}
        differences: dict[str, tuple[ByType, ByType]] = {}
        changed: dict[str, Membership] = {}
        for user, items in users.items():
            state = states[user]
            before, sent_before = _snapshot(state), state.sent()
            unknown = not (state.entered or state.exited)
            for item in sorted(items, key=lambda i: i.change.version):
                if item.change.operation not in CONSENT_OPERATIONS:
                    state.apply(item.change)
            state.live = state.is_in and (not self.options.consent_required or consents.get(user, ("", False))[1])
            if unknown and not state.is_in:
                # A user the ledger never saw may be in Criteo from before it (an adopted segment, a migration):
                # their exit removes what it carries.
                sent_before = _carried_by_exits(items)
            if _snapshot(state) == before:
                report.counts["stale_dropped"] += len(items)
                continue
            changed[user] = state
            added, removed = difference(sent_before, state.sent())
            if added or removed:
                differences[user] = (added, removed)
        failed_users: set[str] = set()
        for plan in plan_contact_list_patches(audience_key, differences):
            if not self._apply_plan(plan, users, report):
                failed_users |= plan.users
        saved = {u: s for u, s in changed.items() if u not in failed_users}
        self.ledger.save_memberships(audience_key, saved)
        if self.options.consent_required:
            self._recheck_consent(audience_key, {u for u, s in saved.items() if s.live}, consents, report)

    def _recheck_consent(self, audience_key: str, live: set[str], used: dict[str, Consent], report: SyncReport) -> None:
        """A withdrawal stored by another invocation after we read consent did not see these new members:
        re-read, and re-evaluate the users whose consent changed meanwhile (still under the lease)."""
        if not live:
            return
        changed = {u for u, consent in self.ledger.consents(live).items() if consent != used.get(u)}
        if changed:
            report.counts["consent_rechecks"] += len(changed)
            self._apply_audience(audience_key, {u: [] for u in changed}, report)

    def _apply_plan(self, plan: PatchPlan, users: UserChanges, report: SyncReport) -> bool:
        """One PATCH; True when Criteo has it, False when its users' changes come back or were parked."""
        message_ids = {i.message_id for user in plan.users for i in users[user]}
        try:
            segment_id = self._segment_id(plan.audience_key, users)
            gum_caller_id = self.options.gum_caller_id if plan.identifier_type == GUM else None
            try:
                result = self.criteo.patch_contact_list(
                    segment_id, plan.operation, plan.identifier_type, plan.identifiers, gum_caller_id=gum_caller_id
                )
            except SegmentGone:
                self.directory.forget(self.options.name_prefix + plan.audience_key)
                segment_id = self._segment_id(plan.audience_key, users)
                result = self.criteo.patch_contact_list(
                    segment_id, plan.operation, plan.identifier_type, plan.identifiers, gum_caller_id=gum_caller_id
                )
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
            report.counts["config_errors"] += 1
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


def _carried_by_exits(items: list[Sourced]) -> ByType:
    carried: ByType = {}
    for item in items:
        if item.change.operation == REMOVE:
            for id_type, identifiers in item.change.identifiers.items():
                carried.setdefault(id_type, set()).update(identifiers)
    return carried


def _snapshot(state: Membership) -> tuple[str, str, str, bool]:
    return state.entered, state.exited, state.encode(), state.live


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
