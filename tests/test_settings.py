"""Settings parse strictly, have one default each, and the template sets exactly what the code reads."""

from __future__ import annotations

from typing import Any

import pytest

from audience_sync.config import IngestSettings, SettingsError, SyncSettings
from devtools.template import load_template

REQUIRED = {
    "QUEUE_URL": "https://sqs/q",
    "WEBHOOK_SECRET_ARN": "arn:webhook",
    "CRITEO_SECRET_ARN": "arn:criteo",
    "LEDGER_TABLE": "ledger",
    "DEAD_LETTER_QUEUE_URL": "https://sqs/dlq",
}
FUNCTIONS = {"IngestFunction": IngestSettings, "AudienceSyncFunction": SyncSettings}
# Set for every function by the template's Globals: Powertools and the local endpoint override, not settings.
GLOBALS = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL", "AWS_ENDPOINT_URL"}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HASH_EMAILS", "enabled", "HASH_EMAILS='enabled' is not a boolean"),
        ("ALLOW_BEARER_TOKEN", "maybe", "ALLOW_BEARER_TOKEN='maybe' is not a boolean"),
        ("MAX_BODY_BYTES", "5MB", "MAX_BODY_BYTES='5MB' is not a whole number"),
        ("MAX_CLOCK_SKEW_SECONDS", "-1", "below its minimum"),
        ("IDENTIFIER_TYPES", "email,fax", "IDENTIFIER_TYPES must name some of"),
        ("QUEUE_URL", "", "QUEUE_URL is required"),
    ],
)
def test_an_unusable_ingest_setting_stops_init_with_its_name(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        IngestSettings.from_env({**REQUIRED, name: value})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GUM_CALLER_ID", "abc", "GUM_CALLER_ID='abc' is not a whole number"),
        ("AUDIENCE_LOCK_SECONDS", "0", "below its minimum"),
        ("LEDGER_TABLE", "  ", "LEDGER_TABLE is required"),
    ],
)
def test_an_unusable_sync_setting_stops_init_with_its_name(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        SyncSettings.from_env({**REQUIRED, name: value})


def test_booleans_accept_the_usual_words_and_empty_lists_and_prefixes_are_kept() -> None:
    settings = IngestSettings.from_env({**REQUIRED, "HASH_EMAILS": "False", "ALLOW_BEARER_TOKEN": "yes"})
    assert (settings.hash_emails, settings.allow_bearer_token) == (False, True)
    sync = SyncSettings.from_env({**REQUIRED, "AUDIENCE_NAME_PREFIX": "", "GUM_CALLER_ID": ""})
    assert sync.audience_name_prefix == "" and sync.gum_caller_id is None  # Segment-destination migration: no prefix


def _parameter_value(template: dict[str, Any], value: Any) -> Any:
    """A template env value: a parameter's default, a literal, or None when it comes from a resource."""
    if isinstance(value, dict):
        name = value.get("Ref")
        parameter = template["Parameters"].get(name) if isinstance(name, str) else None
        return str(parameter["Default"]) if parameter else None
    return str(value)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_template_sets_only_what_the_code_reads_with_the_same_defaults(function: str) -> None:
    template = load_template()
    settings = FUNCTIONS[function]
    variables = template["Resources"][function]["Properties"]["Environment"]["Variables"]
    assert set(variables) <= set(settings.VARIABLES), f"{function} sets variables its code never reads"
    required = {name for name in settings.VARIABLES if name in REQUIRED}
    assert required <= set(variables), f"{function} lacks required variables"
    defaults = settings.from_env(REQUIRED)
    from_template = settings.from_env(
        {**REQUIRED, **{k: v for k, raw in variables.items() if (v := _parameter_value(template, raw)) is not None}}
    )
    for field in (
        "hash_emails",
        "identifier_types",
        "allow_bearer_token",
        "max_clock_skew_seconds",
        "consent_categories",
    ):
        if hasattr(defaults, field):
            assert getattr(defaults, field) == getattr(from_template, field), f"{function}: two defaults for {field}"
    for field in ("audience_name_prefix", "criteo_api_version", "adopt_segments", "gum_caller_id", "lock_seconds"):
        if hasattr(defaults, field):
            assert getattr(defaults, field) == getattr(from_template, field), f"{function}: two defaults for {field}"


def test_the_template_globals_are_only_powertools_and_the_endpoint() -> None:
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    assert set(variables) == GLOBALS
