"""Settings read once from the Lambda environment (set by template.yaml or env.json)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from audience_sync.identifiers import IDENTIFIER_TYPES


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def _names(name: str, default: str = "") -> frozenset[str]:
    """A comma-separated list setting."""
    return frozenset(part.strip() for part in os.environ.get(name, default).split(",") if part.strip())


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
    max_body_bytes: int = 5 * 1024 * 1024
    secret_max_age_seconds: int = 300

    @classmethod
    def from_env(cls) -> IngestSettings:
        """Read the settings from environment variables."""
        types = _names("IDENTIFIER_TYPES", "email,madid")
        unknown = types - IDENTIFIER_TYPES
        if unknown:
            raise ValueError(f"IDENTIFIER_TYPES has unknown types: {sorted(unknown)}")
        return cls(
            queue_url=os.environ["QUEUE_URL"],
            webhook_secret_arn=os.environ["WEBHOOK_SECRET_ARN"],
            hash_emails=_flag("HASH_EMAILS", True),
            identifier_types=types,
            consent_categories=_names("CONSENT_CATEGORIES"),
            max_clock_skew_seconds=int(os.environ.get("MAX_CLOCK_SKEW_SECONDS", 300)),
            allow_bearer_token=_flag("ALLOW_BEARER_TOKEN", False),
            max_body_bytes=int(os.environ.get("MAX_BODY_BYTES", 5 * 1024 * 1024)),
            secret_max_age_seconds=int(os.environ.get("SECRET_MAX_AGE_SECONDS", 300)),
        )


@dataclass(frozen=True)
class SyncSettings:
    """What the sync function needs."""

    criteo_secret_arn: str
    ledger_table: str
    dead_letter_queue_url: str
    criteo_base_url: str = "https://api.criteo.com"
    criteo_api_version: str = "2026-07"
    audience_name_prefix: str = "segment_"
    deployment_id: str = "segment-criteo-sync"  # marks the Criteo segments this deployment created
    adopt_segments: frozenset[str] = frozenset()  # existing segment names (or "*") this deployment may take over
    consent_required: bool = False  # CONSENT_CATEGORIES is set (ingest judges the categories)
    gum_caller_id: int | None = None  # Criteo's gumCallerId, needed to send gum identifiers
    secret_max_age_seconds: int = 300
    lock_seconds: int = 960
    max_receive_count: int = 0  # the queue's maxReceiveCount: on that delivery a failing message is parked by us

    @classmethod
    def from_env(cls) -> SyncSettings:
        """Read the settings from environment variables."""
        return cls(
            criteo_secret_arn=os.environ["CRITEO_SECRET_ARN"],
            ledger_table=os.environ["LEDGER_TABLE"],
            dead_letter_queue_url=os.environ["DEAD_LETTER_QUEUE_URL"],
            criteo_base_url=os.environ.get("CRITEO_BASE_URL", "https://api.criteo.com").rstrip("/"),
            criteo_api_version=os.environ.get("CRITEO_API_VERSION", "2026-07"),
            audience_name_prefix=os.environ.get("AUDIENCE_NAME_PREFIX", "segment_"),
            deployment_id=os.environ.get("DEPLOYMENT_ID", "segment-criteo-sync"),
            adopt_segments=_names("ADOPT_SEGMENTS"),
            consent_required=bool(_names("CONSENT_CATEGORIES")),
            gum_caller_id=int(os.environ["GUM_CALLER_ID"]) if os.environ.get("GUM_CALLER_ID") else None,
            secret_max_age_seconds=int(os.environ.get("SECRET_MAX_AGE_SECONDS", 300)),
            lock_seconds=int(os.environ.get("AUDIENCE_LOCK_SECONDS", 960)),
            max_receive_count=int(os.environ.get("MAX_RECEIVE_COUNT", 0)),
        )
