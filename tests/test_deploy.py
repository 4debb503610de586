"""Deploy check: `sam build`, the SAM transform, the stack created in moto's CloudFormation, the built code run.

A first real deploy, offline. `sam build` runs for this machine's architecture (the template retargeted as in
tests/test_sam_local_invoke.py, so the built code runs here natively; the arm64 layer is checked by
tests/test_sam.py). Every function's and layer's code goes as a zip into a moto S3 bucket, as `sam package`
does; the SAM transform runs offline (samtranslator, no managed-policy lookup); `CreateStack` in moto uses the
samconfig.toml stack name, the default parameters and CAPABILITY_IAM, and is waited for until CREATE_COMPLETE.
Both functions then run from the zips the stack points at (extracted as /var/task and /opt, a fresh
interpreter per call, see devtools/deploy_check.py) with the environment the stack gave them, read back with
GetFunctionConfiguration; only AWS_ENDPOINT_URL (moto) and CRITEO_BASE_URL (the emulator) are changed. The
operator's first steps follow (read the generated webhook secret, put the Criteo app into the Criteo secret),
then a delivery signed with the stack's webhook secret → ingest → the stack's queue → sync → Criteo. Every
AWS call the code made is checked against the role policies the stack created. Without the build, the
template's IAM surface is checked offline: no wildcard resource and no AWS-managed policy with the default
parameters, only X-Ray's wildcard with EnableTracing=true.

What moto 5.2 cannot create or keep (each adaptation is commented in `deployed`; docs/deploy-check.md lists
the same under "What this check cannot cover"):

* AWS::SecretsManager::Secret: no CloudFormation support (moto skips it and Refs to it vanish). Dropped; each
  secret is created beforehand through the Secrets Manager API from the resource's Description and
  GenerateSecretString, and its Refs become that ARN.
* AWS::ApiGatewayV2::Api and AWS::ApiGatewayV2::Stage: no CloudFormation support. Dropped; an empty HTTP API
  made through the API Gateway v2 API stands in, so the Lambda permission, the dashboard and the WebhookUrl
  output carry a real API id. The route and integration (the OpenAPI body), the stage's throttling and access
  logs are not deployed; the ingest handler is called with an API Gateway v2 event, not through API Gateway.
* AWS::Lambda::LayerVersion: moto ignores LayerName and CompatibleArchitectures and its Ref is empty (the
  functions would get no layer). Dropped; the layer is published through the Lambda API from the resource's
  resolved properties, and the functions' Refs become that version's ARN.
* AWS::SQS::QueueInlinePolicy (the two TLS-only queue policies) and AWS::CloudWatch::Alarm (all alarms): no
  CloudFormation support. Dropped.
* AWS::Lambda::Function: moto keeps Code, Handler, Role, Runtime, Description, MemorySize, Timeout and
  Environment only; Layers, Architectures, TracingConfig and LoggingConfig are dropped. They are checked as
  the template asks for them, and the code runs with the layers the template names.
* Accepted but not applied: the table's TimeToLiveSpecification, PointInTimeRecoverySpecification and
  SSESpecification; SqsManagedSseEnabled (moto's default is true anyway).
* Different values: GetAtt of a LogGroup's Arn lacks CloudFormation's trailing ":*", so the deployed log
  permissions differ from AWS's (checked offline against the documented value instead:
  test_log_permissions_cover_the_streams_lambda_writes); a CloudFormation role's inline policies come back as
  Python repr strings; Number parameters reach function environments as numbers (passed on as strings).
* Not run by moto: the SQS event source mapping (moto would start the function in Docker on every
  SendMessage: the mapping is created and its settings checked, then disabled, and the test polls); IAM
  authorization (moto cannot evaluate resource-scoped policies for SQS, DynamoDB or Secrets Manager: the
  recorded calls are evaluated here, conditions not evaluated); KMS, X-Ray, CloudWatch metrics from the
  functions' EMF logs, and account quotas other than Lambda's 250 MB unzipped code size.
"""

from __future__ import annotations

import ast
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import deploy_check
from devtools.criteo_emulator import CriteoEmulator
from devtools.deploy_check import (
    ACCOUNT,
    REGION,
    Deployment,
    Invocation,
    Resolver,
    Stack,
    allows,
    drop_resource,
    managed_policy_arns,
    permissions_needed,
    policy_statements,
)
from devtools.local_aws import DEV_CRITEO, MotoServer, local_client
from devtools.poller import SCHEDULED_EVENT
from segment_criteo.target import TargetError, from_stack
from tests.segment_events import sha, signed

