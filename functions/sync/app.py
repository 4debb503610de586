"""Sync Lambda: SQS batches of audience changes → ledger and outbox (partial batch failures), then a flush pass
over what is ready; the schedule's invocations (every minute) and the flush ticks in the queue only flush."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import boto3
import requests
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from audience_sync.advertisers import Advertisers, app_key, secret_id
from audience_sync.audience_config import AudienceConfig, ConfigSource
from audience_sync.budget import CallBudget
from audience_sync.config import SyncSettings
from audience_sync.criteo.auth import CriteoCredentials
from audience_sync.criteo.client import CriteoClient
from audience_sync.errors import DependencyUnavailable
from audience_sync.flush import Flusher, FlushPolicy, KeptSummaries, one_pass
from audience_sync.inbox import Inbox
from audience_sync.ledger import Ledger
from audience_sync.match_statistics import measure
from audience_sync.moves import Moves, carry_over, moved_by_settings
from audience_sync.observability import client_config, logger, metrics
from audience_sync.outbox import Outbox, Waiting
from audience_sync.queue import QueueWriter, number_of
from audience_sync.sync import QUEUED_ATTRIBUTE, SAFETY_SECONDS, AudienceSync, DeadLetters, SyncOptions, park_exhausted
from audience_sync.table import PARALLEL_CALLS
from audience_sync.ticks import TICK_BODY, split_ticks, tick_attributes

settings = SyncSettings.from_env()
MOVE_SECONDS = 15.0  # a scheduled invocation spends up to this carrying moved audiences' members over
MOVE_LOCK_WAIT_SECONDS = 5.0
# One HTTP session (connection pool) and AWS clients per container, reused by every invocation. The table's
# client has a connection per thread of its pool; every client gives up well inside the 300 s timeout.
session = requests.Session()
aws_config = client_config(read_timeout=10, attempts=3)
secrets = parameters.SecretsProvider(boto_config=aws_config)
dynamodb = boto3.client("dynamodb", config=client_config(read_timeout=10, attempts=3, pool=PARALLEL_CALLS))
ledger = Ledger(dynamodb, settings.ledger_table, settings.lock_seconds)
inbox = Inbox(dynamodb, settings.ledger_table, settings.lock_seconds)
outbox = Outbox(dynamodb, settings.ledger_table)
moves = Moves(dynamodb, settings.ledger_table)
kept_summaries = KeptSummaries()
checked_moves: AudienceConfig | None = None  # the settings last compared with where the audiences' segments are
options = SyncOptions(
    name_prefix=settings.audience_name_prefix,
    deployment=settings.deployment_id,
    adopt_segments=settings.adopt_segments,
    consent_required=settings.consent_required,
    gum_caller_id=settings.gum_caller_id,
)
policy = FlushPolicy(
    interval_seconds=settings.flush_interval_seconds,
    quiet_seconds=settings.flush_quiet_seconds,
    calls_per_minute=settings.criteo_calls_per_minute,
    retry_seconds=settings.flush_retry_seconds,
)
sqs = boto3.client("sqs", config=aws_config)
dead_letters = DeadLetters(QueueWriter(sqs, settings.dead_letter_queue_url))
# What a batch's time did not reach goes back to the audience-changes queue (absent: handed back whole).
requeue = QueueWriter(sqs, settings.queue_url) if settings.queue_url else None
ssm = parameters.SSMProvider(boto_config=aws_config)
audience_config = ConfigSource(
    (lambda: str(ssm.get(settings.audience_config_parameter, max_age=settings.audience_config_max_age_seconds)))
    if settings.audience_config_parameter
    else None
)


def load_credentials(advertiser: str) -> CriteoCredentials | None:
    """An advertiser's client id/secret/advertiser id from Secrets Manager (cached): the deployment's secret for
    `default`, else the one named after it; None when unreadable or incomplete."""
    where = dict(advertiser=advertiser)
    secret_name = secret_id(advertiser, settings.criteo_secret_arn, settings.advertiser_secret_prefix)
    try:
        secret = secrets.get(secret_name, transform="json", max_age=settings.secret_max_age_seconds)
    except (parameters.exceptions.GetParameterError, parameters.exceptions.TransformParameterError):
        logger.error("the Criteo secret can't be read or isn't JSON", extra=where)
        return None
    try:
        return CriteoCredentials.from_secret(secret)
    except ValueError as error:
        logger.error(str(error), extra=where)
        return None


def flush(context: LambdaContext, carry_moves: bool = False, carried: Collection[float] = ()) -> dict[str, int]:
    """One flush pass under the flusher lease (skipped when another invocation holds it), then, while anything
    waits, a tick that brings the next pass (ticks.py; `carried`: the tick that brought this one); with
    `carry_moves`, first carry the members of audiences moved to another advertiser over, for up to
    MOVE_SECONDS. Returns the counts for metrics."""

    def seconds_left() -> float:
        return context.get_remaining_time_in_millis() / 1000.0

    # A tick's pass waits for the pass holding the lease: skipped, it would arm no next tick (the one it carries
    # would count as pending until it is overdue).
    wait = settings.flush_poll_seconds if carried else 0.0
    turn = ledger.acquire_flusher(wait) if seconds_left() >= SAFETY_SECONDS else None
    if turn is None:
        return {}
    advertisers = advertisers_for(seconds_left)
    carried_over: dict[str, int] = {}

    def flusher(summaries: list[Waiting] | None) -> Flusher:
        if carry_moves:
            carried_over.update(carry(seconds_left))
        return Flusher(
            advertisers,
            inbox,
            outbox,
            dead_letters,
            options,
            policy,
            seconds_left,
            config=audience_config.current,
            moves=moves,
            summaries=summaries,
        )

    tick_delay = settings.tick_delay if requeue is not None else None
    report, tick = one_pass(ledger, turn, flusher, kept_summaries, carried, tick_delay)
    return {
        **carried_over,
        **report.counts,
        **report.gauges,
        "flush_ticks_sent": send_tick(tick) if tick is not None else 0,
        "criteo_credentials_errors": report.counts["criteo_credentials_errors"] + len(advertisers.unreadable()),
        **advertisers.call_counts(),
        "audience_config_refused": int(audience_config.failing),
    }


def send_tick(tick: float) -> int:
    """The message that brings the next pass; 0 when it could not be sent (the tick stops counting once it is
    overdue, and the next pass arms another)."""
    assert requeue is not None
    try:
        requeue.send([TICK_BODY], tick_attributes(tick), settings.tick_delay)
    except DependencyUnavailable as error:
        logger.warning("flush tick not sent", extra=dict(reason=str(error)))
        return 0
    return 1


def carry(seconds_left: Callable[[], float]) -> dict[str, int]:
    """Start the moves the settings made (when they changed), then carry moved audiences' members over for up to
    MOVE_SECONDS (docs/audience-settings.md, `advertiser`)."""
    global checked_moves
    until = time.monotonic() + MOVE_SECONDS
    try:
        config = audience_config.current()
        if config is not checked_moves:
            moved_by_settings(moves, outbox, config)
            checked_moves = config
        return dict(
            carry_over(
                moves,
                ledger,
                inbox,
                lambda: time.monotonic() < until and seconds_left() > 2 * SAFETY_SECONDS,
                MOVE_LOCK_WAIT_SECONDS,
            )
        )
    except DependencyUnavailable as error:  # where it was is saved: the next schedule goes on from there
        logger.warning("ledger unavailable for a move", extra=dict(reason=str(error)))
        return {"moves_pending": 1}


def advertisers_for(seconds_left: Callable[[], float]) -> Advertisers:
    """This invocation's advertisers: clients from their secrets, one budget per Criteo app."""

    def connect(advertiser: str) -> CriteoClient | None:
        credentials = load_credentials(advertiser)
        if credentials is None:
            return None
        return CriteoClient(session, settings.criteo_base_url, settings.criteo_api_version, credentials, seconds_left)

    def app_budget(client_id: str, calls_per_minute: int) -> CallBudget:
        return CallBudget(dynamodb, settings.ledger_table, calls_per_minute, app=app_key(client_id))

    return Advertisers(connect, app_budget, options.deployment, options.adopt_segments)


