"""What the commands read and call in one deployment: its settings document, its ledger, inbox and outbox, and per
advertiser a Criteo client within the app's shared call budget."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import requests

from audience_sync.advertisers import Advertiser, Advertisers, app_key
from audience_sync.audience_config import DEFAULT_ADVERTISER, AudienceConfig, ConfigError, parse
from audience_sync.budget import CallBudget
from audience_sync.criteo.auth import CriteoCredentials, TokenCache
from audience_sync.criteo.client import CriteoClient
from audience_sync.inbox import Inbox
from audience_sync.ledger import Ledger
from audience_sync.outbox import Outbox
from segment_criteo.target import Target, TargetError

LEASE_SECONDS = 360  # a group's lease taken by a command lasts as long as the sync function's


@dataclass(frozen=True)
class Segment:
    """An audience's Criteo contact list (id "" when it has none yet)."""

    audience: str
    advertiser: str
    name: str
    id: str


class Deployment:
    """One deployment's parts, made on first use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        self.tokens = TokenCache()
        # Per advertiser a client and segment directory, per app one budget: as the sync function has them.
        self._advertisers = Advertisers(self._connect, self._budget, target.deployment, frozenset())

    @cached_property
    def dynamodb(self) -> Any:
        """The DynamoDB client."""
        return self.target.client("dynamodb")

    @cached_property
    def ledger(self) -> Ledger:
        """The membership ledger."""
        return Ledger(self.dynamodb, self.target.ledger_table, LEASE_SECONDS)

    @cached_property
    def inbox(self) -> Inbox:
        """The inbox (and the groups' leases)."""
        return Inbox(self.dynamodb, self.target.ledger_table, LEASE_SECONDS)

    @cached_property
    def outbox(self) -> Outbox:
        """The outbox."""
        return Outbox(self.dynamodb, self.target.ledger_table)

    @cached_property
    def config(self) -> AudienceConfig:
        """The settings document in force (TargetError if it does not validate)."""
        ssm = self.target.client("ssm")
        value = ssm.get_parameter(Name=self.target.settings_parameter)["Parameter"]["Value"]
        try:
            return parse(str(value))
        except ConfigError as error:
            raise TargetError(f"the settings document does not validate: {error}") from None

    def credentials(self, advertiser: str) -> CriteoCredentials:
        """An advertiser's Criteo credentials from Secrets Manager (TargetError saying what is wrong)."""
        secret_id = self.target.secret_of(advertiser)
        try:
            value = self.target.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
        except Exception as error:
            raise TargetError(f"{secret_id}: can't be read ({type(error).__name__})") from None
        try:
            return CriteoCredentials.from_secret(json.loads(value))
        except json.JSONDecodeError:
            raise TargetError(f"{secret_id}: the Criteo secret isn't JSON") from None
        except ValueError as error:
            raise TargetError(f"{secret_id}: {error}") from None

    def advertiser(self, name: str) -> Advertiser:
        """An advertiser's client (its calls are the command's: no Lambda time limit), segment directory and
        app budget, shared with the sync function (TargetError when its secret is unusable)."""
        found = self._advertisers.get(name, self.config.rate(name, self.target.calls_per_minute))
        if found is None:  # _connect raises rather than answer None
            raise TargetError(f"advertiser {name}: no credentials")
        return found

    def criteo(self, advertiser: str) -> CriteoClient:
        """An advertiser's Criteo client."""
        return self.advertiser(advertiser).criteo

    def take(self, advertiser: str, calls: int = 1) -> None:
        """Wait until the advertiser's app budget (shared with the sync function) gives `calls` tokens."""
        self.advertiser(advertiser).app.budget.wait_for(calls, lambda: math.inf, time.sleep)

    def _connect(self, advertiser: str) -> CriteoClient:
        return CriteoClient(
            self.session,
            self.target.criteo_base_url,
            self.target.criteo_api_version,
            self.credentials(advertiser),
            lambda: 300.0,
            tokens=self.tokens,
        )

    def _budget(self, client_id: str, calls_per_minute: int) -> CallBudget:
        return CallBudget(self.dynamodb, self.target.ledger_table, calls_per_minute, app=app_key(client_id))

    def segments(self, audiences: Iterable[str]) -> dict[str, Segment]:
        """Each audience's contact list: its configured `segment_id`; else the one the sync last sent it to in
        its advertiser's account (by its name then: a new name in the settings renames it at the next flush);
        else ours found by name (one search per advertiser finds both); id "" when it has none yet."""
        found: dict[str, dict[str, str]] = {}  # advertiser -> name -> id of our segments
        result = {}
        audiences = sorted(audiences)
        remembered = self.outbox.remembered(audiences)
        for audience in audiences:
            settings = self.config.settings(audience)
            name = settings.segment_name or self.target.name_prefix + audience
            record = remembered.get(audience, {})
            if settings.segment_id:
                result[audience] = Segment(audience, settings.advertiser, name, settings.segment_id)
                continue
            if settings.advertiser not in found:
                found[settings.advertiser] = self.advertiser(settings.advertiser).directory.ours()
            ours = found[settings.advertiser]
            last = record.get("segment_id", "")
            if record.get("advertiser", DEFAULT_ADVERTISER) == settings.advertiser and last in ours.values():
                name = next(n for n, segment_id in ours.items() if segment_id == last)
            result[audience] = Segment(audience, settings.advertiser, name, ours.get(name, ""))
        return result