ROOT = Path(__file__).resolve().parent.parent
STACK_NAME = tomllib.loads((ROOT / "samconfig.toml").read_text())["default"]["global"]["parameters"]["stack_name"]
BUCKET = "deploy-check-artifacts"
PAYLOAD = ROOT / "events" / "payloads" / "batch_mixed.json"
FUNCTIONS = ("IngestFunction", "AudienceSyncFunction")

# What events/payloads/batch_mixed.json leaves in Criteo (hashed emails; madids lower-cased): b01 and b02
# enter cart_abandoners_7d; b03 and b04 (twice) enter high_value_buyers; b05 enters lapsed_subscribers and
# b06 exits it later; b07 is an identify call that puts noor.h in lapsed_subscribers; b08, b09 are ignored.
EXPECTED_SEGMENTS = {
    "segment_cart_abandoners_7d": {
        "email": {sha("max.mustermann@example.de")},
        "madid": {"0c5d5e8a-1f0b-4b6e-9a57-3b1c2d4e5f60"},
    },
    "segment_high_value_buyers": {
        "email": {sha("lee.chen@example.com"), sha("priya.k@example.in")},
        "madid": {"a1b2c3d4-e5f6-4711-8899-aabbccddeeff"},
    },
    "segment_lapsed_subscribers": {"email": {sha("noor.h@example.ae")}},
}


# --- offline: the IAM surface of the transformed template -------------------------------------------------


def transformed(parameters: dict[str, str] | None = None) -> tuple[dict[str, Any], Resolver]:
    template = deploy_check.load_template(ROOT / "template.yaml")
    cloudformation = deploy_check.to_cloudformation(deploy_check.with_placeholder_code(template), parameters)
    return cloudformation, Resolver(cloudformation, parameters or {}, stack_name=STACK_NAME)


def wildcard_statements(template: dict[str, Any], resolver: Resolver) -> list[tuple[str, dict[str, Any]]]:
    """Allow statements granting every resource: Resource "*" (alone or in a list) or any NotResource."""
    found = []
    for name, statement in policy_statements(template, resolver):
        resources = statement.get("Resource", [])
        resources = resources if isinstance(resources, list) else [resources]
        if statement["Effect"] == "Allow" and ("*" in resources or "NotResource" in statement):
            found.append((name, statement))
    return found


def aws_managed(template: dict[str, Any], resolver: Resolver) -> list[tuple[str, str]]:
    return [(name, arn) for name, arn in managed_policy_arns(template, resolver) if ":iam::aws:policy/" in arn]


def test_default_parameters_grant_no_wildcard_resource_and_no_aws_managed_policy() -> None:
    template, resolver = transformed()
    assert resolver.condition("TracingOn") is False
    assert len(policy_statements(template, resolver)) >= 8, "the roles' statements were found"
    assert wildcard_statements(template, resolver) == []
    assert aws_managed(template, resolver) == []
    # EnableTracing=false: no X-Ray policy exists or is attached.
    assert not any(
        resolver.exists(n) and r["Type"] == "AWS::IAM::ManagedPolicy" for n, r in template["Resources"].items()
    )
    assert managed_policy_arns(template, resolver) == []


