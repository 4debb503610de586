"""What the commands read and call in one deployment: its settings document, its ledger and outbox, and per
advertiser a Criteo client within the app's shared call budget."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import requests

from audience_sync.advertisers import app_key
from audience_sync.audience_config import DEFAULT_ADVERTISER, AudienceConfig, ConfigError, parse
from audience_sync.budget import CallBudget
from audience_sync.criteo.auth import CriteoCredentials, TokenCache
from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.segments import owner
from audience_sync.ledger import Ledger
from audience_sync.outbox import Outbox
from segment_criteo.target import Target, TargetError

LEASE_SECONDS = 360  # an audience lease taken by a command lasts as long as the sync function's


@dataclass(frozen=True)
class Segment:
    """An audience's Criteo contact list (id "" when it has none yet)."""

    audience: str
    advertiser: str
    name: str
    id: str


class Deployment:
    """One deployment's parts, made on first use."""

    def __init__(self, target: Target, sleep: float = 1.0) -> None:
        self.target = target
        self.session = requests.Session()
        self.tokens = TokenCache()
        self.sleep_seconds = sleep
        self._clients: dict[str, CriteoClient] = {}
        self._budgets: dict[str, CallBudget] = {}

    @cached_property
    def dynamodb(self) -> Any:
        """The DynamoDB client."""
        return self.target.client("dynamodb")

    @cached_property
    def ledger(self) -> Ledger:
        """The membership ledger."""
        return Ledger(self.dynamodb, self.target.ledger_table, LEASE_SECONDS)

    @cached_property
    def outbox(self) -> Outbox:
        """The outbox (and the audiences' leases)."""
        return Outbox(self.dynamodb, self.target.ledger_table, LEASE_SECONDS)

    @cached_property
    def config(self) -> AudienceConfig:
        """The settings document in force (TargetError if it does not validate)."""
        ssm = self.target.client("ssm")
        value = ssm.get_parameter(Name=self.target.settings_parameter)["Parameter"]["Value"]
        try:
            return parse(str(value))
        except ConfigError as error:
            raise TargetError(f"the settings document does not validate: {error}") from None

    def advertisers(self) -> list[str]:
        """`default` and every advertiser the settings name."""
        named = {s.advertiser for s in self.config.audiences.values()} | set(self.config.calls_per_minute)
        return sorted({DEFAULT_ADVERTISER, self.config.defaults.advertiser, *named})

    def credentials(self, advertiser: str) -> CriteoCredentials:
        """An advertiser's Criteo credentials from Secrets Manager (TargetError saying what is wrong)."""
        secret_id = self.target.secret_of(advertiser)
        try:
            value = self.target.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
            secret = json.loads(value)
            return CriteoCredentials(
                str(secret["client_id"]), str(secret["client_secret"]), str(secret["advertiser_id"])
            )
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"{secret_id}: needs JSON with client_id, client_secret and advertiser_id") from None
        except Exception as error:
            raise TargetError(f"{secret_id}: can't be read ({type(error).__name__})") from None

    def criteo(self, advertiser: str) -> CriteoClient:
        """An advertiser's Criteo client (its calls are the command's: no Lambda time limit)."""
        if advertiser not in self._clients:
            credentials = self.credentials(advertiser)
            self._clients[advertiser] = CriteoClient(
                self.session,
                self.target.criteo_base_url,
                self.target.criteo_api_version,
                credentials,
                lambda: 300.0,
                tokens=self.tokens,
            )
        return self._clients[advertiser]

    def take(self, advertiser: str, calls: int = 1) -> None:
        """Wait until the advertiser's app budget (shared with the sync function) gives `calls` tokens."""
        client = self.criteo(advertiser)
        client_id = client.credentials.client_id
        if client_id not in self._budgets:
            rate = self.config.calls_per_minute.get(advertiser, self.target.calls_per_minute)
            self._budgets[client_id] = CallBudget(
                self.dynamodb,
                self.target.ledger_table,
                rate,
                app=app_key(client_id),
            )
        budget = self._budgets[client_id]
        while not budget.take(calls):
            time.sleep(max(self.sleep_seconds * 0.1, min(self.sleep_seconds, budget.seconds_until(calls))))

    def segments(self, audiences: Iterable[str]) -> dict[str, Segment]:
        """Each audience's contact list: its configured `segment_id`, else ours found by name (one search per
        advertiser); id "" when it has none yet."""
        found: dict[str, dict[str, str]] = {}  # advertiser -> name -> id of our segments
        result = {}
        for audience in sorted(audiences):
            settings = self.config.settings(audience)
            name = settings.segment_name or self.target.name_prefix + audience
            if settings.segment_id:
                result[audience] = Segment(audience, settings.advertiser, name, settings.segment_id)
                continue
            if settings.advertiser not in found:
                client = self.criteo(settings.advertiser)
                found[settings.advertiser] = {
                    s.name: s.id for s in client.search_segments() if owner(s.description) == self.target.deployment
                }
            result[audience] = Segment(audience, settings.advertiser, name, found[settings.advertiser].get(name, ""))
        return result
