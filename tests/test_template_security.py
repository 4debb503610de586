"""Security properties of template.yaml that a reviewer would check by hand (checkov runs in CI too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (`!Ref X` → {"Ref": "X"})."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    return dict(template["Resources"])


def _statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, resource in resources.items():
        for policy in resource.get("Properties", {}).get("Policies", []):
            found.extend((name, statement) for statement in policy.get("Statement", []))
    return found


def test_no_wildcard_actions_or_resources_in_function_policies(resources: dict[str, Any]) -> None:
    statements = _statements(resources)
    assert statements, "the functions have inline policies"
    for name, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), f"{name}: wildcard action {actions}"
        assert statement["Resource"] != "*" and "*" not in str(statement["Resource"]), f"{name}: wildcard resource"


def test_each_function_reaches_only_its_own_queue_and_secret(resources: dict[str, Any]) -> None:
    granted = {(name, str(s["Resource"])) for name, s in _statements(resources)}
    assert ("IngestFunction", str({"Ref": "WebhookSecret"})) in granted
    assert ("AudienceSyncFunction", str({"Ref": "CriteoCredentialsSecret"})) in granted
    assert ("IngestFunction", str({"Ref": "CriteoCredentialsSecret"})) not in granted
    assert ("AudienceSyncFunction", str({"Ref": "WebhookSecret"})) not in granted


def test_queues_and_table_are_encrypted(resources: dict[str, Any]) -> None:
    for name, resource in resources.items():
        if resource["Type"] == "AWS::SQS::Queue":
            properties = resource["Properties"]
            assert properties.get("SqsManagedSseEnabled") or properties.get("KmsMasterKeyId"), name
        if resource["Type"] == "AWS::DynamoDB::Table":
            assert resource["Properties"]["SSESpecification"]["SSEEnabled"] is True


def test_secrets_are_never_plain_environment_values(resources: dict[str, Any]) -> None:
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        variables = resource["Properties"]["Environment"]["Variables"]
        for key, value in variables.items():
            if "SECRET" in key:
                assert key.endswith("_ARN") and isinstance(value, dict) and "Ref" in value, f"{name}.{key}"


def test_webhook_is_throttled_and_access_logged_without_bodies(resources: dict[str, Any]) -> None:
    api = resources["WebhookApi"]["Properties"]
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"] and api["DefaultRouteSettings"]["ThrottlingBurstLimit"]
    log_format = api["AccessLogSettings"]["Format"]
    assert "$context.requestId" in log_format
    assert "body" not in log_format.lower() and "header" not in log_format.lower()


def test_every_checkov_skip_says_why(resources: dict[str, Any]) -> None:
    skips = [
        (name, skip)
        for name, resource in resources.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert skip["id"].startswith("CKV_") and len(skip.get("comment", "")) > 30, name