def test_each_function_failing_raises_an_alarm_to_the_topic() -> None:
    # A crash or a time-out of the sync function (a scheduled flush failing every minute) published no figure
    # that an alarm watched: only the ingest function's errors were alarmed.
    template, _ = transformed({"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:ops"})
    watched = {
        r["Properties"]["Dimensions"][0]["Value"]["Ref"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("MetricName") == "Errors"
    }
    assert set(watched) == {"IngestFunction", "AudienceSyncFunction"}
    for alarm in watched.values():
        assert (alarm["Namespace"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
            "AWS/Lambda",
            0,
            "GreaterThanThreshold",
        )
        assert alarm["AlarmActions"]["Fn::If"][1] == [{"Ref": "AlarmTopicArn"}]


def test_tracing_adds_exactly_one_wildcard_statement_for_xray() -> None:
    template, resolver = transformed({"EnableTracing": "true"})
    wildcards = wildcard_statements(template, resolver)
    assert len(wildcards) == 1, wildcards
    _, statement = wildcards[0]
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    assert sorted(actions) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    assert aws_managed(template, resolver) == []
    # The stack's own policy, attached to both roles.
    attached = managed_policy_arns(template, resolver)
    assert sorted(name for name, _ in attached) == ["IngestRole", "SyncRole"]


def test_log_permissions_cover_the_streams_lambda_writes() -> None:
    """Found by this check: `${IngestLogs.Arn}:log-stream:*` matched no stream (the Arn attribute ends in ':*')."""
    template, _ = transformed()
    names, attributes = {}, {}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Logs::LogGroup" and "LogGroupName" in resource["Properties"]:
            names[name] = Resolver(template, stack_name=STACK_NAME).resolve(resource["Properties"]["LogGroupName"])
            # As documented for AWS::Logs::LogGroup: "arn:aws:logs:us-east-1:123456789012:log-group:NAME:*".
            attributes[(name, "Arn")] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{names[name]}:*"
    resolver = Resolver(template, stack_name=STACK_NAME, refs=names, attributes=attributes)
    for function in FUNCTIONS:
        properties = template["Resources"][function]["Properties"]
        group = names[properties["LoggingConfig"]["LogGroup"]["Ref"]]
        role = properties["Role"]["Fn::GetAtt"][0]
        documents = [
            resolver.resolve(p["PolicyDocument"]) for p in template["Resources"][role]["Properties"]["Policies"]
        ]
        # Lambda writes to streams named like 2026/01/01/[$LATEST]<id> in the function's LoggingConfig group.
        stream = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}:log-stream:2026/01/01/[$LATEST]0123abcd"
        for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
            assert allows(documents, action, stream), f"{role} may not {action} on {stream}: {documents}"


# --- the stack in moto ------------------------------------------------------------------------------------


@dataclass
class Deployed:
    """The created stack and what the test needs to run its functions."""

    moto: MotoServer
    stack: Stack
    template: dict[str, Any]  # the adapted copy that was deployed
    zips: dict[str, bytes]  # S3 key → uploaded zip
    layer_zips: dict[str, bytes]  # layer version ARN → zip
    api_id: str

    def client(self, service: str) -> Any:
        return aws_client(self.moto, service)

    def physical(self, logical_id: str) -> str:
        return self.stack.resources[logical_id][1]

    def configuration(self, function: str) -> dict[str, Any]:
        found: dict[str, Any] = self.client("lambda").get_function_configuration(FunctionName=self.physical(function))
        return found

    def resolved(self, logical_id: str) -> dict[str, Any]:
        """A resource's properties as the deployed template asks CloudFormation for them (intrinsics resolved)."""
        resolved: dict[str, Any] = Resolver(self.template, stack_name=STACK_NAME).resolve(
            self.template["Resources"][logical_id]["Properties"]
        )
        return resolved

    def deployment(self, function: str, directory: Path) -> Deployment:
        """The function's zip and its layers' zips (moto drops Layers: they come from the template)."""
        properties = self.resolved(function)
        layers = [self.layer_zips[arn] for arn in properties.get("Layers", [])]
        return deploy_check.unpack(self.zips[properties["Code"]["S3Key"]], layers, directory / function)

    def policies(self, function: str) -> list[dict[str, Any]]:
        """The identity policies of a function's role, as IAM holds them."""
        return self.role_policies(self.configuration(function)["Role"].rsplit("/", 1)[-1])

    def role_policies(self, role: str) -> list[dict[str, Any]]:
        """The identity policies of a role, as IAM holds them."""
        iam = self.client("iam")
        documents = [
            iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
        ]
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            version = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
            documents.append(version["PolicyVersion"]["Document"])
        return [parse_policy(document) for document in documents]


def aws_client(moto: MotoServer, service: str) -> Any:
    return local_client(moto.endpoint, service)


def parse_policy(document: Any) -> dict[str, Any]:
    """A policy document as IAM returns it; moto returns a CloudFormation role's inline policy as a Python repr."""
    if isinstance(document, dict):
        return document
    try:
        parsed: dict[str, Any] = json.loads(document)
    except json.JSONDecodeError:
        parsed = ast.literal_eval(document)
    return parsed


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deploy_check.sam_build(tmp_path_factory.mktemp("deploy"))


def create_schedule(client: Callable[[str], Any], stack: Stack, properties: dict[str, Any]) -> None:
    """An AWS::Scheduler::Schedule through the Scheduler API, its target's and role's ARNs the stack's."""
    target = dict(properties["Target"])
    for key, arn_of in (
        ("Arn", lambda physical: client("lambda").get_function(FunctionName=physical)["Configuration"]["FunctionArn"]),
        ("RoleArn", lambda physical: client("iam").get_role(RoleName=physical)["Role"]["Arn"]),
    ):
        logical_id = target[key]["Fn::GetAtt"][0]
        target[key] = arn_of(stack.resources[logical_id][1])
    assert set(properties) <= {"Name", "Description", "ScheduleExpression", "FlexibleTimeWindow", "Target"}
    client("scheduler").create_schedule(**{**properties, "Target": target})


@pytest.fixture(scope="module")
def deployed(built: Path, moto_server: MotoServer) -> Deployed:
    def client(service: str) -> Any:
        return aws_client(moto_server, service)

    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET)
    zips: dict[str, bytes] = {}

    def upload(key: str, data: bytes) -> None:
        zips[key] = data
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)

    sam_template = deploy_check.load_template(built)
    template = deploy_check.to_cloudformation(deploy_check.package(sam_template, built.parent, upload, BUCKET))
    resolver = Resolver(template, stack_name=STACK_NAME)
    resources = template["Resources"]

    # moto has no CloudFormation support for AWS::SecretsManager::Secret: each secret is made through the
    # Secrets Manager API from the resource's own properties, and its Refs become the ARN.
    secrets = client("secretsmanager")
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret"]:
        properties = resources[name]["Properties"]
        assert set(properties) <= {"Description", "GenerateSecretString"}, f"{name}: properties this stand-in ignores"
        value = deploy_check.generated_secret_string(secrets, properties["GenerateSecretString"])
        secret = secrets.create_secret(
            Name=f"{STACK_NAME}-{name}", Description=properties["Description"], SecretString=value
        )
        drop_resource(template, name, ref=secret["ARN"])

    # moto has no CloudFormation support for AWS::ApiGatewayV2::Api/Stage: an empty HTTP API stands in, so
    # the Lambda permission's SourceArn, the dashboard and the WebhookUrl output carry a real API id.
    api_id = client("apigatewayv2").create_api(Name=STACK_NAME, ProtocolType="HTTP")["ApiId"]
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::ApiGatewayV2::Stage"]:
        drop_resource(template, name)
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::ApiGatewayV2::Api"]:
        drop_resource(template, name, ref=api_id)

    # moto's AWS::Lambda::LayerVersion ignores LayerName and CompatibleArchitectures and has an empty Ref (the
    # functions would get no layer): the layer is published through the Lambda API instead.
    layer_zips: dict[str, bytes] = {}
    for name in [n for n, r in resources.items() if r["Type"] == "AWS::Lambda::LayerVersion"]:
        properties = resolver.resolve(resources[name]["Properties"])
        published = client("lambda").publish_layer_version(**properties)
        layer_zips[published["LayerVersionArn"]] = zips[properties["Content"]["S3Key"]]
        assert published["LayerVersionArn"].split(":")[-2] == properties["LayerName"]
        drop_resource(template, name, ref=published["LayerVersionArn"])

    # No CloudFormation support in moto for the TLS-only queue policies and the alarms: dropped.
    for name in [
        n for n, r in resources.items() if r["Type"] in ("AWS::SQS::QueueInlinePolicy", "AWS::CloudWatch::Alarm")
    ]:
        drop_resource(template, name)

    # No CloudFormation support in moto for EventBridge Scheduler: each schedule is made through the Scheduler
    # API once the stack exists (its target and role are the stack's), from the resource's own properties.
    schedules = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::Scheduler::Schedule"}
    for name in schedules:
        drop_resource(template, name)

    # Anything else moto would skip silently (it reports CREATE_COMPLETE regardless) fails here instead.
    stack = deploy_check.create_stack(client("cloudformation"), STACK_NAME, template)
    expected = {name for name in template["Resources"] if Resolver(template, stack_name=STACK_NAME).exists(name)}
    assert expected <= set(stack.resources), f"moto skipped {sorted(expected - set(stack.resources))}"
    for properties in schedules.values():
        resolved = Resolver(template, stack_name=STACK_NAME).resolve(
            {k: v for k, v in properties.items() if k != "Target"}
        )
        create_schedule(client, stack, {**resolved, "Target": properties["Target"]})

    # moto would invoke the sync function in Docker on every SendMessage: pause the mapping, play the poller.
    mapping = stack.resources["AudienceSyncFunctionAudienceChanges"][1]
    client("lambda").update_event_source_mapping(UUID=mapping, Enabled=False)
    return Deployed(moto_server, stack, template, zips, layer_zips, api_id)


