"""Which deployment the command works on: a CloudFormation stack (its outputs and parameters, with the user's
own AWS credentials and region), or the local stack (`make serve`: moto server, the Criteo emulator, the
local gateway), the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from audience_sync.advertisers import secret_id

LOCAL_REGION = "us-east-1"
ATTEMPTS = 5


class TargetError(Exception):
    """The deployment can't be found or lacks something the command needs (the message says what)."""


@dataclass(frozen=True)
class Target:
    """The resources of one deployment."""

    deployment: str  # DEPLOYMENT_ID: the marker on the Criteo segments it owns (the stack name)
    region: str
    ledger_table: str
    queue_url: str
    dead_letter_queue_url: str
    webhook_url: str
    webhook_secret: str
    criteo_secret: str
    settings_parameter: str
    advertiser_secret_prefix: str
    name_prefix: str = "segment_"
    calls_per_minute: int = 200
    criteo_base_url: str = "https://api.criteo.com"
    criteo_api_version: str = "2026-07"
    gum_caller_id: int | None = None  # GumCallerId, to send gum identifiers
    endpoint: str | None = None  # the local stack's moto server; None: AWS
    profile: str | None = None

    def client(self, service: str, attempts: int = ATTEMPTS) -> Any:
        """A boto3 client for the deployment's account and region."""
        config = Config(retries={"max_attempts": attempts, "mode": "standard"}, read_timeout=30)
        if self.endpoint:
            return boto3.client(  # type: ignore[call-overload]
                service,
                endpoint_url=self.endpoint,
                region_name=self.region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=config,
            )
        session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        return session.client(service, config=config)  # type: ignore[call-overload]

    def secret_of(self, advertiser: str) -> str:
        """The Secrets Manager id of an advertiser's Criteo credentials."""
        return secret_id(advertiser, self.criteo_secret, self.advertiser_secret_prefix)


def from_stack(stack_name: str, region: str | None = None, profile: str | None = None) -> Target:
    """A deployed stack, read from CloudFormation."""
    session = boto3.session.Session(profile_name=profile, region_name=region)
    try:
        cloudformation = session.client("cloudformation", config=Config(retries={"max_attempts": ATTEMPTS}))
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as error:
        raise TargetError(f"stack {stack_name!r} not found in {session.region_name}: {error}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}
    needed = (
        "MembershipLedgerTable",
        "AudienceChangesQueueUrl",
        "DeadLetterQueueUrl",
        "WebhookUrl",
        "WebhookSecretArn",
        "CriteoCredentialsSecretArn",
        "AudienceSettingsParameter",
        "AdvertiserSecretPrefix",
    )
    missing = [name for name in needed if name not in outputs]
    if missing:
        raise TargetError(f"stack {stack_name!r} has no output {', '.join(missing)}: deploy this version first")
    return Target(
        deployment=stack_name,
        region=str(session.region_name),
        ledger_table=outputs["MembershipLedgerTable"],
        queue_url=outputs["AudienceChangesQueueUrl"],
        dead_letter_queue_url=outputs["DeadLetterQueueUrl"],
        webhook_url=outputs["WebhookUrl"],
        webhook_secret=outputs["WebhookSecretArn"],
        criteo_secret=outputs["CriteoCredentialsSecretArn"],
        settings_parameter=outputs["AudienceSettingsParameter"],
        advertiser_secret_prefix=outputs["AdvertiserSecretPrefix"],
        name_prefix=parameters.get("AudienceNamePrefix", "segment_"),
        calls_per_minute=int(parameters.get("CriteoCallsPerMinute") or 200),
        criteo_api_version=parameters.get("CriteoApiVersion") or "2026-07",
        gum_caller_id=int(parameters["GumCallerId"]) if parameters.get("GumCallerId") else None,
        profile=profile,
    )


def local(
    aws_endpoint: str = "http://127.0.0.1:4566",
    criteo_url: str = "http://127.0.0.1:8642",
    webhook_url: str = "http://127.0.0.1:3000/segment",
    prefix: str = "local",
) -> Target:
    """The local stack (`make serve`; tests start their own with another prefix and ports)."""
    account = "123456789012"  # moto's
    queue = f"{aws_endpoint}/{account}/{prefix}-audience-changes"
    return Target(
        deployment="local",  # the local functions' DEPLOYMENT_ID, whatever the prefix
        region=LOCAL_REGION,
        ledger_table=f"{prefix}-ledger",
        queue_url=queue,
        dead_letter_queue_url=f"{queue}-dlq",
        webhook_url=webhook_url,
        webhook_secret=f"{prefix}-webhook-secret",
        criteo_secret=f"{prefix}-criteo-credentials",
        settings_parameter=f"/{prefix}/audience-settings",
        advertiser_secret_prefix=f"{prefix}/criteo/",
        calls_per_minute=60_000,
        criteo_base_url=criteo_url,
        endpoint=aws_endpoint,
    )
