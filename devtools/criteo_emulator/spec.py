"""Criteo's official OpenAPI spec (vendored copy): validate request and response bodies against it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator

SPEC_PATH = Path(__file__).resolve().parent / "spec" / "marketingsolutions_2026-07.openapi.json"


@cache
def spec() -> dict[str, Any]:
    """The parsed spec."""
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return document


@cache
def _validator(schema_name: str) -> OAS30Validator:
    # The $ref resolves against this root, which carries every component schema.
    root = {"components": spec()["components"], "$ref": f"#/components/schemas/{schema_name}"}
    return OAS30Validator(root)


def operation_schema(path: str, method: str, status: str | None = None) -> str | None:
    """Name of the request (or, with `status`, the response) body schema of an operation."""
    operation = spec()["paths"][path][method.lower()]
    holder = operation.get("requestBody") if status is None else operation["responses"].get(status)
    if not holder:
        return None
    ref = str(holder["content"]["application/json"]["schema"]["$ref"])
    return ref.rsplit("/", 1)[-1]


def problems(schema_name: str, document: Any) -> list[str]:
    """Every way `document` breaks the named schema (empty when it conforms)."""
    errors = sorted(_validator(schema_name).iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in errors]