@pytest.mark.sam
def test_stack_resources_and_outputs(deployed: Deployed) -> None:
    outputs, lambda_ = deployed.stack.outputs, deployed.client("lambda")
    assert outputs["WebhookUrl"] == f"https://{deployed.api_id}.execute-api.{REGION}.amazonaws.com/segment"
    assert {"WebhookSecretArn", "CriteoCredentialsSecretArn", "AudienceChangesQueueUrl", "DeadLetterQueueUrl"} <= set(
        outputs
    )
    queue = deployed.client("sqs").get_queue_attributes(
        QueueUrl=outputs["AudienceChangesQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    asked = deployed.resolved("AudienceChangesQueue")
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == outputs["DeadLetterQueueArn"]
    assert str(redrive["maxReceiveCount"]) == str(asked["RedrivePolicy"]["maxReceiveCount"])
    assert queue["VisibilityTimeout"] == str(asked["VisibilityTimeout"])
    assert queue["MessageRetentionPeriod"] == str(asked["MessageRetentionPeriod"])
    for function in FUNCTIONS:
        config = deployed.configuration(function)
        assert config["Runtime"] == "python3.13" and config["Handler"] == "app.handler"
        properties = deployed.resolved(function)
        assert (config["Timeout"], config["MemorySize"]) == (properties["Timeout"], properties["MemorySize"])
        role = deployed.physical(deployed.template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0])
        assert config["Role"].endswith(f":role/{role}")
        # moto's Lambda::Function drops Layers, Architectures and TracingConfig: checked as the template sets them.
        assert properties["Architectures"] == [deploy_check.native_arch()]
        assert properties["TracingConfig"] == {"Mode": "PassThrough"}
        assert properties["Layers"] == list(deployed.layer_zips)
        for arn in properties["Layers"]:
            name, version = arn.split(":")[-2:]
            layer = lambda_.get_layer_version(LayerName=name, VersionNumber=int(version))
            assert properties["Architectures"][0] in layer["CompatibleArchitectures"]
            assert config["Runtime"] in layer["CompatibleRuntimes"]
        # Lambda's limit: a function and its layers, unzipped, under 250 MB.
        code = properties["Code"]["S3Key"]
        sizes = [deployed.zips[code], *(deployed.layer_zips[arn] for arn in properties["Layers"])]
        assert sum(map(deploy_check.unzipped_size, sizes)) < deploy_check.UNZIPPED_LIMIT_BYTES
        variables = {key: str(value) for key, value in config["Environment"]["Variables"].items()}
        assert not set(variables) & deploy_check.LAMBDA_RESERVED_VARIABLES
        assert len(json.dumps(variables, separators=(",", ":"))) < deploy_check.ENVIRONMENT_LIMIT_BYTES
    ingest, sync = (deployed.configuration(f)["Environment"]["Variables"] for f in FUNCTIONS)
    assert ingest["QUEUE_URL"] == outputs["AudienceChangesQueueUrl"]
    assert ingest["WEBHOOK_SECRET_ARN"] == outputs["WebhookSecretArn"]
    assert sync["CRITEO_SECRET_ARN"] == outputs["CriteoCredentialsSecretArn"]
    assert sync["DEAD_LETTER_QUEUE_URL"] == outputs["DeadLetterQueueUrl"]
    assert sync["QUEUE_URL"] == outputs["AudienceChangesQueueUrl"]
    assert sync["LEDGER_TABLE"] == deployed.physical("MembershipLedger")
    mapping = lambda_.get_event_source_mapping(UUID=deployed.physical("AudienceSyncFunctionAudienceChanges"))
    assert mapping["EventSourceArn"] == outputs["AudienceChangesQueueArn"]
    assert mapping["FunctionArn"] == deployed.configuration("AudienceSyncFunction")["FunctionArn"]
    asked = deployed.resolved("AudienceSyncFunctionAudienceChanges")
    for key in ("BatchSize", "MaximumBatchingWindowInSeconds"):
        assert str(mapping[key]) == str(asked[key]), key
    assert mapping["FunctionResponseTypes"] == asked["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert str(mapping["ScalingConfig"]["MaximumConcurrency"]) == str(asked["ScalingConfig"]["MaximumConcurrency"])
    # API Gateway may invoke ingest from the webhook route of the API (any stage).
    (permission,) = json.loads(lambda_.get_policy(FunctionName=deployed.physical("IngestFunction"))["Policy"])[
        "Statement"
    ]
    assert permission["Principal"] == {"Service": "apigateway.amazonaws.com"}
    source = permission["Condition"]["ArnLike"]["AWS:SourceArn"]
    assert deploy_check.wildcard_match(
        source, f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{deployed.api_id}/$default/POST/segment", False
    )
    groups = {g["logGroupName"]: g for g in deployed.client("logs").describe_log_groups()["logGroups"]}
    for name in ("IngestLogs", "SyncLogs", "WebhookApiAccessLogs"):
        retention = deployed.resolved(name)["RetentionInDays"]
        assert str(groups[deployed.physical(name)]["retentionInDays"]) == str(retention)
    dashboard = deployed.client("cloudwatch").get_dashboard(DashboardName=deployed.physical("Dashboard"))
    body = json.loads(dashboard["DashboardBody"])
    assert body["widgets"] and "${" not in dashboard["DashboardBody"]


@dataclass
class Run:
    """One pass of a signed delivery through the deployed functions."""

    ingest: Invocation
    message_ids: set[str]  # what ingest queued
    placeholder_sync: Invocation  # sync before the operator set the Criteo secret
    segments_before_credentials: dict[str, Any]
    sync: Invocation
    flush: Invocation  # the minute schedule's invocation, after the operator set the Criteo secret
    tick: Invocation  # the flush tick armed while changes waited for the credentials
    segments: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def run(deployed: Deployed, emulator_server: CriteoEmulator, tmp_path_factory: pytest.TempPathFactory) -> Run:
    criteo = emulator_server
    criteo.reset()
    outputs, sqs = deployed.stack.outputs, deployed.client("sqs")
    secrets = deployed.client("secretsmanager")
    work = tmp_path_factory.mktemp("lambda")

    def invoke(function: str, event: dict[str, Any]) -> Invocation:
        config = deployed.configuration(function)
        # The environment the stack gave the function (Lambda keeps strings), pointed at loopback.
        env = {key: str(value) for key, value in config["Environment"]["Variables"].items()}
        env.update(AWS_ENDPOINT_URL=deployed.moto.endpoint, CRITEO_BASE_URL=criteo.url)
        # Changes are flushed as soon as they are applied, rather than after the stack's minute, and an audience
        # whose call failed is tried again at once.
        env.update(FLUSH_INTERVAL_SECONDS="0", FLUSH_RETRY_SECONDS="0")
        logs = deployed.template["Resources"][function]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        return deploy_check.invoke(
            deployed.deployment(function, work),
            config,
            env,
            event,
            log_group=deployed.physical(logs),
            report_modules=("app", "audience_sync", "aws_lambda_powertools", "requests"),
        )

    # The operator reads the generated webhook secret for Segment; Segment signs with it.
    webhook_secret = secrets.get_secret_value(SecretId=outputs["WebhookSecretArn"])["SecretString"]
    ingest = invoke("IngestFunction", signed(PAYLOAD.read_text(), secret=webhook_secret))

    queue = outputs["AudienceChangesQueueUrl"]
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    ).get("Messages", []):
        messages.extend(batch)  # received messages stay invisible for the queue's 30-minute visibility timeout
    event = {"Records": [sqs_record(m, outputs["AudienceChangesQueueArn"]) for m in messages]}

    # Before the operator sets the Criteo secret (it holds the template's placeholder): nothing is lost.
    placeholder_sync = invoke("AudienceSyncFunction", event)
    segments_before_credentials = criteo.segments()

    # The event source mapping delivers the batch again (the operator is not that fast): a duplicate.
    sync = invoke("AudienceSyncFunction", event)
    failed = {f["itemIdentifier"] for f in sync.answer["batchItemFailures"]}
    for message in messages:  # what the event source mapping does with a partial batch response
        if message["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    # The operator's step after the first deploy: the Criteo app's credentials into the stack's secret; the
    # minute schedule's next invocation flushes what waited.
    secrets.put_secret_value(SecretId=outputs["CriteoCredentialsSecretArn"], SecretString=json.dumps(DEV_CRITEO))
    flush = invoke("AudienceSyncFunction", SCHEDULED_EVENT)
    # The flush tick a pass armed while audiences waited, delivered as the event source mapping does: its pass
    # finds nothing left and arms none.
    ticks = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get("Messages")
    assert ticks and [set(m.get("MessageAttributes", {})) for m in ticks] == [{"flush_tick"}]
    tick = invoke(
        "AudienceSyncFunction", {"Records": [sqs_record(m, outputs["AudienceChangesQueueArn"]) for m in ticks]}
    )
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=ticks[0]["ReceiptHandle"])
    time.sleep(1)
    assert not sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages")
    assert criteo.spec_violations == []
    message_ids = {m["MessageId"] for m in messages}
    return Run(ingest, message_ids, placeholder_sync, segments_before_credentials, sync, flush, tick, criteo.segments())


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS message as the event source mapping hands it to the function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        # Lambda spells the attribute fields stringValue/dataType where SQS answers StringValue/DataType.
        "messageAttributes": {
            name: {key[0].lower() + key[1:]: value for key, value in attribute.items()}
            for name, attribute in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


@pytest.mark.sam
def test_a_signed_delivery_reaches_criteo_through_the_deployed_functions(deployed: Deployed, run: Run) -> None:
    assert run.ingest.answer["statusCode"] == 200, run.ingest.answer
    assert json.loads(run.ingest.answer["body"])["accepted"] == 8
    assert run.sync.answer == {"batchItemFailures": []}
    assert run.tick.answer == {"batchItemFailures": []}
    # One pass sends everything (nothing waits: the pending tick, delivered after, arms no next one).
    assert run.flush.answer == {
        "flush_passes": 1,
        "flush_ticks_sent": 0,
        "outbox_audiences": 0,
        "inbox_groups": 0,
        "outbox_without_credentials": 0,
        "moves_pending": 0,
    }
    members = {name: {k: v for k, v in s["members"].items() if v} for name, s in run.segments.items()}
    assert members == EXPECTED_SEGMENTS
    sqs = deployed.client("sqs")
    for url in (deployed.stack.outputs["AudienceChangesQueueUrl"], deployed.stack.outputs["DeadLetterQueueUrl"]):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    ledger = deployed.client("dynamodb").scan(TableName=deployed.physical("MembershipLedger"), Select="COUNT")
    assert ledger["Count"] > 0


@pytest.mark.sam
def test_sync_before_the_criteo_secret_is_set_keeps_every_change_in_the_outbox(run: Run) -> None:
    assert run.message_ids and run.placeholder_sync.answer == {"batchItemFailures": []}
    assert run.segments_before_credentials == {}


@pytest.mark.sam
def test_the_minute_schedule_invokes_the_sync_function(deployed: Deployed) -> None:
    events = deployed.client("events")
    function_arn = deployed.configuration("AudienceSyncFunction")["FunctionArn"]
    rules = [r for r in events.list_rules()["Rules"] if r.get("ScheduleExpression") == "rate(1 minute)"]
    targets = [t["Arn"] for r in rules for t in events.list_targets_by_rule(Rule=r["Name"])["Targets"]]
    assert function_arn in targets


@pytest.mark.sam
def test_the_hourly_schedule_reads_the_match_statistics_through_the_sync_function(deployed: Deployed) -> None:
    schedule = deployed.client("scheduler").get_schedule(Name=f"{STACK_NAME}-match-statistics")
    function_arn = deployed.configuration("AudienceSyncFunction")["FunctionArn"]
    assert schedule["ScheduleExpression"] == "rate(1 hour)"
    assert schedule["Target"]["Arn"] == function_arn
    assert json.loads(schedule["Target"]["Input"]) == {"match_statistics": True}
    # Its role may invoke the sync function and nothing else.
    documents = deployed.role_policies(schedule["Target"]["RoleArn"].split("/")[-1])
    assert allows(documents, "lambda:InvokeFunction", function_arn)
    assert not allows(documents, "lambda:InvokeFunction", function_arn.replace("Sync", "Ingest"))


@pytest.mark.sam
def test_the_functions_ran_the_deployed_code(run: Run) -> None:
    """The handler came from the function's zip, the packages from the layer's, not from this checkout or venv."""
    for invocation, imported in (
        (run.ingest, {"app", "audience_sync", "aws_lambda_powertools"}),
        (run.sync, set(run.sync.origins)),
        (run.flush, set(run.flush.origins)),
    ):
        origins = {module: origin for module, origin in invocation.origins.items() if origin}
        assert set(origins) >= imported
        for module, origin in origins.items():
            expected = "/task/" if module == "app" else "/opt/python/"
            assert expected in origin, f"{module} came from {origin}"


@pytest.mark.sam
def test_every_aws_call_the_code_made_is_allowed_by_its_role(deployed: Deployed, run: Run) -> None:
    for function, invocations in (
        ("IngestFunction", [run.ingest]),
        ("AudienceSyncFunction", [run.sync, run.placeholder_sync, run.flush, run.tick]),
    ):
        policies = deployed.policies(function)
        needed = {p for invocation in invocations for call in invocation.calls for p in permissions_needed(call)}
        assert needed, f"{function} made no AWS call"
        denied = sorted(p for p in needed if not allows(policies, *p))
        assert denied == [], f"{function}'s role does not allow {denied}"


def test_the_roles_allow_the_settings_and_advertiser_secrets_the_code_reads(deployed: Deployed) -> None:
    """The rules (ingest) read the settings parameter, and an advertiser named in the settings has its secret at
    ADVERTISER_SECRET_PREFIX + name (Secrets Manager appends a suffix to the ARN); nothing wider is allowed."""
    sync_env = deployed.configuration("AudienceSyncFunction")["Environment"]["Variables"]
    ingest_env = deployed.configuration("IngestFunction")["Environment"]["Variables"]
    secrets = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:"
    sync_policies = deployed.policies("AudienceSyncFunction")
    advertiser = secrets + sync_env["ADVERTISER_SECRET_PREFIX"] + "brand_eu-Ab12Cd"
    assert allows(sync_policies, "secretsmanager:GetSecretValue", advertiser)
    assert not allows(sync_policies, "secretsmanager:GetSecretValue", secrets + "another-stack/criteo/x-Ab12Cd")
    assert not allows(sync_policies, "secretsmanager:GetSecretValue", deployed.stack.outputs["WebhookSecretArn"])
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{ingest_env['AUDIENCE_CONFIG_PARAMETER']}"
    assert ingest_env["AUDIENCE_CONFIG_PARAMETER"] == sync_env["AUDIENCE_CONFIG_PARAMETER"]
    assert allows(deployed.policies("IngestFunction"), "ssm:GetParameter", parameter)


@pytest.mark.sam
def test_the_operator_command_finds_the_deployment_by_stack_name(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`segment-criteo --stack NAME` reads what it needs from the stack's outputs and parameters."""
    for name, value in (
        ("AWS_ENDPOINT_URL", deployed.moto.endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ):
        monkeypatch.setenv(name, value)
    target = from_stack(STACK_NAME, REGION)
    outputs = deployed.stack.outputs
    sync_env = deployed.configuration("AudienceSyncFunction")["Environment"]["Variables"]
    assert (target.ledger_table, target.queue_url, target.dead_letter_queue_url) == (
        sync_env["LEDGER_TABLE"],
        outputs["AudienceChangesQueueUrl"],
        outputs["DeadLetterQueueUrl"],
    )
    assert target.advertiser_secret_prefix == sync_env["ADVERTISER_SECRET_PREFIX"]
    assert target.settings_parameter == sync_env["AUDIENCE_CONFIG_PARAMETER"] and target.deployment == STACK_NAME
    assert target.secret_of("default") == outputs["CriteoCredentialsSecretArn"]
    with pytest.raises(TargetError, match="not found"):
        from_stack("no-such-stack", REGION)
