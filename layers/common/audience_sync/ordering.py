"""Cross-batch ordering: the last applied version per (audience, identifier), and a lease per audience.

SQS and Segment both deliver late and twice. Before a change is sent to Criteo, the version last
applied to the same user and audience is read; older changes are dropped. A short lease per
audience keeps two sync invocations from interleaving PATCHes for the same audience. See
docs/design.md for why this beats SQS FIFO and what it costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.errors import DependencyUnavailable
from audience_sync.records import AudienceChange

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_KEYS = 100
BATCH_WRITE_ITEMS = 25
# Versions outlive SQS's longest retention (14 days), so any redelivery still finds them.
VERSION_TTL_SECONDS = 15 * 24 * 3600
LOCK_POLL_SECONDS = 0.25
UNPROCESSED_ATTEMPTS = 8
# Batch calls run in parallel: 100k records are 1,000 reads and 4,000 writes, too slow one after another.
PARALLEL_CALLS = 16


def state_key(change: AudienceChange) -> str:
    """The table key of a user in an audience: a hash, so no identifier is stored in clear."""
    raw = f"{change.audience_key}\x1f{change.identifier_type}\x1f{change.identifier}"
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


class OrderingStore:
    """DynamoDB table `pk` (S) → `v` (version) plus `ttl`; lease items are `lock#<audience>`."""

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, lock_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.lock_seconds = lock_seconds
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_CALLS, thread_name_prefix="ordering")

    def acquire(self, audience_key: str, wait_seconds: float) -> bool:
        """Take the audience's lease, waiting up to `wait_seconds` for another holder to finish."""
        give_up = self.clock() + wait_seconds
        while True:
            now = self.clock()
            try:
                self.dynamodb.put_item(
                    TableName=self.table,
                    Item={
                        "pk": {"S": f"lock#{audience_key}"},
                        "owner": {"S": self.owner},
                        "expires": {"N": str(int(now + self.lock_seconds))},
                        "ttl": {"N": str(int(now + self.lock_seconds + 3600))},
                    },
                    ConditionExpression="attribute_not_exists(pk) OR #o = :me OR expires < :now",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": self.owner}, ":now": {"N": str(int(now))}},
                )
                return True
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise DependencyUnavailable(f"DynamoDB PutItem failed: {error.response['Error']['Code']}") from None
            except BotoCoreError as error:
                raise DependencyUnavailable(f"DynamoDB unreachable: {type(error).__name__}") from None
            if self.clock() + LOCK_POLL_SECONDS > give_up:
                return False
            time.sleep(LOCK_POLL_SECONDS)

    def release(self, audience_key: str) -> None:
        """Give the lease back (only if still ours); an expired lease needs no release."""
        with contextlib.suppress(ClientError, BotoCoreError):  # the lease expires on its own anyway
            self.dynamodb.delete_item(
                TableName=self.table,
                Key={"pk": {"S": f"lock#{audience_key}"}},
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}},
            )

    def versions(self, keys: Iterable[str]) -> dict[str, str]:
        """Last applied version per key (strongly consistent); absent keys were never applied."""
        key_list = list(keys)
        requests = [
            {
                self.table: {
                    "Keys": [{"pk": {"S": k}} for k in key_list[start : start + BATCH_GET_KEYS]],
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, v",
                }
            }
            for start in range(0, len(key_list), BATCH_GET_KEYS)
        ]
        found: dict[str, str] = {}
        for responses in self._pool.map(partial(self._until_processed, "BatchGetItem", "UnprocessedKeys"), requests):
            for response in responses:
                for item in response.get("Responses", {}).get(self.table, []):
                    found[item["pk"]["S"]] = item["v"]["S"]
        return found

    def save(self, versions: dict[str, str]) -> None:
        """Record the versions just applied."""
        expires = str(int(self.clock()) + VERSION_TTL_SECONDS)
        puts = [
            {"PutRequest": {"Item": {"pk": {"S": k}, "v": {"S": v}, "ttl": {"N": expires}}}}
            for k, v in versions.items()
        ]
        requests = [
            {self.table: puts[start : start + BATCH_WRITE_ITEMS]} for start in range(0, len(puts), BATCH_WRITE_ITEMS)
        ]
        list(self._pool.map(partial(self._until_processed, "BatchWriteItem", "UnprocessedItems"), requests))

    def _until_processed(self, operation: str, unprocessed: str, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Call a batch operation, re-sending what DynamoDB left unprocessed with backoff; all responses."""
        call = self.dynamodb.batch_get_item if operation == "BatchGetItem" else self.dynamodb.batch_write_item
        responses = []
        for attempt in range(UNPROCESSED_ATTEMPTS):
            response = self._dynamo(operation, partial(call, RequestItems=request))
            responses.append(response)
            request = response.get(unprocessed) or {}
            if not request:
                return responses
            time.sleep(0.05 * 2**attempt)
        raise DependencyUnavailable(f"DynamoDB kept throttling {operation}")

    @staticmethod
    def _dynamo(operation: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            raise DependencyUnavailable(f"DynamoDB {operation} failed: {type(error).__name__}") from None
