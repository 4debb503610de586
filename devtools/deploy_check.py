"""Deploy check: the built SAM app as a CloudFormation stack in moto, and its built code run like Lambda runs it.

The pieces tests/test_deploy.py puts together (see docs/deploy-check.md):

* `sam_build`: `sam build` offline, for this machine's architecture so the built code runs here natively.
* `package` + `to_cloudformation`: what `sam deploy` does before CloudFormation sees the template: every
  CodeUri/ContentUri becomes a zip in S3, then the SAM transform runs (offline: no managed-policy lookup).
* `Resolver`: CloudFormation's intrinsic functions (Ref, GetAtt, Sub, If, FindInMap, Join, conditions) over a
  transformed template, for checks that need the values a real deploy would produce.
* `allows`: whether IAM policy documents allow an action on a resource (wildcards; statements with conditions
  count as not matching), and `permissions_needed` for the AWS calls recorded while a handler ran.
* `create_stack`: create a stack and wait for it (a hang guard, not a speed bound).
* `invoke`: one handler from the deployed zips, in a fresh interpreter (a cold start): the function's zip
  extracted as /var/task, each layer's as /opt, searched in Lambda's order before the interpreter's own
  packages (the runtime's boto3); it returns the handler's answer and every AWS call the code made.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
PARTITION = "aws"
# Lambda's limit for a function and all its layers, unzipped.
UNZIPPED_LIMIT_BYTES = 262_144_000
# Lambda's limit for a function's environment variables (keys and values together).
ENVIRONMENT_LIMIT_BYTES = 4096
# Environment variables Lambda sets itself and refuses in a function's configuration.
LAMBDA_RESERVED_VARIABLES = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


# --- build -----------------------------------------------------------------------------------------------


def native_arch() -> str:
    """This machine's Lambda architecture name (arm64 or x86_64)."""
    machine = platform.machine().lower()
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64"


def retargeted_template(arch: str, directory: Path, source: Path = ROOT / "template.yaml") -> Path:
    """template.yaml with its functions and layer built for `arch` (code paths still resolve via --base-dir)."""
    text = source.read_text()
    # "Architectures: [arm64]" also matches the layer's CompatibleArchitectures: the functions and the layer.
    for key, uses in (("Architectures: [arm64]", 2), ("BuildArchitecture: arm64", 1)):
        if text.count(key) != uses:
            raise ValueError(f"template.yaml no longer has {key!r} {uses} time(s)")
        text = text.replace(key, key.replace("arm64", arch))
    path = directory / f"template.{arch}.yaml"
    path.write_text(text)
    return path


def sam_build(work: Path, arch: str | None = None, timeout_s: float = 600) -> Path:
    """`sam build` of template.yaml into work/build (for `arch`, default this machine's); the built template."""
    arch = arch or native_arch()
    sam = Path(sys.executable).parent / "sam"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    template = retargeted_template(arch, work) if arch != "arm64" else ROOT / "template.yaml"
    build_dir = work / "build"
    command = [str(sam), "build", "--template", str(template), "--base-dir", str(ROOT)]
    command += ["--build-dir", str(build_dir), "--cache-dir", str(work / "cache")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"sam build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return build_dir / "template.yaml"


# --- package and transform -------------------------------------------------------------------------------


class OfflinePolicyLoader:
    """samtranslator's ManagedPolicyLoader without IAM calls. SAM resolves AWS-managed policy names from the map
    it bundles and asks the loader only beyond it; our template names none, and an unknown name stays as written."""

    def load(self) -> dict[str, str]:
        """The managed-policy name → ARN map: empty."""
        return {}


def load_template(path: Path) -> dict[str, Any]:
    """A SAM/CloudFormation YAML template as SAM reads it (short-form intrinsics become long form)."""
    template: dict[str, Any] = yaml_parse(path.read_text())
    return template


CODE_PROPERTIES = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


def code_directories(sam_template: dict[str, Any], base: Path) -> dict[str, Path]:
    """Logical id → directory of every function's and layer's code (relative paths resolve against `base`)."""
    found = {}
    for name, resource in sam_template["Resources"].items():
        key = CODE_PROPERTIES.get(resource.get("Type", ""))
        uri = resource.get("Properties", {}).get(key) if key else None
        if isinstance(uri, str) and not uri.startswith("s3://"):
            found[name] = (base / uri).resolve()
    return found


def zip_directory(directory: Path) -> bytes:
    """A deterministic zip of a directory (file modes kept, as `sam package` does)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(path.relative_to(directory)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def package(
    sam_template: dict[str, Any], base: Path, upload: Callable[[str, bytes], None], bucket: str
) -> dict[str, Any]:
    """A copy of the template whose code is uploaded zips (`upload(key, data)`), as `sam package` leaves it."""
    packaged = copy.deepcopy(sam_template)
    for name, directory in code_directories(sam_template, base).items():
        key = f"{name}.zip"
        upload(key, zip_directory(directory))
        resource = packaged["Resources"][name]
        resource["Properties"][CODE_PROPERTIES[resource["Type"]]] = f"s3://{bucket}/{key}"
    return packaged


def with_placeholder_code(sam_template: dict[str, Any]) -> dict[str, Any]:
    """A copy whose local code paths are S3 placeholders: enough for the transform, nothing is uploaded."""
    packaged = copy.deepcopy(sam_template)
    for name, resource in packaged["Resources"].items():
        key = CODE_PROPERTIES.get(resource.get("Type", ""))
        if key and isinstance(resource.get("Properties", {}).get(key), str):
            resource["Properties"][key] = f"s3://placeholder-bucket/{name}.zip"
    return packaged


def to_cloudformation(sam_template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SAM transform, offline (the region is a given, no AWS-managed policy is looked up)."""
    values = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION, **(parameters or {})}
    with _environment(AWS_DEFAULT_REGION=REGION):  # samtranslator insists on a boto3 session region
        template: dict[str, Any] = transform(copy.deepcopy(sam_template), values, OfflinePolicyLoader())
    return template


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- intrinsic functions ---------------------------------------------------------------------------------


