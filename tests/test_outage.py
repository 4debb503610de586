"""Outage and recovery on the real servers: Criteo down past maxReceiveCount, redrive, poison, AWS outages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audience_sync.records import AudienceChange, pack_changes
from audience_sync.ticks import TICK_BODY
from devtools.aws_outage import AwsOutageProxy
from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import MotoServer
from tests.conftest import Stack, make_stack
from tests.segment_events import answer, audience_event, sha, signed, user_hash

ROOT = Path(__file__).resolve().parent.parent


def dead_letters(stack: Stack) -> Iterator[tuple[str, str]]:
    """(reason up to its first colon, body) of every DLQ message, removed from the DLQ."""
    sqs = stack.aws.client("sqs")
    url = stack.aws.dead_letter_queue_url
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get(
        "Messages", []
    ):
        for message in messages:
            yield message["MessageAttributes"]["reason"]["StringValue"].split(":")[0], message["Body"]
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_a_long_criteo_outage_keeps_every_change_in_the_outbox_until_criteo_is_back(
    moto_server: MotoServer, criteo: CriteoEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(moto_server, criteo, max_receive_count=2)
    events = [audience_event(f"in{i}", f"aud{i % 2}", True, email=f"user{i}@example.com") for i in range(40)]
    events += [audience_event("out3", "aud1", False, email="user3@example.com", timestamp="2026-11-20T11:00:00Z")]
    assert answer(stack.invoke_ingest(signed(events)))[0] == 200
    criteo.faults.down = True
    poller = stack.poller(function_timeout_seconds=6)
    poller.poll_once()
    for _ in range(3):  # the minute schedule, while Criteo stays down
        assert poller.scheduled() == 2
    time.sleep(1.2)  # the flush tick's delay
    # Nothing bounces through SQS: the queue holds one flush tick (at most one is pending), no change.
    assert [m["body"] for m in stack.queued_bodies_raw()] == [TICK_BODY]
    assert stack.queue_length(stack.aws.dead_letter_queue_url) == 0  # nor ends parked
    assert criteo.segments() == {}
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.getMessage().startswith("Criteo call failed")]
    assert reasons and all("Criteo unavailable (HTTP 503)" in reason for reason in reasons)  # the why, in the logs

    criteo.faults.down = False
    # Back: the next scheduled passes send everything (one on an idle machine; a 6 s function on a loaded one
    # may need a second: its search and creates come first).
    assert any(poller.scheduled() == 0 for _ in range(3))
    assert stack.members("aud0") == {sha(f"user{i}@example.com") for i in range(0, 40, 2)}
    assert stack.members("aud1") == {sha(f"user{i}@example.com") for i in range(1, 40, 2)} - {sha("user3@example.com")}


def test_redrive_command_line_moves_messages_back(moto_server: MotoServer, criteo: CriteoEmulator) -> None:
    stack = make_stack(moto_server, criteo)
    stack.aws.client("sqs").send_message(QueueUrl=stack.aws.dead_letter_queue_url, MessageBody='{"v":2,"r":[]}')
    command = [sys.executable, "-m", "devtools.redrive", "--endpoint", moto_server.endpoint]
    command += ["--dlq-url", stack.aws.dead_letter_queue_url, "--queue-url", stack.aws.queue_url]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "moved 1 message(s)" in done.stdout
    assert [m["body"] for m in stack.queued_bodies()] == [{"v": 2, "r": []}]


def test_poison_records_are_reported_and_do_not_block_other_audiences(
    stack: Stack, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    good = [
        AudienceChange(
            f"aud{i % 3}", "", "add", user_hash(f"u{i}"), 1000 + i, f"m{i}", {"email": [sha(f"u{i}@example.com")]}
        )
        for i in range(30)
    ]
    # A record type Criteo's spec refuses (400 validation), packed in the same message as good records.
    poison = AudienceChange("aud0", "", "add", user_hash("poison"), 5000, "bad1", {"notAType": ["whatever"]})
    sqs = stack.aws.client("sqs")
    for body in pack_changes([*good[:15], poison, *good[15:]]):
        sqs.send_message(QueueUrl=stack.aws.queue_url, MessageBody=body)
    sqs.send_message(QueueUrl=stack.aws.queue_url, MessageBody='{"v": 2, "r": [["truncated')
    stack.poller().drain()
    provoked, stack.criteo.spec_violations[:] = list(stack.criteo.spec_violations), []
    assert len(provoked) == 1 and "'notAType' is not one of" in provoked[0]  # the refusal we provoked on purpose
    for audience in ("aud0", "aud1", "aud2"):
        assert stack.members(audience) == {sha(f"u{i}@example.com") for i in range(30) if f"aud{i % 3}" == audience}
    parked = dict(dead_letters(stack))
    assert sorted(parked) == ["Criteo answered 400 invalid-request", "undecodable message"]
    refused = json.loads(parked["Criteo answered 400 invalid-request"])["p"]
    assert refused == ["aud0", "", "add", "notAType", ["whatever"]]  # only its PATCH, not its neighbours
    assert "records sent to the dead-letter queue" in capsys.readouterr().out + caplog.text


@pytest.fixture
def outage_proxy(moto_server: MotoServer) -> Iterator[AwsOutageProxy]:
    proxy = AwsOutageProxy(moto_server.endpoint)
    proxy.start()
    yield proxy
    proxy.stop()


def proxied_stack(moto_server: MotoServer, criteo: CriteoEmulator, proxy: AwsOutageProxy) -> Stack:
    # Botocore's own retries would only slow the test down: one retry, like a short Lambda budget.
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}
    return make_stack(moto_server, criteo, env=env)


@pytest.mark.parametrize("service", ["secretsmanager", "sqs"])
def test_ingest_answers_503_while_a_dependency_is_down_and_segments_retry_is_accepted(
    moto_server: MotoServer, criteo: CriteoEmulator, outage_proxy: AwsOutageProxy, service: str
) -> None:
    stack = proxied_stack(moto_server, criteo, outage_proxy)
    request = signed([audience_event(f"m{i}", "aud", True, email=f"u{i}@example.com") for i in range(50)])
    outage_proxy.down = {service}
    status, body = answer(stack.invoke_ingest(request))
    assert (status, body["error"]["code"]) == (503, "service_unavailable")
    assert outage_proxy.refused[service] >= 1
    assert stack.queued_bodies() == []
    outage_proxy.down = set()
    status, body = answer(stack.invoke_ingest(request))  # Segment retries the same request
    assert (status, body["accepted"]) == (200, 50)
    rows = [row for message in stack.queued_bodies() for row in message["body"]["r"]]
    assert sorted(row[6]["email"][0] for row in rows) == sorted(sha(f"u{i}@example.com") for i in range(50))


def test_sqs_failing_midway_through_a_request_loses_nothing(
    moto_server: MotoServer, criteo: CriteoEmulator, outage_proxy: AwsOutageProxy
) -> None:
    stack = proxied_stack(moto_server, criteo, outage_proxy)
    events = [audience_event(f"m{i}", f"aud{i % 2}", i % 5 != 0, email=f"u{i}@example.com") for i in range(4000)]
    request = signed(events)
    assert answer(stack.invoke_ingest(signed(audience_event("warm", "aud0", True))))[0] == 200  # secret cached
    outage_proxy.allowed = {"sqs": 1}  # the first SendMessageBatch goes through, then SQS is down
    status, body = answer(stack.invoke_ingest(request))
    assert (status, body["error"]["code"]) == (503, "service_unavailable")
    assert stack.queue_length(stack.aws.queue_url) > 1, "part of the request was written before SQS went down"
    outage_proxy.down = set()
    assert answer(stack.invoke_ingest(request))[0] == 200
    stack.poller().drain()
    for audience in ("aud0", "aud1"):
        expected = {sha(f"u{i}@example.com") for i in range(4000) if f"aud{i % 2}" == audience and i % 5 != 0}
        if audience == "aud0":
            expected.add(sha("jane.doe@example.com"))
        assert stack.members(audience) == expected


def test_a_hung_dependency_ends_in_a_json_503_not_a_lambda_timeout(
    moto_server: MotoServer, criteo: CriteoEmulator, outage_proxy: AwsOutageProxy
) -> None:
    stack = make_stack(moto_server, criteo, env={"AWS_ENDPOINT_URL": outage_proxy.url})
    assert answer(stack.invoke_ingest(signed(audience_event("warm", "aud0", True))))[0] == 200  # secret cached
    outage_proxy.hung = {"sqs"}  # SQS accepts the connection and never answers
    started = time.monotonic()
    status, body = answer(stack.invoke_ingest(signed(audience_event("m1", "aud0", True))))
    waited = time.monotonic() - started
    outage_proxy.release()
    assert (status, body["error"]["code"]) == (503, "service_unavailable")
    # botocore's default 60 s read timeout would outlast the function's 15 s: ours gives up well inside it.
    assert waited < 15, f"the ingest function would have timed out ({waited:.1f} s)"
