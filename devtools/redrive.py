"""`make redrive`: move the dead-letter queue's messages back to the audience-changes queue.

python -m devtools.redrive                                  the local stack (`make serve`, moto on :4566)
python -m devtools.redrive --endpoint URL --dlq-url U --queue-url U [--method auto|move-task|manual]

`move-task` is SQS StartMessageMoveTask, what the README documents for AWS (`aws sqs
start-message-move-task`). moto 5.2 does not implement it (it answers 500), so `auto` falls back to
`manual`: receive from the DLQ, send the same body to the source queue, then delete from the DLQ
(at-least-once: a crash in between re-sends a message, which the sync function applies harmlessly).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from devtools.local_aws import REGION

LOCAL_ENDPOINT = "http://127.0.0.1:4566"
LOCAL_QUEUE = f"{LOCAL_ENDPOINT}/123456789012/local-audience-changes"
LOCAL_DLQ = f"{LOCAL_QUEUE}-dlq"
# What an endpoint without the API answers: moto (500), LocalStack-style and AWS-style unknown actions.
NOT_IMPLEMENTED = {"500", "InvalidAction", "NotImplemented", "UnknownOperationException", "InternalFailure"}


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
            result.reasons[reason or "max receives reached"] += 1
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


def sqs_client(endpoint: str | None) -> Any:
    """An SQS client (one attempt per call: an unimplemented API must not be retried 5 times)."""
    config = Config(retries={"max_attempts": 1, "mode": "standard"})
    if not endpoint:
        return boto3.client("sqs", config=config)
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        config=config,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, redrive, print what happened."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=LOCAL_ENDPOINT, help="SQS endpoint ('' = AWS)")
    parser.add_argument("--dlq-url", default=LOCAL_DLQ)
    parser.add_argument("--queue-url", default=LOCAL_QUEUE)
    parser.add_argument("--method", choices=("auto", "move-task", "manual"), default="auto")
    args = parser.parse_args(argv)
    result = redrive(sqs_client(args.endpoint or None), args.dlq_url, args.queue_url, args.method)
    if result.method == "move-task":
        print(f"StartMessageMoveTask started: {result.task_handle} (aws sqs list-message-move-tasks shows progress)")
    else:
        print(f"moved {result.moved} message(s) from the DLQ back to {args.queue_url}")
        for reason, count in result.reasons.most_common():
            print(f"  {count} x {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
