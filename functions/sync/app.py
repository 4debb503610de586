"""Sync Lambda: SQS batches of audience changes → Criteo contact lists (partial batch failures)."""

from __future__ import annotations

from typing import Any

import boto3
import requests
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from audience_sync.config import SyncSettings
from audience_sync.criteo.auth import CriteoCredentials
from audience_sync.criteo.client import CriteoClient
from audience_sync.ledger import PARALLEL_CALLS, Ledger
from audience_sync.observability import client_config, logger, metrics
from audience_sync.queue import QueueWriter
from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions, SyncReport, park_exhausted

settings = SyncSettings.from_env()
# One HTTP session (connection pool) and AWS clients per container, reused by every invocation. The ledger's
# client has a connection per thread of its pool; every client gives up well inside the 300 s timeout.
session = requests.Session()
aws_config = client_config(read_timeout=10, attempts=3)
secrets = parameters.SecretsProvider(boto_config=aws_config)
ledger = Ledger(
    boto3.client("dynamodb", config=client_config(read_timeout=10, attempts=3, pool=PARALLEL_CALLS)),
    settings.ledger_table,
    settings.lock_seconds,
)
options = SyncOptions(
    name_prefix=settings.audience_name_prefix,
    deployment=settings.deployment_id,
    adopt_segments=settings.adopt_segments,
    consent_required=settings.consent_required,
    gum_caller_id=settings.gum_caller_id,
)
dead_letters = DeadLetters(QueueWriter(boto3.client("sqs", config=aws_config), settings.dead_letter_queue_url))


def load_credentials() -> CriteoCredentials | None:
    """Client id/secret/advertiser id from Secrets Manager (cached); None when unreadable or incomplete."""
    try:
        secret = secrets.get(settings.criteo_secret_arn, transform="json", max_age=settings.secret_max_age_seconds)
    except (parameters.exceptions.GetParameterError, parameters.exceptions.TransformParameterError):
        logger.error("the Criteo secret can't be read or isn't JSON")
        return None
    if not isinstance(secret, dict):
        logger.error("the Criteo secret must be a JSON object")
        return None
    try:
        return CriteoCredentials(str(secret["client_id"]), str(secret["client_secret"]), str(secret["advertiser_id"]))
    except KeyError:
        logger.error("the Criteo secret needs client_id, client_secret and advertiser_id")
        return None


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Apply one SQS batch; only the messages that could not be finished come back."""
    records = event.get("Records", [])
    messages = [(record["messageId"], record["body"]) for record in records]
    receive_counts = {r["messageId"]: int(r.get("attributes", {}).get("ApproximateReceiveCount", 0)) for r in records}

    def seconds_left() -> float:
        return context.get_remaining_time_in_millis() / 1000.0

    credentials = load_credentials()
    counts: dict[str, int] = {}
    if credentials is None:
        report = SyncReport()
        report.counts["criteo_credentials_errors"] = 1
        report.hand_back((message_id for message_id, _ in messages), "the Criteo secret is unreadable or incomplete")
    else:
        criteo = CriteoClient(session, settings.criteo_base_url, settings.criteo_api_version, credentials, seconds_left)
        report = AudienceSync(criteo, ledger, dead_letters, options, seconds_left).run(messages, receive_counts)
        counts = {
            "criteo_calls": criteo.stats.total_calls,
            "criteo_retries": criteo.stats.retries,
            "criteo_throttles": criteo.stats.throttles,
            "token_fetches": criteo.stats.calls.get("token", 0),
        }
    park_exhausted(report, dead_letters, dict(messages), receive_counts, settings.max_receive_count)
    counts.update(report.counts, messages_in=len(messages), failed_messages=len(report.failed))
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info("batch synced", extra=counts)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in sorted(report.failed)]}
