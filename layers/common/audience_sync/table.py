"""The one DynamoDB table (`pk`, `sk`, `ttl`) behind the ledger, the outbox and the call budget: batched,
parallel reads and writes, conditional writes, leases, and DynamoDB's failures turned into DependencyUnavailable."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.errors import DependencyUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_KEYS = 100
BATCH_WRITE_ITEMS = 25
UNPROCESSED_ATTEMPTS = 8
# Batch calls run in parallel: 100k users are 1,000 reads and 4,000 writes, too slow one after another.
PARALLEL_CALLS = 16
LOCK_POLL_SECONDS = 0.25
LEASE_KEPT_SECONDS = 3600  # an idle lease item is kept an hour, then expires
Item = dict[str, Any]  # DynamoDB's wire format: attribute -> {type: value}


class Table:
    """Typed access to the table; subclasses name what their items mean."""

    def __init__(self, dynamodb: DynamoDBClient, table: str, clock: Callable[[], float] = time.time) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.clock = clock
        self.owner = uuid.uuid4().hex  # whose leases: this instance's (one per Lambda container)
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_CALLS, thread_name_prefix="dynamodb")

    def _get(self, keys: Iterable[tuple[str, str]]) -> list[Item]:
        """Items by (pk, sk), strongly consistent, absent ones left out."""
        key_list = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys]
        requests = [
            {self.table: {"Keys": key_list[start : start + BATCH_GET_KEYS], "ConsistentRead": True}}
            for start in range(0, len(key_list), BATCH_GET_KEYS)
        ]
        found: list[Item] = []
        for responses in self._map(partial(self._until_processed, "BatchGetItem", "UnprocessedKeys"), requests):
            for response in responses:
                found.extend(response.get("Responses", {}).get(self.table, []))
        return found

    def _put(self, items: list[Item]) -> None:
        """Write items (BatchWriteItem, in parallel)."""
        self._write([{"PutRequest": {"Item": item}} for item in items])

    def _delete(self, keys: Iterable[tuple[str, str]]) -> None:
        """Delete items by (pk, sk) (BatchWriteItem, in parallel)."""
        self._write([{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys])

    def _write(self, writes: list[Item]) -> None:
        requests = [
            {self.table: writes[start : start + BATCH_WRITE_ITEMS]}
            for start in range(0, len(writes), BATCH_WRITE_ITEMS)
        ]
        list(self._map(partial(self._until_processed, "BatchWriteItem", "UnprocessedItems"), requests))

    def _map(self, call: Callable[[Item], list[Item]], requests: list[Item]) -> Iterable[list[Item]]:
        """Several batch calls in parallel; one is made in this thread (a handoff costs more than it saves)."""
        if len(requests) <= 1:
            return [call(request) for request in requests]
        return self._pool.map(call, requests)

    def _query(self, pk: str, prefix: str = "", projection: str | None = None, consistent: bool = True) -> list[Item]:
        """Every item of a partition (whose sk starts with `prefix`), all pages."""
        return list(self._items(pk, prefix, projection, consistent))

    def _items(
        self, pk: str, prefix: str = "", projection: str | None = None, consistent: bool = True, after: str = ""
    ) -> Iterator[Item]:
        """The items of a partition in key order (whose sk starts with `prefix`, or sorts after `after`), a page
        read only when the caller gets to it."""
        condition, values = "pk = :p", {":p": {"S": pk}}
        if prefix:
            condition, values[":s"] = "pk = :p AND begins_with(sk, :s)", {"S": prefix}
        elif after:
            condition, values[":gt"] = "pk = :p AND sk > :gt", {"S": after}
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": consistent,
        }
        if projection:
            arguments["ProjectionExpression"] = projection
        while True:
            page = self._dynamo("Query", partial(self.dynamodb.query, **arguments))
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _lease(self, key: tuple[str, str], seconds: int, wait_seconds: float, kept_seconds: int | None) -> int | None:
        """Take the lease on an item (or renew ours) for `seconds`, waiting up to `wait_seconds` for another
        holder; returns its sequence number (one more at every taking), or None. The item expires `kept_seconds`
        after, or (None) not while it is held."""
        taken = self._lease_item(key, seconds, wait_seconds, kept_seconds)
        return None if taken is None else int(taken.get("seq", {}).get("N", "0"))

    def _lease_item(
        self, key: tuple[str, str], seconds: int, wait_seconds: float, kept_seconds: int | None
    ) -> Item | None:
        """`_lease`, returning the whole item as taken (None when another holds it)."""
        give_up = self.clock() + wait_seconds
        while True:
            now = self.clock()
            values = {
                ":me": {"S": self.owner},
                ":now": {"N": str(int(now))},
                ":until": {"N": str(int(now + seconds))},
                ":one": {"N": "1"},
            }
            expression = "SET #o = :me, expires = :until ADD seq :one REMOVE #t"
            if kept_seconds is not None:
                expression = "SET #o = :me, expires = :until, #t = :ttl ADD seq :one"
                values[":ttl"] = {"N": str(int(now + kept_seconds))}
            take = partial(
                self.dynamodb.update_item,
                TableName=self.table,
                Key={"pk": {"S": key[0]}, "sk": {"S": key[1]}},
                UpdateExpression=expression,
                ConditionExpression="attribute_not_exists(pk) OR #o = :me OR expires < :now",
                ExpressionAttributeNames={"#o": "owner", "#t": "ttl"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
            taken = self._conditional("UpdateItem", take)
            if taken is not None:
                return dict(taken.get("Attributes", {}))
            if self.clock() + LOCK_POLL_SECONDS > give_up:
                return None
            time.sleep(LOCK_POLL_SECONDS)

    def _update(
        self,
        key: tuple[str, str],
        expression: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        condition: str | None = None,
        returned: str = "NONE",
    ) -> dict[str, Any] | None:
        """UpdateItem on the item (pk, sk): the response, or None when `condition` did not hold."""
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": {"S": key[0]}, "sk": {"S": key[1]}},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": values,
            "ReturnValues": returned,
        }
        if condition:
            arguments["ConditionExpression"] = condition
        if names:
            arguments["ExpressionAttributeNames"] = names
        return self._conditional("UpdateItem", partial(self.dynamodb.update_item, **arguments))

    def _until_processed(self, operation: str, unprocessed: str, request: Item) -> list[Item]:
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
    def _conditional(operation: str, call: Callable[[], Any]) -> dict[str, Any] | None:
        """A conditional write: its response when it was made, None when its condition did not hold."""
        try:
            response = call()
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "ConditionalCheckFailedException":
                return None
            raise DependencyUnavailable(f"DynamoDB {operation} failed: {code}") from None
        except BotoCoreError as error:
            raise DependencyUnavailable(f"DynamoDB unreachable: {type(error).__name__}") from None
        return response if response is not None else {}

    @staticmethod
    def _dynamo(operation: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            raise DependencyUnavailable(f"DynamoDB {operation} failed: {type(error).__name__}") from None