def match_statistics(context: LambdaContext) -> dict[str, int]:
    """The hourly schedule: Criteo's match statistics of our segments, as metrics."""

    def seconds_left() -> float:
        return context.get_remaining_time_in_millis() / 1000.0

    advertisers = advertisers_for(seconds_left)
    counts = measure(advertisers, audience_config.current(), settings.criteo_calls_per_minute, seconds_left)
    return {**counts, "criteo_credentials_errors": len(advertisers.unreadable())}


def apply(records: list[dict[str, Any]], context: LambdaContext) -> tuple[dict[str, Any], dict[str, int]]:
    """Apply the records of one SQS batch (its flush ticks set apart) to the ledger and the outbox; only the
    messages not finished come back."""
    messages = [(record["messageId"], record["body"]) for record in records]
    attributes = {r["messageId"]: r.get("attributes", {}) for r in records}
    receive_counts = {m: int(a.get("ApproximateReceiveCount", 0)) for m, a in attributes.items()}
    queued = {m: int(a["SentTimestamp"]) / 1000.0 for m, a in attributes.items() if "SentTimestamp" in a}
    queued.update(first_queued(records))

    def seconds_left() -> float:
        return context.get_remaining_time_in_millis() / 1000.0

    suppressions = audience_config.current().suppresses_everywhere
    report = AudienceSync(ledger, inbox, dead_letters, options, seconds_left, suppressions, requeue).run(
        messages, receive_counts, queued
    )
    park_exhausted(report, dead_letters, dict(messages), receive_counts, settings.max_receive_count)
    counts = {**report.counts, "messages_in": len(messages), "failed_messages": len(report.failed)}
    answer = {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in sorted(report.failed)]}
    return answer, counts


def first_queued(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per message sent back by a sync whose time ran out: when its changes were first queued (anything but a
    number is ignored)."""
    found = {record["messageId"]: number_of(record, QUEUED_ATTRIBUTE) for record in records}
    return {message_id: queued for message_id, queued in found.items() if queued is not None}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """An SQS batch: apply it, then one flush pass. The schedule (or anything else): one flush pass, and answer
    with what still waits (`outbox_audiences`; absent when another invocation held the flusher lease). Either
    arms a flush tick while anything waits: the next pass comes a few seconds later (ticks.py)."""
    if "Records" in event:
        carried, records = split_ticks(event["Records"])
        answer, counts = apply(records, context)
        counts.update({**flush(context, carried=carried), "flush_ticks_in": len(carried)})
        done = "batch synced"
    elif event.get("match_statistics"):
        counts = match_statistics(context)
        answer = {key: counts[key] for key in ("segments_measured", "match_rate_percent")}
        done = "match statistics read"
    else:
        counts = flush(context, carry_moves=True)
        answer = {
            key: counts[key]
            for key in (
                "outbox_audiences",
                "inbox_groups",
                "outbox_without_credentials",
                "flush_passes",
                "flush_ticks_sent",
                "moves_pending",
            )
            if key in counts
        }
        done = "outbox flushed"
    for name, value in counts.items():
        unit = MetricUnit.Percent if name.endswith("_percent") else MetricUnit.Count
        metrics.add_metric(name=name, unit=unit, value=value)
    logger.info(done, extra=counts)
    return answer
