"""Security properties of template.yaml that a reviewer would check by hand (checkov runs in CI too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devtools.template import load_template

ROOT = Path(__file__).resolve().parent.parent
# Advertisers' secrets, created by the user under the stack's name (Secrets Manager appends a random suffix to
# an ARN, so a name can only be granted with a trailing wildcard): the one other pattern allowed.
ADVERTISER_SECRETS = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${AWS::StackName}/criteo/*"
)


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(load_template()["Resources"])


def _resources(statement: dict[str, Any]) -> list[str]:
    """A statement's resources, each as text."""
    given = statement["Resource"]
    return [str(r) for r in (given if isinstance(given, list) else [given])]


def _statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every statement of every role's inline policies and every managed policy we define."""
    found = []
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        documents = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            documents.append(properties["PolicyDocument"])
        for document in documents:
            found.extend((name, statement) for statement in document.get("Statement", []))
    return found


def test_no_wildcard_actions_or_resources_in_function_policies(resources: dict[str, Any]) -> None:
    statements = _statements(resources)
    assert statements, "the functions have roles with inline policies"
    for name, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), f"{name}: wildcard action {actions}"
        if name == "TracingPolicy":  # only with EnableTracing: X-Ray has no resource-level permissions
            assert set(actions) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
            continue
        assert statement["Resource"] != "*", f"{name}: wildcard resource"
        for resource in _resources(statement):
            if resource == str({"Fn::Sub": ADVERTISER_SECRETS}):
                assert (name, actions) == ("SyncRole", ["secretsmanager:GetSecretValue"])
                continue
            # The other pattern allowed: the streams of the function's own log group, created at run time.
            assert "*" not in resource.replace(":log-stream:*", ""), f"{name}: wildcard resource {resource}"


def test_each_function_reaches_only_its_own_queue_and_secret(resources: dict[str, Any]) -> None:
    granted = {(name, resource) for name, s in _statements(resources) for resource in _resources(s)}
    assert ("IngestRole", str({"Ref": "WebhookSecret"})) in granted
    assert ("SyncRole", str({"Ref": "CriteoCredentialsSecret"})) in granted
    assert ("IngestRole", str({"Ref": "CriteoCredentialsSecret"})) not in granted
    assert ("SyncRole", str({"Ref": "WebhookSecret"})) not in granted


def test_state_survives_stack_deletion_and_queues_refuse_plain_http(resources: dict[str, Any]) -> None:
    for name in ("CriteoCredentialsSecret", "WebhookSecret", "MembershipLedger"):
        assert resources[name]["DeletionPolicy"] == resources[name]["UpdateReplacePolicy"] == "Retain", name
    tls_only = {
        str(r["Properties"]["Queue"])
        for r in resources.values()
        if r["Type"] == "AWS::SQS::QueueInlinePolicy"
        and r["Properties"]["PolicyDocument"]["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"] == "false"
    }
    assert tls_only == {str({"Ref": "AudienceChangesQueue"}), str({"Ref": "AudienceChangesDLQ"})}
    retention = {
        n: resources[n]["Properties"]["MessageRetentionPeriod"] for n in ("AudienceChangesQueue", "AudienceChangesDLQ")
    }
    assert retention["AudienceChangesDLQ"] > retention["AudienceChangesQueue"]


def test_nothing_needs_a_quota_increase_or_a_combination_lambda_rejects(resources: dict[str, Any]) -> None:
    template = load_template()
    for name, resource in resources.items():
        assert "ReservedConcurrentExecutions" not in resource.get("Properties", {}), name
    # An SQS batch above 10 messages needs a batching window of at least 1 s.
    assert template["Parameters"]["SyncBatchingWindowSeconds"]["MinValue"] >= 1
    # The event source mapping's MaximumConcurrency must be 2-1000.
    assert template["Parameters"]["SyncMaxConcurrency"]["MinValue"] >= 2


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
            if key == "ADVERTISER_SECRET_PREFIX":  # a name under which the user creates secrets, not a secret
                assert value == {"Fn::Sub": "${AWS::StackName}/criteo/"}
            elif "SECRET" in key:
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


def test_the_sync_role_allows_every_dynamodb_call_the_shared_package_makes(resources: dict[str, Any]) -> None:
    # moto does not enforce IAM: a call the role lacks would first fail in AWS (a move's Scan did).
    code = "".join(path.read_text() for path in (ROOT / "layers" / "common").rglob("*.py"))
    calls = set(re.findall(r"dynamodb\.([a-z_]+)\(", code)) | set(re.findall(r'get_paginator\("([a-z_]+)"\)', code))
    calls.discard("get_paginator")
    needed = {"dynamodb:" + "".join(part.title() for part in call.split("_")) for call in calls}
    allowed = {
        action
        for name, statement in _statements(resources)
        if name == "SyncRole"
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert "dynamodb:Scan" in needed and needed <= allowed, sorted(needed - allowed)
