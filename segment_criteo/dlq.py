"""`dlq`: what the dead-letter queue holds and why; moving it back once the cause is fixed.

On AWS the move is SQS StartMessageMoveTask (the messages go back to the queue they came from). moto does
not implement it (it answers 500), so `auto` falls back to moving them by hand: receive from the DLQ, send
the same body to the source queue, then delete from the DLQ (at-least-once: a crash in between re-sends a
message, which the sync function applies harmlessly).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:  # (no import of the shared package: devtools use this module before the handlers load)
    from segment_criteo.target import Target

# What an endpoint without the API answers: moto (500), LocalStack-style and AWS-style unknown actions.
NOT_IMPLEMENTED = {"500", "InvalidAction", "NotImplemented", "UnknownOperationException", "InternalFailure"}
UNKNOWN_REASON = "max receives reached"  # parked by SQS's redrive policy, not by the function
PEEK_LIMIT = 1000  # messages read to tell the reasons (the total is SQS's count)


@dataclass
class RedriveResult:
    """How the messages were moved, how many, and the DLQ reasons they carried (manual moves only)."""

    method: str
    moved: int = 0
    task_handle: str = ""
    reasons: Counter[str] = field(default_factory=Counter)


def queue_arn(sqs: Any, url: str) -> str:
    """The ARN of a queue URL."""
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def start_move_task(sqs: Any, dlq_url: str, queue_url: str) -> str:
    """SQS StartMessageMoveTask from the DLQ back to its source queue; the task handle."""
    response = sqs.start_message_move_task(SourceArn=queue_arn(sqs, dlq_url), DestinationArn=queue_arn(sqs, queue_url))
    return str(response["TaskHandle"])


def move_manually(sqs: Any, dlq_url: str, queue_url: str, result: RedriveResult) -> None:
    """Receive → send to the source queue → delete, 10 at a time, until the DLQ answers empty."""
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            return
        entries = [{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
        sent = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        done = {entry["Id"] for entry in sent.get("Successful", [])}
        if len(done) < len(messages):
            raise RuntimeError(f"SQS refused {len(messages) - len(done)} message(s): {sent.get('Failed')}")
        sqs.delete_message_batch(
            QueueUrl=dlq_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        for message in messages:
            reason = (message.get("MessageAttributes") or {}).get("reason", {}).get("StringValue")
            result.reasons[reason or UNKNOWN_REASON] += 1
        result.moved += len(messages)


def redrive(sqs: Any, dlq_url: str, queue_url: str, method: str = "auto") -> RedriveResult:
    """Move the DLQ's messages back: StartMessageMoveTask, or by hand where the endpoint lacks it."""
    if method in ("auto", "move-task"):
        try:
            return RedriveResult("move-task", task_handle=start_move_task(sqs, dlq_url, queue_url))
        except ClientError as error:
            if method == "move-task" or error.response["Error"]["Code"] not in NOT_IMPLEMENTED:
                raise
    result = RedriveResult("manual")
    move_manually(sqs, dlq_url, queue_url, result)
    return result


def peek(sqs: Any, dlq_url: str, limit: int = PEEK_LIMIT) -> Counter[str]:
    """The reasons of up to `limit` parked messages, each made visible again at once (left in place)."""
    reasons: Counter[str] = Counter()
    seen: set[str] = set()
    handles = []
    while len(seen) < limit:
        messages = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["reason"], VisibilityTimeout=30
        ).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen.add(message["MessageId"])
            handles.append(message["ReceiptHandle"])
            reason = (message.get("MessageAttributes") or {}).get("reason", {}).get("StringValue")
            reasons[reason or UNKNOWN_REASON] += 1
    for start in range(0, len(handles), 10):
        batch = handles[start : start + 10]
        entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(batch)]
        sqs.change_message_visibility_batch(QueueUrl=dlq_url, Entries=entries)
    return reasons


def parked_reasons(target: Target) -> dict[str, Any]:
    """The DLQ's message count (SQS's) and the reasons of up to PEEK_LIMIT of them."""
    sqs = target.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=target.dead_letter_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    reasons = peek(sqs, target.dead_letter_queue_url)
    return {
        "dead_letters": int(attributes["ApproximateNumberOfMessages"]),
        "dead_letter_reasons": dict(reasons.most_common()),
    }


def redrive_target(target: Target, method: str = "auto") -> RedriveResult:
    """Move a deployment's dead letters back to its queue."""
    return redrive(target.client("sqs", attempts=1), target.dead_letter_queue_url, target.queue_url, method)
