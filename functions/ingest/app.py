"""Ingest Lambda: Segment webhook (HTTP API v2) → validated audience-change records in SQS."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from audience_sync.audience_config import ConfigSource, Rule
from audience_sync.config import IngestSettings
from audience_sync.errors import DependencyUnavailable
from audience_sync.http import request_from_apigw_v2, to_apigw_v2
from audience_sync.ingest import IngestService
from audience_sync.observability import client_config, logger, metrics
from audience_sync.queue import QueueWriter
from audience_sync.segment import ParserSettings, SegmentEventParser
from audience_sync.webhook_auth import WebhookAuthenticator

settings = IngestSettings.from_env()
# Inside the function's 15 s: 2 attempts of at most 2 s connect + 2 s read each, then a JSON 503.
aws_config = client_config(read_timeout=2, attempts=2)
secrets = parameters.SecretsProvider(boto_config=aws_config)


def load_webhook_secret(force: bool) -> str | None:
    """The shared secret from Secrets Manager, cached for `SECRET_MAX_AGE_SECONDS`."""
    try:
        value = secrets.get(settings.webhook_secret_arn, max_age=settings.secret_max_age_seconds, force_fetch=force)
    except parameters.exceptions.GetParameterError as error:
        # Powertools wraps the boto3 error implicitly (it is the exception's __context__).
        cause = error.__context__
        if isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise DependencyUnavailable("Secrets Manager is unavailable") from None
    return str(value).strip() or None


@functools.cache
def ssm() -> parameters.SSMProvider:
    """The SSM client, made on first use: most deliveries never need it (no cost at cold start)."""
    return parameters.SSMProvider(boto_config=aws_config)


# The settings document, for its rules; read only when a track event that Engage did not send arrives.
audience_config = ConfigSource(
    (lambda: str(ssm().get(settings.audience_config_parameter, max_age=settings.audience_config_max_age_seconds)))
    if settings.audience_config_parameter
    else None
)


def current_rules() -> Mapping[str, Rule]:
    """The rules of the last good settings document."""
    return audience_config.current().rules


service = IngestService(
    authenticator=WebhookAuthenticator(load_webhook_secret, settings.allow_bearer_token),
    parser=SegmentEventParser(
        ParserSettings(
            identifier_types=settings.identifier_types,
            hash_pii=settings.hash_emails,
            consent_categories=settings.consent_categories,
            max_clock_skew_ms=settings.max_clock_skew_seconds * 1000,
        ),
        rules=current_rules,
    ),
    queue=QueueWriter(boto3.client("sqs", config=aws_config), settings.queue_url),
    max_body_bytes=settings.max_body_bytes,
)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Answer one Segment delivery."""
    outcome = service.handle(request_from_apigw_v2(event))
    metrics.add_metric(name="requests", unit=MetricUnit.Count, value=1)
    for name, value in outcome.metrics.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info("delivery handled", extra={"status": outcome.response.status, **outcome.metrics})
    return to_apigw_v2(outcome.response)
