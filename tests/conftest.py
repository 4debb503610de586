"""Real servers on loopback for the tests: one moto server, one Criteo emulator, fresh resources per test."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devtools.criteo_emulator import CriteoEmulator
from devtools.lambda_runtime import FakeContext, load_function
from devtools.local_aws import DEV_CRITEO, DEV_WEBHOOK_SECRET, LocalAws, MotoServer, provision
from devtools.poller import SqsPoller, queue_backlog

ROOT = Path(__file__).resolve().parent.parent


def run_bounded(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own process group, all of which is killed on a timeout (moto runs as a child)."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


_prefixes = itertools.count()
AUDIENCE_PREFIX = "segment_"  # the template's default AudienceNamePrefix


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[CriteoEmulator]:
    emulator = CriteoEmulator(
        client_id=DEV_CRITEO["client_id"],
        client_secret=DEV_CRITEO["client_secret"],
        advertiser_id=DEV_CRITEO["advertiser_id"],
    )
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def criteo(emulator_server: CriteoEmulator) -> Iterator[CriteoEmulator]:
    emulator_server.reset()
    yield emulator_server
    assert emulator_server.spec_violations == [], "our client sent a request the official spec rejects"


@dataclass
class Stack:
    """Provisioned local resources plus the two real handlers loaded against them."""

    aws: LocalAws
    criteo: CriteoEmulator
    ingest: ModuleType
    sync: ModuleType

    def queued_bodies(self, queue_url: str | None = None) -> list[dict[str, Any]]:
        """Receive (and delete) every message of a queue; returns the decoded bodies with attributes."""
        return [{**m, "body": json.loads(m["body"])} for m in self.queued_bodies_raw(queue_url)]

    def queued_bodies_raw(self, queue_url: str | None = None) -> list[dict[str, Any]]:
        """Receive (and delete) every message of a queue; bodies as sent, with attributes."""
        sqs, url, found = self.aws.client("sqs"), queue_url or self.aws.queue_url, []
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
            "Messages", []
        ):
            for message in messages:
                found.append({"body": message["Body"], "attributes": message.get("MessageAttributes", {})})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found

    def members(self, audience: str, id_type: str = "email") -> set[str]:
        """The identifiers of one type in the Criteo segment of a Segment audience (empty when there is none)."""
        segment = self.criteo.segments().get(AUDIENCE_PREFIX + audience)
        return set(segment["members"].get(id_type, set())) if segment else set()

    def queue_length(self, queue_url: str) -> int:
        """Messages visible or in flight in a queue."""
        return queue_backlog(self.aws.client("sqs"), queue_url)

    def poller(self, **kwargs: Any) -> SqsPoller:
        """An event source mapping stand-in feeding the sync handler."""
        options: dict[str, Any] = {"window_seconds": 0.2, "retry_delay_seconds": 0}
        options.update(kwargs)
        return SqsPoller(self.aws.client("sqs"), self.aws.queue_url, self.sync.handler, **options)

    def invoke_ingest(self, event: dict[str, Any]) -> dict[str, Any]:
        """Call the ingest handler like API Gateway does."""
        result: dict[str, Any] = self.ingest.handler(event, FakeContext(timeout_seconds=15))
        return result


def make_stack(moto_server: MotoServer, criteo: CriteoEmulator, **options: Any) -> Stack:
    """Fresh queues/secrets/table (unique names) and freshly imported handlers (a cold start)."""
    env_overrides = options.pop("env", {})
    aws = provision(moto_server.endpoint, prefix=f"t{next(_prefixes)}", **options)
    env = aws.function_env(criteo.url, **env_overrides)
    return Stack(aws, criteo, load_function("ingest", env), load_function("sync", env))


@pytest.fixture
def stack(moto_server: MotoServer, criteo: CriteoEmulator) -> Stack:
    return make_stack(moto_server, criteo, max_receive_count=3)


@pytest.fixture
def webhook_secret() -> str:
    return DEV_WEBHOOK_SECRET
