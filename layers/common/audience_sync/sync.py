"""The sync use case: one SQS batch → the fewest Criteo PATCHes, in order, with exact failure reporting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.errors import CriteoError, InvalidCredentials, RejectedRequest, SegmentGone
from audience_sync.criteo.segments import SegmentDirectory
from audience_sync.errors import DependencyUnavailable
from audience_sync.observability import logger
from audience_sync.ordering import OrderingStore, state_key
from audience_sync.plan import PatchPlan, Sourced, newest_per_identity, plan_contact_list_patches
from audience_sync.queue import QueueWriter
from audience_sync.records import ADD, AudienceChange, PoisonMessage, pack_changes, unpack_changes

CREDENTIALS_REJECTED = "Criteo credentials rejected"
# Stop starting new work when less than this is left, so the answer to SQS is always delivered.
SAFETY_SECONDS = 5.0
MAX_LOCK_WAIT_SECONDS = 60.0


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


class AudienceSync:
    """Applies a batch of packed change records to Criteo."""

    def __init__(
        self,
        criteo: CriteoClient,
        store: OrderingStore,
        dead_letters: DeadLetters,
        name_prefix: str,
        seconds_left: Callable[[], float],
    ) -> None:
        self.criteo = criteo
        self.directory = SegmentDirectory(criteo)
        self.store = store
        self.dead_letters = dead_letters
        self.name_prefix = name_prefix
        self.seconds_left = seconds_left

    def run(self, messages: list[tuple[str, str]]) -> SyncReport:
        """Sync a batch of (SQS message id, body); returns the message ids that must come back."""
        report = SyncReport()
        items = self._decode(messages, report)
        newest = newest_per_identity(items)
        report.counts["duplicates_or_superseded"] += len(items) - len(newest)
        by_audience: dict[str, list[Sourced]] = {}
        for item in newest.values():
            by_audience.setdefault(item.change.audience_key, []).append(item)
        for audience_key, audience_items in sorted(by_audience.items()):
            if report.counts["config_errors"] or self.seconds_left() < SAFETY_SECONDS:
                reason = CREDENTIALS_REJECTED if report.counts["config_errors"] else "out of time"
                report.hand_back((i.message_id for i in audience_items), reason)
                continue
            self._sync_audience(audience_key, audience_items, report)
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

    def _sync_audience(self, audience_key: str, items: list[Sourced], report: SyncReport) -> None:
        message_ids = {item.message_id for item in items}
        try:
            if not self.store.acquire(audience_key, min(MAX_LOCK_WAIT_SECONDS, self.seconds_left() - SAFETY_SECONDS)):
                report.counts["lock_timeouts"] += 1
                report.hand_back(message_ids, "another invocation held the audience's lease")
                return
        except DependencyUnavailable as error:
            logger.warning("ordering store unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "ordering store unavailable")
            return
        try:
            applied = self._apply_fresh(audience_key, items, report)
            self.store.save({state_key(item.change): item.change.version for item in applied})
        except DependencyUnavailable as error:
            logger.warning("ordering store unavailable", extra={"reason": str(error)})
            report.hand_back(message_ids, "ordering store unavailable")
        finally:
            self.store.release(audience_key)

    def _apply_fresh(self, audience_key: str, items: list[Sourced], report: SyncReport) -> list[Sourced]:
        applied_versions = self.store.versions(state_key(item.change) for item in items)
        # Strictly newer only: an equal stored version was saved after Criteo accepted that very change.
        fresh = [i for i in items if applied_versions.get(state_key(i.change), "") < i.change.version]
        report.counts["stale_dropped"] += len(items) - len(fresh)
        applied: list[Sourced] = []
        for plan in plan_contact_list_patches(fresh):
            if self._apply_plan(plan, items[0].change, report):
                applied.extend(plan.items)
        return applied

    def _apply_plan(self, plan: PatchPlan, sample: AudienceChange, report: SyncReport) -> bool:
        """One PATCH; True when Criteo has it (or it was parked as poison), False when it must come back."""
        name = self.name_prefix + plan.audience_key
        description = (
            f"Segment Engage audience {sample.audience_name or plan.audience_key} (synced by segment-criteo-sync)"
        )
        try:
            for attempt in (1, 2):
                try:
                    segment_id = self.directory.resolve(name, description)
                    result = self.criteo.patch_contact_list(
                        segment_id, plan.operation, plan.identifier_type, plan.identifiers
                    )
                    break
                except SegmentGone:
                    self.directory.forget(name)
                    if attempt == 2:
                        raise
        except RejectedRequest as error:
            report.counts["dead_lettered_records"] += len(plan.items)
            self.dead_letters.send(list(pack_changes(i.change for i in plan.items)), str(error))
            return False
        except InvalidCredentials as error:
            report.counts["config_errors"] += 1
            logger.error("Criteo credentials rejected: fix the Criteo secret", extra={"reason": str(error)})
            report.hand_back(plan.message_ids, CREDENTIALS_REJECTED)
            return False
        except CriteoError as error:
            logger.warning("Criteo call failed; records go back to SQS", extra={"reason": str(error)})
            report.hand_back(plan.message_ids, str(error))
            return False
        valid = int(result.get("nbValidIdentifiers") or 0)
        report.counts["identifiers_added" if plan.operation == ADD else "identifiers_removed"] += valid
        report.counts["invalid_identifiers"] += int(result.get("nbInvalidIdentifiers") or 0)
        report.counts["patches"] += 1
        return True


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