class _NoValue:
    """AWS::NoValue: the property or list item disappears."""


NO_VALUE = _NoValue()


@dataclass
class Resolver:
    """Evaluates CloudFormation intrinsics over a template with given parameters.

    A Ref to a resource resolves through `refs`, a GetAtt through `attributes` ((logical id, attribute) → value);
    anything not given resolves to a readable placeholder `<Name>` / `<Name.Attribute>`, never to a wildcard.
    """

    template: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    stack_name: str = "deploy-check"
    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values: dict[str, Any] = {}
        for name, spec in self.template.get("Parameters", {}).items():
            if "Default" in spec:
                values[name] = spec["Default"]
        values.update(self.parameters)
        values.update(
            {
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT,
                "AWS::Partition": PARTITION,
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackName": self.stack_name,
                "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{self.stack_name}/0",
            }
        )
        self.values = {key: str(value) if isinstance(value, int | float) else value for key, value in values.items()}
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        """The value of a named condition."""
        if name not in self._conditions:
            self._conditions[name] = self._truth(self.template["Conditions"][name])
        return self._conditions[name]

    def _truth(self, node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            (function, argument), *_ = node.items()
            if function == "Condition":
                return self.condition(argument)
            if function == "Fn::Equals":
                left, right = (self.resolve(item) for item in argument)
                return bool(str(left) == str(right))
            if function == "Fn::Not":
                return not self._truth(argument[0])
            if function == "Fn::And":
                return all(self._truth(item) for item in argument)
            if function == "Fn::Or":
                return any(self._truth(item) for item in argument)
        raise ValueError(f"not a condition: {node!r}")

    def exists(self, logical_id: str) -> bool:
        """Whether a resource is created with these parameters (its Condition, if any, holds)."""
        condition = self.template["Resources"][logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def resolve(self, node: Any) -> Any:
        """The node with every intrinsic evaluated (NO_VALUE where AWS::NoValue removes it)."""
        if isinstance(node, list):
            return [value for value in (self.resolve(item) for item in node) if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (function, argument), *_ = node.items()
            if function == "Ref":
                return self._ref(argument)
            if function == "Fn::GetAtt":
                logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.attributes.get((logical_id, attribute), f"<{logical_id}.{attribute}>")
            if function == "Fn::Sub":
                return self._sub(argument)
            if function == "Fn::If":
                name, when_true, when_false = argument
                return self.resolve(when_true if self.condition(name) else when_false)
            if function == "Fn::FindInMap":
                mapping, first, second = (self.resolve(item) for item in argument)
                return self.template["Mappings"][mapping][first][second]
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(item) for item in self.resolve(items))
            if function == "Fn::Select":
                index, items = (self.resolve(item) for item in argument)
                return items[int(index)]
            if function == "Fn::Split":
                separator, text = (self.resolve(item) for item in argument)
                return str(text).split(separator)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.values:
            return self.values[name]
        if name in self.refs:
            return self.refs[name]
        if name in self.template.get("Resources", {}):
            return f"<{name}>"
        raise KeyError(f"Ref to an unknown name: {name}")

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        local = {key: self.resolve(value) for key, value in variables.items()}

        def value_of(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name:
                return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", value_of, text)


def replace_references(node: Any, logical_id: str, ref: str, attributes: dict[str, str] | None = None) -> Any:
    """The node with every Ref/GetAtt/${...} of a resource replaced by literal values (to drop the resource)."""
    attributes = attributes or {}
    if isinstance(node, list):
        return [replace_references(item, logical_id, ref, attributes) for item in node]
    if not isinstance(node, dict):
        return node
    if node == {"Ref": logical_id}:
        return ref
    if len(node) == 1 and "Fn::GetAtt" in node:
        target = node["Fn::GetAtt"]
        name, attribute = target if isinstance(target, list) else target.split(".", 1)
        if name == logical_id:
            return attributes[attribute]
    if len(node) == 1 and "Fn::Sub" in node:
        argument = node["Fn::Sub"]
        text, variables = (argument, None) if isinstance(argument, str) else argument
        text = text.replace("${" + logical_id + "}", ref)
        for attribute, value in attributes.items():
            text = text.replace("${" + f"{logical_id}.{attribute}" + "}", value)
        if variables is None:
            return {"Fn::Sub": text}
        return {"Fn::Sub": [text, replace_references(variables, logical_id, ref, attributes)]}
    return {key: replace_references(value, logical_id, ref, attributes) for key, value in node.items()}


def references(node: Any) -> set[str]:
    """Names a node refers to: Ref, GetAtt, ${Name} / ${Name.Attribute} in Sub, DependsOn."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item)
        return found
    if not isinstance(node, dict):
        return found
    for key, value in node.items():
        if key == "Ref" and isinstance(value, str):
            found.add(value)
        elif key == "Fn::GetAtt":
            found.add(value[0] if isinstance(value, list) else str(value).split(".", 1)[0])
        elif key == "Fn::Sub":
            text = value if isinstance(value, str) else value[0]
            found |= {name.split(".", 1)[0] for name in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            if not isinstance(value, str):
                found -= set(value[1])
                found |= references(value[1])
        elif key == "DependsOn":
            found |= set(_as_list(value))
        else:
            found |= references(value)
    return found


def drop_resource(
    template: dict[str, Any], logical_id: str, ref: str | None = None, attributes: dict[str, str] | None = None
) -> None:
    """Remove a resource from a template, first replacing its Ref/attributes by literal stand-in values."""
    del template["Resources"][logical_id]
    if ref is not None:
        for section in ("Resources", "Outputs"):
            entries = template.get(section, {})
            for key in entries:  # in place: callers may hold the section
                entries[key] = replace_references(entries[key], logical_id, ref, attributes)
    still = [
        name
        for name, node in {**template["Resources"], **template.get("Outputs", {})}.items()
        if logical_id in references(node)
    ]
    if still:
        raise ValueError(f"{logical_id} is still referred to by {still}")


# --- IAM -------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM's matching: `*` any run of characters (colons included), `?` any one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _statement_matches(statement: dict[str, Any], action: str, resource: str) -> bool:
    if "Action" in statement:
        action_ok = any(wildcard_match(p, action, True) for p in _as_list(statement["Action"]))
    else:
        action_ok = not any(wildcard_match(p, action, True) for p in _as_list(statement.get("NotAction", [])))
    if "Resource" in statement:
        resource_ok = any(wildcard_match(p, resource, False) for p in _as_list(statement["Resource"]))
    else:
        resource_ok = not any(wildcard_match(p, resource, False) for p in _as_list(statement.get("NotResource", [])))
    return action_ok and resource_ok


def allows(documents: Iterable[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether identity policies allow `action` on `resource` (explicit Deny wins; conditions: not evaluated,
    so a conditional Allow does not count and a conditional Deny does not apply)."""
    allowed = False
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if "Condition" in statement or not _statement_matches(statement, action, resource):
                continue
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def policy_statements(template: dict[str, Any], resolver: Resolver) -> list[tuple[str, dict[str, Any]]]:
    """(resource, statement) for every identity-policy statement the template creates, intrinsics evaluated."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, resource in template["Resources"].items():
        if not resolver.exists(name):
            continue
        properties = resource.get("Properties", {})
        documents = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            documents.append(properties["PolicyDocument"])
        for document in documents:
            for statement in _as_list(resolver.resolve(document)["Statement"]):
                found.append((name, statement))
    return found


def managed_policy_arns(template: dict[str, Any], resolver: Resolver) -> list[tuple[str, str]]:
    """(resource, ARN) for every managed policy attached to a role, user or group the template creates."""
    found: list[tuple[str, str]] = []
    for name, resource in template["Resources"].items():
        if not resolver.exists(name):
            continue
        arns = resolver.resolve(resource.get("Properties", {}).get("ManagedPolicyArns", []))
        found.extend((name, str(arn)) for arn in (arns if isinstance(arns, list) else []))
    return found


_SQS_BATCH_OPERATIONS = {"SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"}


def permissions_needed(call: dict[str, Any], region: str = REGION) -> list[tuple[str, str]]:
    """(IAM action, resource ARN) pairs an AWS call recorded by `invoke` needs."""
    service, operation, params = call["service"], call["operation"], call["params"]
    if service == "sqs":
        account, name = str(params["QueueUrl"]).rstrip("/").split("/")[-2:]
        # SendMessageBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch are authorized as the single action.
        action = operation.removesuffix("Batch") if operation in _SQS_BATCH_OPERATIONS else operation
        return [(f"sqs:{action}", f"arn:{PARTITION}:sqs:{region}:{account}:{name}")]
    if service == "dynamodb":
        tables = list(params.get("RequestItems", {}))
        for item in params.get("TransactItems", []):
            tables.extend(operation_spec["TableName"] for operation_spec in item.values())
        if "TableName" in params:
            table = str(params["TableName"])
            tables.append(f"{table}/index/{params['IndexName']}" if "IndexName" in params else table)
        return [(f"dynamodb:{operation}", _table_arn(table, region)) for table in tables]
    if service == "secretsmanager":
        secret = str(params["SecretId"])
        arn = (
            secret
            if secret.startswith("arn:")
            else f"arn:{PARTITION}:secretsmanager:{region}:{ACCOUNT}:secret:{secret}"
        )
        return [(f"secretsmanager:{operation}", arn)]
    if service == "ssm":
        name = str(params["Name"])
        arn = (
            name if name.startswith("arn:") else f"arn:{PARTITION}:ssm:{region}:{ACCOUNT}:parameter/{name.lstrip('/')}"
        )
        return [(f"ssm:{operation}", arn)]
    return [(f"{service}:{operation}", "*")]


def _table_arn(table: str, region: str) -> str:
    return table if table.startswith("arn:") else f"arn:{PARTITION}:dynamodb:{region}:{ACCOUNT}:table/{table}"


# --- stack -----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A created stack: its resources (logical id → type, physical id) and outputs."""

    name: str
    resources: dict[str, tuple[str, str]]
    outputs: dict[str, str]


def create_stack(cloudformation: Any, name: str, template: dict[str, Any], timeout_s: float = 300) -> Stack:
    """Create a stack and wait until it settles; raises with the failed resources' reasons unless CREATE_COMPLETE."""
    cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"])
    give_up = time.monotonic() + timeout_s  # a hang guard only
    while True:
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            break
        if time.monotonic() > give_up:
            raise TimeoutError(f"stack {name} still {stack['StackStatus']} after {timeout_s} s")
        time.sleep(0.2)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
        failed = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if "FAILED" in e["ResourceStatus"]
        ]
        raise RuntimeError(f"stack {name} is {stack['StackStatus']}: {stack.get('StackStatusReason')} {failed}")
    summaries = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    resources = {s["LogicalResourceId"]: (s["ResourceType"], s.get("PhysicalResourceId", "")) for s in summaries}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return Stack(name, resources, outputs)


def generated_secret_string(secrets: Any, spec: dict[str, Any]) -> str:
    """A secret value as CloudFormation makes it from GenerateSecretString (Secrets Manager's own generator)."""
    options = {
        "PasswordLength",
        "ExcludeCharacters",
        "ExcludeNumbers",
        "ExcludePunctuation",
        "ExcludeUppercase",
        "ExcludeLowercase",
        "IncludeSpace",
        "RequireEachIncludedType",
    }
    unknown = set(spec) - options - {"SecretStringTemplate", "GenerateStringKey"}
    if unknown:
        raise ValueError(f"GenerateSecretString options this stand-in does not know: {sorted(unknown)}")
    password = secrets.get_random_password(**{key: value for key, value in spec.items() if key in options})
    generated = str(password["RandomPassword"])
    if "SecretStringTemplate" not in spec:
        return generated
    value = json.loads(spec["SecretStringTemplate"])
    value[spec["GenerateStringKey"]] = generated
    return json.dumps(value)


# --- running the built code ------------------------------------------------------------------------------

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no script directory): Lambda's search order
# /var/task, the layers under /opt, then the interpreter's own packages in place of the runtime's (boto3).
_BOOTSTRAP = r"""
import importlib, json, sys, time, uuid
request = json.load(open(sys.argv[1]))
sys.path[:0] = request["path"]
import botocore.client
calls = []
_original = botocore.client.BaseClient._make_api_call
def _recorded(self, operation, params):
    calls.append({"service": self.meta.service_model.endpoint_prefix, "operation": operation,
                  "params": json.loads(json.dumps(params, default=repr))})
    return _original(self, operation, params)
botocore.client.BaseClient._make_api_call = _recorded
class Context:
    def __init__(self, spec):
        self.function_name = spec["FunctionName"]
        self.function_version = "$LATEST"
        self.invoked_function_arn = spec["FunctionArn"]
        self.memory_limit_in_mb = spec["MemorySize"]
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = spec["LogGroup"]
        self.log_stream_name = "deploy-check"
        self._deadline = time.monotonic() + spec["Timeout"]
    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.monotonic()) * 1000)
module_name, _, function_name = request["handler"].rpartition(".")
handler = getattr(importlib.import_module(module_name), function_name)
answer = handler(request["event"], Context(request["context"]))
origins = {name: getattr(sys.modules.get(name), "__file__", None) for name in request["report_modules"]}
with open(sys.argv[2], "w") as out:
    json.dump({"answer": answer, "calls": calls, "origins": origins}, out, default=repr)
"""


@dataclass
class Deployment:
    """A function's unpacked code: its task root and the /opt of its layers (in the function's layer order)."""

    task: Path
    opt: Path

    def search_path(self) -> list[str]:
        """sys.path entries Lambda puts before the runtime's own: /var/task, then the layers' python dirs."""
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        entries = [self.task, self.opt / "python" / "lib" / version / "site-packages", self.opt / "python"]
        return [str(entry) for entry in entries if entry.is_dir()]


def unpack(function_zip: bytes, layer_zips: list[bytes], directory: Path) -> Deployment:
    """Extract a function's zip as its task root and its layers' zips, in order, into one /opt."""
    deployment = Deployment(directory / "task", directory / "opt")
    for target, data in [(deployment.task, function_zip)] + [(deployment.opt, layer) for layer in layer_zips]:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(target)
    return deployment


def unzipped_size(data: bytes) -> int:
    """Bytes a zip takes once extracted."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sum(info.file_size for info in archive.infolist())


@dataclass
class Invocation:
    """What a handler answered, the AWS calls its code made, and where named modules were imported from."""

    answer: Any
    calls: list[dict[str, Any]]
    origins: dict[str, str | None]


def invoke(
    deployment: Deployment,
    configuration: dict[str, Any],
    env: dict[str, str],
    event: dict[str, Any],
    log_group: str,
    report_modules: tuple[str, ...] = ("audience_sync", "aws_lambda_powertools", "requests"),
    timeout_s: float | None = None,
) -> Invocation:
    """Call a deployed function's handler once, cold, with exactly `env` (plus what Lambda itself sets)."""
    lambda_env = {
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummy credentials
        "AWS_LAMBDA_FUNCTION_NAME": configuration["FunctionName"],
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(configuration["MemorySize"]),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "LAMBDA_TASK_ROOT": str(deployment.task),
        "_HANDLER": configuration["Handler"],
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        # No developer's ~/.aws settings leak in.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    context = {
        "FunctionName": configuration["FunctionName"],
        "FunctionArn": configuration["FunctionArn"],
        "MemorySize": configuration["MemorySize"],
        "Timeout": configuration["Timeout"],
        "LogGroup": log_group,
    }
    request = {
        "path": deployment.search_path(),
        "handler": configuration["Handler"],
        "event": event,
        "context": context,
        "report_modules": list(report_modules),
    }
    with tempfile.TemporaryDirectory() as scratch:
        request_path, answer_path = Path(scratch) / "request.json", Path(scratch) / "answer.json"
        request_path.write_text(json.dumps(request))
        result = subprocess.run(
            [sys.executable, "-I", "-c", _BOOTSTRAP, str(request_path), str(answer_path)],
            cwd=deployment.task,
            env={**env, **lambda_env},
            capture_output=True,
            text=True,
            # A hang guard: the function's own timeout plus a generous allowance for a cold interpreter.
            timeout=timeout_s or configuration["Timeout"] + 120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{configuration['FunctionName']} failed:\n{result.stderr[-4000:]}")
        report = json.loads(answer_path.read_text())
    return Invocation(report["answer"], report["calls"], report["origins"])
