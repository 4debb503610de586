"""Criteo's official OpenAPI 3.0 spec (vendored copy): validate requests and responses of an operation against it.

Operations are named by their path template without the version prefix, e.g.
`/marketing-solutions/audience-segments/{audience-segment-id}/contact-list`, so the emulator can serve any
configured version while the shapes always come from the vendored file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

SPEC_VERSION = "2026-07"
SPEC_PATH = Path(__file__).resolve().parent / "spec" / f"marketingsolutions_{SPEC_VERSION}.openapi.json"

_INTEGER = re.compile(r"-?[0-9]+")
_MESSAGE_CHARS = 200


@cache
def spec() -> dict[str, Any]:
    """The parsed spec document."""
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return document


@cache
def _validator(schema_name: str, direction: Literal["request", "response"]) -> OAS30WriteValidator:
    """A validator of one component schema; `$ref`s resolve against a root that holds every component.

    Requests use the write flavour (readOnly properties are refused), responses the read flavour.
    """
    root = {"components": spec()["components"], "$ref": f"#/components/schemas/{schema_name}"}
    flavour = OAS30WriteValidator if direction == "request" else OAS30ReadValidator
    return flavour(root, format_checker=oas30_format_checker)


def _operation(template: str, method: str) -> dict[str, Any]:
    """The spec's operation object; KeyError when the spec has no such operation."""
    path_item: dict[str, Any] = spec()["paths"][f"/{SPEC_VERSION}{template}"]
    operation: dict[str, Any] = path_item[method.lower()]
    return {**operation, "parameters": path_item.get("parameters", []) + operation.get("parameters", [])}


def schema_name(template: str, method: str, status: str | None = None) -> str | None:
    """Component name of the request body schema (or, with `status`, of that response's body schema)."""
    operation = _operation(template, method)
    holder = operation.get("requestBody") if status is None else operation["responses"].get(status)
    if not holder:
        return None
    return str(holder["content"]["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


def problems(name: str, document: Any, direction: Literal["request", "response"] = "request") -> list[str]:
    """Every way `document` breaks the named component schema (empty when it conforms)."""
    errors = sorted(_validator(name, direction).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:_MESSAGE_CHARS]}" for e in errors]


def request_problems(template: str, method: str, document: Any) -> list[str]:
    """Problems of a request body against its operation's schema."""
    name = schema_name(template, method)
    return problems(name, document) if name else []


def response_problems(template: str, method: str, status: int, document: Any) -> list[str]:
    """Problems of a response body against the schema the spec gives for that status."""
    name = schema_name(template, method, str(status))
    if name is None:
        return [f"the spec documents no JSON body for {method.upper()} {template} -> {status}"]
    return problems(name, document, "response")


def parameters(
    template: str, method: str, location: Literal["query", "path"], raw: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Typed values of the operation's parameters in `location` (spec defaults filled in), and their problems.

    Parameters the spec does not declare are ignored, as Criteo does.
    """
    values: dict[str, Any] = {}
    found: list[str] = []
    for parameter in _operation(template, method)["parameters"]:
        if parameter["in"] != location:
            continue
        name, schema = parameter["name"], parameter["schema"]
        text = raw.get(name)
        if text is None:
            if parameter.get("required"):
                found.append(f"{location} parameter {name}: required")
            elif "default" in schema:
                values[name] = schema["default"]
            continue
        # Path ids are strings of format int32: check them as the integers they stand for.
        numeric = schema.get("type") == "integer" or schema.get("format") in ("int32", "int64")
        if numeric and not _INTEGER.fullmatch(text):
            found.append(f"{location} parameter {name}: {text[:_MESSAGE_CHARS]!r} is not an integer")
            continue
        checked, value = ({**schema, "type": "integer"}, int(text)) if numeric else (schema, text)
        validator = OAS30WriteValidator(checked, format_checker=oas30_format_checker)
        found += [f"{location} parameter {name}: {e.message[:_MESSAGE_CHARS]}" for e in validator.iter_errors(value)]
        values[name] = value if schema.get("type") == "integer" else text
    return values, found
