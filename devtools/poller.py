"""Feed the sync handler from SQS the way Lambda's event source mapping does.

Batches up to `batch_size` messages within `window_seconds`, deletes what the handler did not
report in `batchItemFailures`, and leaves failures to come back (moto's redrive policy moves a
message to the DLQ after maxReceiveCount receives, like SQS).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devtools.lambda_runtime import FakeContext

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def queue_backlog(sqs: Any, queue_url: str) -> int:
    """Messages visible or in flight in a queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@dataclass(frozen=True)
class BatchReport:
    """One sync invocation: messages handed over, how many failed (to come back), crashed or not, wall time."""

    messages: int
    failed: int
    crashed: bool
    seconds: float


@dataclass
class PollStats:
    """What the poller did."""

    invocations: int = 0
    messages: int = 0
    failed: int = 0
    crashed: int = 0


def outbox_waiting(dynamodb: Any, table: str) -> int:
    """Audiences with changes waiting in the outbox, and groups with changes waiting in the inbox."""
    from audience_sync.inbox import Inbox  # the layer is on sys.path once a function is loaded
    from audience_sync.outbox import Outbox

    groups = [g for g in Inbox(dynamodb, table, lock_seconds=0).waiting() if g.first is not None]
    return len(Outbox(dynamodb, table).waiting()) + len(groups)


# What EventBridge Scheduler's minute schedule sends (the handler only checks that it is not an SQS batch).
SCHEDULED_EVENT: dict[str, Any] = {"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}}


class SqsPoller:
    """A local stand-in for the SQS → Lambda event source mapping."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        batch_size: int = 1000,
        window_seconds: float = 0.5,
        retry_delay_seconds: int = 1,
        function_timeout_seconds: float = 60.0,
        on_batch: Callable[[BatchReport], None] | None = None,
        context: Callable[[], FakeContext] | None = None,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.retry_delay_seconds = retry_delay_seconds
        self.function_timeout_seconds = function_timeout_seconds
        self.stats = PollStats()
        self.on_batch = on_batch  # told about every invocation, after its deletes and retries are settled
        self.context = context or (lambda: FakeContext(timeout_seconds=self.function_timeout_seconds))
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

    def _gather(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.window_seconds
        while len(messages) < self.batch_size:
            received = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(received)
            if not received:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        return messages

    def _event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": esm_attributes(m.get("MessageAttributes", {})),
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }

    def poll_once(self) -> int:
        """One batch through the handler; returns how many messages it held."""
        messages = self._gather()
        if not messages:
            return 0
        self.stats.invocations += 1
        self.stats.messages += len(messages)
        started, crashed = time.monotonic(), False
        try:
            result = self.handler(self._event(messages), self.context())
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
        except Exception:  # a crashed invocation fails the whole batch, as in Lambda
            self.stats.crashed += 1
            failed, crashed = {m["MessageId"] for m in messages}, True
        seconds = time.monotonic() - started
        self.stats.failed += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start : start + 10])
                ],
            )
        retry = [m for m in messages if m["MessageId"] in failed]
        for start in range(0, len(retry), 10):
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": self.retry_delay_seconds}
                    for i, m in enumerate(retry[start : start + 10])
                ],
            )
        if self.on_batch is not None:
            self.on_batch(BatchReport(len(messages), len(failed), crashed, seconds))
        return len(messages)

    def backlog(self) -> int:
        """Messages visible or in flight in the queue."""
        return queue_backlog(self.sqs, self.queue_url)

    def scheduled(self) -> int | None:
        """Invoke the handler as the minute schedule does; returns the audiences still waiting in the outbox, the
        groups waiting in the inbox, and the audiences waiting for their members to be carried over to another
        advertiser (None when the invocation did not flush:
        another held the flusher lease, or it crashed)."""
        try:
            result = self.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=self.function_timeout_seconds))
        except Exception:  # as in Lambda: logged, and the next schedule tries again
            traceback.print_exc()
            self.stats.crashed += 1
            return None
        waiting = (result or {}).get("outbox_audiences")
        if waiting is None:
            return None
        return int(waiting) + int(result.get("inbox_groups", 0)) + int(result.get("moves_pending", 0))

    def drain(self, max_seconds: float = 120.0) -> None:
        """Poll until the queue is empty (retries included) and the outbox is flushed, or time runs out."""
        give_up = time.monotonic() + max_seconds
        while time.monotonic() < give_up:
            if self.poll_once() == 0 and self.backlog() == 0:
                if self.scheduled() == 0:
                    return
                time.sleep(0.05)
        raise TimeoutError(f"queue not drained after {max_seconds}s ({self.backlog()} messages left)")

    def run(self, stop: threading.Event, schedule_seconds: float = 5.0) -> None:
        """Poll until `stop` is set (for the long-running local stack), with a scheduled flush now and then."""
        next_schedule = time.monotonic() + schedule_seconds
        while not stop.is_set():
            if time.monotonic() >= next_schedule:
                self.scheduled()
                next_schedule = time.monotonic() + schedule_seconds
            if self.poll_once() == 0:
                stop.wait(0.2)


def esm_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Message attributes as the SQS event source mapping puts them in the Lambda event (camelCase keys), from
    ReceiveMessage's form."""
    return {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
        for name, value in attributes.items()
    }
