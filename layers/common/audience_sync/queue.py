"""Write packed record messages to SQS with SendMessageBatch, retrying partial failures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.errors import DependencyUnavailable

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
SEND_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.05


def number_attribute(name: str, value: float) -> dict[str, Any]:
    """A message attribute holding a number (SendMessage's form), to the millisecond."""
    return {name: {"DataType": "Number", "StringValue": f"{value:.3f}"}}


def number_of(record: dict[str, Any], name: str) -> float | None:
    """The number attribute `name` of an SQS record in the event source mapping's form (None: absent or not a
    number)."""
    value = record.get("messageAttributes", {}).get(name, {}).get("stringValue")
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return None


def batches_of(bodies: list[str]) -> Iterator[list[str]]:
    """Group bodies into SendMessageBatch calls: ≤10 entries and ≤256 KiB each."""
    batch: list[str] = []
    size = 0
    for body in bodies:
        length = len(body.encode())
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += length
    if batch:
        yield batch


class QueueWriter:
    """Sends message bodies to one queue; raises DependencyUnavailable if any can't be written."""

    def __init__(self, sqs: SQSClient, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    def send(self, bodies: list[str], attributes: dict[str, Any] | None = None, delay_seconds: int = 0) -> int:
        """Send all bodies (each delivered `delay_seconds` later); returns the number of SendMessageBatch calls
        made."""
        calls = 0
        for batch in batches_of(bodies):
            pending = {str(i): body for i, body in enumerate(batch)}
            for attempt in range(SEND_ATTEMPTS):
                if attempt:
                    time.sleep(RETRY_BASE_SECONDS * 2**attempt)
                entries: list[Any] = [
                    {
                        "Id": key,
                        "MessageBody": body,
                        **({"MessageAttributes": attributes} if attributes else {}),
                        **({"DelaySeconds": delay_seconds} if delay_seconds else {}),
                    }
                    for key, body in pending.items()
                ]
                calls += 1
                try:
                    response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
                except (BotoCoreError, ClientError) as error:
                    raise DependencyUnavailable(f"SQS SendMessageBatch failed: {type(error).__name__}") from None
                failed = response.get("Failed", [])
                if any(f.get("SenderFault") for f in failed):
                    codes = sorted({f.get("Code", "?") for f in failed})
                    raise DependencyUnavailable(f"SQS rejected messages: {codes}")
                pending = {f["Id"]: pending[f["Id"]] for f in failed}
                if not pending:
                    break
            if pending:
                raise DependencyUnavailable(f"SQS kept failing {len(pending)} messages after {SEND_ATTEMPTS} attempts")
        return calls
