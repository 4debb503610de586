"""One Logger and one Metrics for both functions (Powertools, EMF, JSON logs without PII).

The service name and the metrics namespace come from the environment (POWERTOOLS_SERVICE_NAME,
POWERTOOLS_METRICS_NAMESPACE), which template.yaml sets from one mapping that its alarms and dashboard use too.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from botocore.config import Config

logger = Logger()
metrics = Metrics()


def client_config(read_timeout: float, attempts: int, pool: int = 10) -> Config:
    """botocore settings for a function's AWS clients: a hung call gives up well inside the function's own
    timeout (botocore's 60 s defaults outlast a 15 s function: no JSON answer, no metrics, a Lambda timeout)."""
    return Config(
        connect_timeout=2,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": attempts},
        max_pool_connections=pool,
    )


# Every metric the functions emit (CloudWatch namespace from the environment, dimension `service`); README
# "Operations" lists exactly these, and tests/test_metrics_documented.py checks both against the code.
INGEST_METRICS = frozenset(
    {
        "requests",
        "events_accepted",
        "events_ignored",
        "events_rejected",
        "exits_rejected",
        "identifiers_dropped",
        "timestamps_clamped",
        "consent_changes",
        "rule_events",
        "records_queued",
        "messages_queued",
        "bad_requests",
        "unauthorized_requests",
        "webhook_secret_errors",
        "dependency_errors",
    }
)
INGEST_METRIC_PREFIXES = ("rejected_", "dropped_")  # + a reason, e.g. rejected_no_user, dropped_zero_madid
SYNC_METRICS = frozenset(
    {
        "segments_measured",
        "segment_identifiers",
        "segment_matches",
        "match_rate_percent",
        "lowest_match_rate_percent",
        "match_statistics_skipped",
        "match_statistics_failures",
        "suppressions_everywhere",
        "suppression_rechecks",
        "messages_in",
        "records_in",
        "failed_messages",
        "criteo_calls",
        "criteo_retries",
        "criteo_throttles",
        "token_fetches",
        "patches",
        "identifiers_added",
        "identifiers_removed",
        "invalid_identifiers",
        "stale_dropped",
        "consent_changes",
        "consent_reevaluations",
        "consent_rechecks",
        "lock_timeouts",
        "poison_messages",
        "parked_messages",
        "identifiers_queued",
        "parked_patches_put_back",
        "budget_waits",
        "flush_failures",
        "dead_lettered_identifiers",
        "dependency_errors",
        "inbox_groups",
        "audiences_gathered",
        "outbox_audiences",
        "outbox_oldest_seconds",
        "outbox_backlog_seconds",
        "outbox_paused_audiences",
        "outbox_without_credentials",
        "flush_passes",
        "flush_ticks_sent",
        "flush_ticks_in",
        "changes_requeued",
        "moves_pending",
        "moves_finished",
        "identifiers_carried_over",
        "identifiers_not_sent_by_setting",
        "audience_config_refused",
        "lookalike_failures",
        "segment_ownership_conflicts",
        "criteo_credentials_errors",
    }
)
