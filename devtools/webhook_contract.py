"""Check webhook answers against docs/webhook.openapi.yaml (used by the tests and the fuzzer)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS30Validator

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "webhook.openapi.yaml"


@cache
def document() -> dict[str, Any]:
    """The parsed OpenAPI document."""
    parsed: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return parsed


@cache
def _validator(status: int) -> OAS30Validator | None:
    response = document()["paths"]["/segment"]["post"]["responses"].get(str(status))
    if response is None:
        return None
    schema = response["content"]["application/json"]["schema"]
    return OAS30Validator({**schema, "components": document()["components"]})


def response_problems(status: int, body: Any) -> list[str]:
    """Why an answer breaks the documented contract (empty when it conforms)."""
    validator = _validator(status)
    if validator is None:
        return [f"status {status} is not documented"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in validator.iter_errors(body)
    ]
