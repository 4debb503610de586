"""moto in server mode on loopback, provisioned like template.yaml (queues, DLQ, secrets, table)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from devtools.template import powertools_env

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
DEV_WEBHOOK_SECRET = "local-dev-webhook-secret"
DEV_CRITEO = {"client_id": "local-dev-client", "client_secret": "local-dev-client-secret", "advertiser_id": "12345"}
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_client(endpoint: str, service: str) -> Any:
    """A boto3 client for one service of a local moto server (dummy credentials, the local region)."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class LocalAws:
    """Addresses of the provisioned local resources."""

    endpoint: str
    queue_url: str
    dead_letter_queue_url: str
    webhook_secret_arn: str
    criteo_secret_arn: str
    ledger_table: str
    max_receive_count: int = 5
    audience_settings_parameter: str = ""
    advertiser_secret_prefix: str = ""  # another advertiser's secret is named this + its name

    def add_advertiser(self, name: str, credentials: dict[str, str]) -> str:
        """Store the Criteo secret of another advertiser, as a user does before naming it in the settings."""
        secret = json.dumps(credentials)
        return str(
            self.client("secretsmanager").create_secret(Name=self.advertiser_secret_prefix + name, SecretString=secret)[
                "ARN"
            ]
        )

    def client(self, service: str) -> Any:
        """A boto3 client talking to the local moto server."""
        return local_client(self.endpoint, service)

    def function_env(self, criteo_url: str, **overrides: str) -> dict[str, str]:
        """Environment for both handlers, as template.yaml would set it, pointed at loopback."""
        env = {
            **DUMMY_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "QUEUE_URL": self.queue_url,
            "WEBHOOK_SECRET_ARN": self.webhook_secret_arn,
            "CRITEO_SECRET_ARN": self.criteo_secret_arn,
            "LEDGER_TABLE": self.ledger_table,
            "DEPLOYMENT_ID": "local",
            "DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
            "MAX_RECEIVE_COUNT": str(self.max_receive_count),
            "CRITEO_BASE_URL": criteo_url,
            # Locally every batch is flushed to Criteo as soon as it is applied (the template waits 60 s), a
            # flush tick brings the next pass after 1 s (the template's every 5 s), failed audiences are retried
            # at once, and the emulator's budget is generous (the template's is 200 calls a minute;
            # tests/test_flush.py covers it).
            "FLUSH_INTERVAL_SECONDS": "0",
            "FLUSH_POLL_SECONDS": "1",
            "FLUSH_RETRY_SECONDS": "0",
            "CRITEO_CALLS_PER_MINUTE": "60000",
            "AUDIENCE_CONFIG_PARAMETER": self.audience_settings_parameter,
            "AUDIENCE_CONFIG_MAX_AGE_SECONDS": "0",  # a change is used at once (the template: within 60 s)
            "ADVERTISER_SECRET_PREFIX": self.advertiser_secret_prefix,
            **powertools_env(),
        }
        env.update(overrides)
        return env


class MotoServer:
    """moto in server mode in its own process on loopback (own core, no GIL shared with the code under test)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server process and wait until it answers."""
        for key, value in DUMMY_CREDENTIALS.items():
            os.environ.setdefault(key, value)
        command = [sys.executable, "-m", "devtools.local_aws", "--port", str(self.port)]
        self._process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server process."""
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def query_one_partition() -> None:
    """Make moto's DynamoDB Query read one partition, as DynamoDB does.

    moto walks and sorts the whole table for every Query on the table's own key (measured: a 100k-event
    chaos soak with consent stalled on one batch for minutes, one Query per consent change); the ledger
    looks up a user's audiences with exactly that Query. Index queries and scans are left as moto has them.
    """
    from moto.dynamodb.models.table import Table

    original = Table.query
    swap = threading.Lock()  # all_items is swapped on the instance for the length of one call

    def query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *args, **kwargs)
        partition = list(self.items.get(hash_key, {}).values())
        with swap:
            self.all_items = lambda: partition  # type: ignore[method-assign]
            try:
                return original(self, hash_key, *args, **kwargs)
            finally:
                del self.all_items

    Table.query = query  # type: ignore[method-assign]


def retention_without_counting() -> None:
    """Make moto's ReceiveMessage check a message's retention without computing every queue attribute.

    For each message it returns, moto reads the queue's retention period through GetQueueAttributes, whose
    message counts walk the whole queue: three walks per message received (py-spy on the 1M-event chaos soak:
    most of the server's time). Reading the period itself gives the same answer.
    """
    from moto.core.utils import unix_time
    from moto.sqs.models import Message, SQSBackend

    def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Message) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period  # type: ignore[attr-defined]
        return bool(retention_period + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


def serve(port: int) -> None:
    """Run moto's threaded server in this process until SIGTERM (werkzeug request logs off: they halve throughput)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    query_one_partition()
    retention_without_counting()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()


def provision(
    endpoint: str,
    prefix: str = "local",
    max_receive_count: int = 5,
    visibility_timeout: int = 30,
    webhook_secret: str | None = DEV_WEBHOOK_SECRET,
    criteo_credentials: dict[str, str] | None = None,
) -> LocalAws:
    """Create the queues, secrets, membership ledger table and audience settings parameter that template.yaml
    declares."""
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    sqs = session.client("sqs", endpoint_url=endpoint)
    secrets = session.client("secretsmanager", endpoint_url=endpoint)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-audience-changes-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"{prefix}-audience-changes",
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}),
        },
    )["QueueUrl"]
    webhook_arn = secrets.create_secret(Name=f"{prefix}-webhook-secret", SecretString=webhook_secret or " ")["ARN"]
    if webhook_secret is None:
        secrets.delete_secret(SecretId=webhook_arn, ForceDeleteWithoutRecovery=True)
    criteo_arn = secrets.create_secret(
        Name=f"{prefix}-criteo-credentials", SecretString=json.dumps(criteo_credentials or DEV_CRITEO)
    )["ARN"]
    table = f"{prefix}-ledger"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    settings = f"/{prefix}/audience-settings"
    session.client("ssm", endpoint_url=endpoint).put_parameter(Name=settings, Value="{}", Type="String")
    return LocalAws(
        endpoint, queue_url, dlq_url, webhook_arn, criteo_arn, table, max_receive_count, settings, f"{prefix}/criteo/"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto server on loopback")
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)
