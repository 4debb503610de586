"""Settings read once from the Lambda environment (set by template.yaml or env.json), strictly.

A value that can't be read stops the function at init with a message naming the variable: `HASH_EMAILS=enabled`
must not quietly mean "false" and put clear emails in the queue. Each setting has one default, here; the
template passes its parameters through (tests/test_settings.py checks that their defaults agree).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from audience_sync.identifiers import IDENTIFIER_TYPES
from audience_sync.ticks import tick_delay

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class SettingsError(ValueError):
    """A setting is missing or has a value the function can't use; the message names it."""


class Environment:
    """Typed, strict reads of environment variables."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str | None = None) -> str:
        """A string; required when there is no default."""
        value = self.environ.get(name)
        if value is None or (default is None and not value.strip()):
            if default is None:
                raise SettingsError(f"{name} is required")
            return default
        return value.strip()

    def flag(self, name: str, default: bool) -> bool:
        """true/false (also 1/0, yes/no, on/off); anything else is an error."""
        value = self.text(name, str(default)).lower()
        if value in _TRUE | _FALSE:
            return value in _TRUE
        raise SettingsError(f"{name}={value!r} is not a boolean (use true or false)")

    def number(self, name: str, default: int, minimum: int = 0) -> int:
        """A whole number >= minimum."""
        value = self.text(name, str(default))
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not a whole number") from None
        if number < minimum:
            raise SettingsError(f"{name}={number} is below its minimum {minimum}")
        return number

    def names(self, name: str, default: str = "") -> frozenset[str]:
        """A comma-separated list."""
        return frozenset(part.strip() for part in self.text(name, default).split(",") if part.strip())


@dataclass(frozen=True)
class IngestSettings:
    """What the ingest function needs."""

    queue_url: str
    webhook_secret_arn: str
    hash_emails: bool = True
    identifier_types: frozenset[str] = frozenset({"email", "madid"})
    consent_categories: frozenset[str] = frozenset()  # required for advertising; empty: consent not enforced
    max_clock_skew_seconds: int = 300  # a timestamp later than its receipt by more is clamped to the receipt
    allow_bearer_token: bool = False
    # Our 413 must come before Lambda's 6 MB payload limit: in the API Gateway event the body is JSON-escaped
    # (up to 2x for quote- or backslash-heavy JSON) or base64 (4/3), so 3 MB is the largest safe limit.
    # Segment sends at most 4,000 events per request (~1.7 MB).
    max_body_bytes: int = 3_000_000
    secret_max_age_seconds: int = 300
    audience_config_parameter: str = ""  # the settings document, for its rules (audience_config.py)
    audience_config_max_age_seconds: int = 60

    VARIABLES = (
        "QUEUE_URL",
        "WEBHOOK_SECRET_ARN",
        "HASH_EMAILS",
        "IDENTIFIER_TYPES",
        "CONSENT_CATEGORIES",
        "MAX_CLOCK_SKEW_SECONDS",
        "ALLOW_BEARER_TOKEN",
        "MAX_BODY_BYTES",
        "SECRET_MAX_AGE_SECONDS",
        "AUDIENCE_CONFIG_PARAMETER",
        "AUDIENCE_CONFIG_MAX_AGE_SECONDS",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> IngestSettings:
        """Read the settings from environment variables (SettingsError when one is unusable)."""
        env = Environment(environ)
        types = env.names("IDENTIFIER_TYPES", ",".join(sorted(cls.identifier_types)))
        unknown = types - IDENTIFIER_TYPES
        if unknown or not types:
            raise SettingsError(f"IDENTIFIER_TYPES must name some of {sorted(IDENTIFIER_TYPES)}, not {sorted(unknown)}")
        return cls(
            queue_url=env.text("QUEUE_URL"),
            webhook_secret_arn=env.text("WEBHOOK_SECRET_ARN"),
            hash_emails=env.flag("HASH_EMAILS", cls.hash_emails),
            identifier_types=types,
            consent_categories=env.names("CONSENT_CATEGORIES"),
            max_clock_skew_seconds=env.number("MAX_CLOCK_SKEW_SECONDS", cls.max_clock_skew_seconds),
            allow_bearer_token=env.flag("ALLOW_BEARER_TOKEN", cls.allow_bearer_token),
            max_body_bytes=env.number("MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            secret_max_age_seconds=env.number("SECRET_MAX_AGE_SECONDS", cls.secret_max_age_seconds),
            audience_config_parameter=env.text("AUDIENCE_CONFIG_PARAMETER", cls.audience_config_parameter),
            audience_config_max_age_seconds=env.number(
                "AUDIENCE_CONFIG_MAX_AGE_SECONDS", cls.audience_config_max_age_seconds
            ),
        )


@dataclass(frozen=True)
class SyncSettings:
    """What the sync function needs."""

    criteo_secret_arn: str
    ledger_table: str
    dead_letter_queue_url: str
    queue_url: str = ""  # the audience-changes queue: what a batch's time did not reach is sent back to it
    criteo_base_url: str = "https://api.criteo.com"
    criteo_api_version: str = "2026-07"
    audience_name_prefix: str = "segment_"
    deployment_id: str = "segment-criteo-sync"  # marks the Criteo segments this deployment created
    adopt_segments: frozenset[str] = frozenset()  # existing segment names (or "*") this deployment may take over
    consent_required: bool = False  # CONSENT_CATEGORIES is set (ingest judges the categories)
    gum_caller_id: int | None = None  # Criteo's gumCallerId, needed to send gum identifiers
    secret_max_age_seconds: int = 300
    lock_seconds: int = 360  # the function's 300 s timeout plus a margin: a crashed holder's lease expires
    max_receive_count: int = 0  # the queue's maxReceiveCount: on that delivery a failing message is parked by us
    flush_interval_seconds: int = 60  # L: how long changes wait for others to share their Criteo calls
    flush_quiet_seconds: int = 15  # an audience without a change for this long has finished its burst
    criteo_calls_per_minute: int = 200  # the budget every invocation shares (Criteo limits per app)
    # While anything waits, a flush pass comes this often (brought by a flush tick: ticks.py); the budget's bucket
    # holds a tenth of a minute's calls (6 s), so a pass every 5 s spends all of it.
    flush_poll_seconds: int = 5
    sync_batching_window_seconds: int = 0  # the event source mapping's: it holds a tick that long too
    flush_retry_seconds: int = 5  # an audience whose call failed waits this, doubled per failure (≤ 300 s)
    audience_config_parameter: str = ""  # the SSM parameter holding the settings per audience (audience_config.py)
    audience_config_max_age_seconds: int = 60  # a change to it is used within this long
    advertiser_secret_prefix: str = ""  # an advertiser named in the settings has its secret at prefix + name

    @property
    def tick_delay(self) -> int:
        """The DelaySeconds of a flush tick."""
        return tick_delay(self.flush_poll_seconds, self.sync_batching_window_seconds)

    VARIABLES = (
        "CRITEO_SECRET_ARN",
        "LEDGER_TABLE",
        "DEAD_LETTER_QUEUE_URL",
        "QUEUE_URL",
        "CRITEO_BASE_URL",
        "CRITEO_API_VERSION",
        "AUDIENCE_NAME_PREFIX",
        "DEPLOYMENT_ID",
        "ADOPT_SEGMENTS",
        "CONSENT_CATEGORIES",
        "GUM_CALLER_ID",
        "SECRET_MAX_AGE_SECONDS",
        "AUDIENCE_LOCK_SECONDS",
        "MAX_RECEIVE_COUNT",
        "FLUSH_INTERVAL_SECONDS",
        "FLUSH_QUIET_SECONDS",
        "CRITEO_CALLS_PER_MINUTE",
        "FLUSH_POLL_SECONDS",
        "SYNC_BATCHING_WINDOW_SECONDS",
        "FLUSH_RETRY_SECONDS",
        "AUDIENCE_CONFIG_PARAMETER",
        "AUDIENCE_CONFIG_MAX_AGE_SECONDS",
        "ADVERTISER_SECRET_PREFIX",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SyncSettings:
        """Read the settings from environment variables (SettingsError when one is unusable)."""
        env = Environment(environ)
        gum_caller_id = env.text("GUM_CALLER_ID", "")
        return cls(
            criteo_secret_arn=env.text("CRITEO_SECRET_ARN"),
            ledger_table=env.text("LEDGER_TABLE"),
            dead_letter_queue_url=env.text("DEAD_LETTER_QUEUE_URL"),
            queue_url=env.text("QUEUE_URL", ""),
            criteo_base_url=env.text("CRITEO_BASE_URL", cls.criteo_base_url).rstrip("/"),
            criteo_api_version=env.text("CRITEO_API_VERSION", cls.criteo_api_version),
            audience_name_prefix=env.text("AUDIENCE_NAME_PREFIX", cls.audience_name_prefix),
            deployment_id=env.text("DEPLOYMENT_ID", cls.deployment_id),
            adopt_segments=env.names("ADOPT_SEGMENTS"),
            consent_required=bool(env.names("CONSENT_CATEGORIES")),
            gum_caller_id=env.number("GUM_CALLER_ID", 0, minimum=1) if gum_caller_id else None,
            secret_max_age_seconds=env.number("SECRET_MAX_AGE_SECONDS", cls.secret_max_age_seconds),
            lock_seconds=env.number("AUDIENCE_LOCK_SECONDS", cls.lock_seconds, minimum=1),
            max_receive_count=env.number("MAX_RECEIVE_COUNT", cls.max_receive_count),
            flush_interval_seconds=env.number("FLUSH_INTERVAL_SECONDS", cls.flush_interval_seconds),
            flush_quiet_seconds=env.number("FLUSH_QUIET_SECONDS", cls.flush_quiet_seconds),
            criteo_calls_per_minute=env.number("CRITEO_CALLS_PER_MINUTE", cls.criteo_calls_per_minute, minimum=1),
            flush_poll_seconds=env.number("FLUSH_POLL_SECONDS", cls.flush_poll_seconds, minimum=1),
            sync_batching_window_seconds=env.number("SYNC_BATCHING_WINDOW_SECONDS", cls.sync_batching_window_seconds),
            flush_retry_seconds=env.number("FLUSH_RETRY_SECONDS", cls.flush_retry_seconds),
            audience_config_parameter=env.text("AUDIENCE_CONFIG_PARAMETER", cls.audience_config_parameter),
            audience_config_max_age_seconds=env.number(
                "AUDIENCE_CONFIG_MAX_AGE_SECONDS", cls.audience_config_max_age_seconds
            ),
            advertiser_secret_prefix=env.text("ADVERTISER_SECRET_PREFIX", cls.advertiser_secret_prefix),
        )
