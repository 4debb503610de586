"""The membership ledger in DynamoDB: per (user, audience) what Criteo holds, per user their consent,
and a lease per audience.

Items (`pk`, `sk`): (user, `a#<audience>`) a Membership (newest enter `e` and exit `x` versions, the held
identifiers `ids` as sent to Criteo, `live`); (user, `c#`) the newest consent (`v`, `ok`); (`lock#<audience>`,
`lock`) the lease that keeps two sync invocations from interleaving PATCHes for one audience. Users are
hashes (see segment.user_key), so no user id is stored in clear; keying by user answers "which audiences is
this user in" with one Query. See docs/design.md for the model and its cost.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.errors import DependencyUnavailable
from audience_sync.membership import Membership

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_KEYS = 100
BATCH_WRITE_ITEMS = 25
# A user who left keeps their versions past SQS's longest retention (14 days), so any redelivery finds them.
LEFT_TTL_SECONDS = 15 * 24 * 3600
LOCK_POLL_SECONDS = 0.25
UNPROCESSED_ATTEMPTS = 8
# Batch calls run in parallel: 100k users are 1,000 reads and 4,000 writes, too slow one after another.
PARALLEL_CALLS = 16
MEMBER = "a#"
CONSENT = "c#"


class Consent(NamedTuple):
    """A user's newest consent; `pending` until every audience they are in has been re-evaluated for it."""

    version: str
    granted: bool
    pending: bool = False


class Ledger:
    """The DynamoDB table (`pk`, `sk`, `ttl`) behind the membership ledger."""

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, lock_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.lock_seconds = lock_seconds
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_CALLS, thread_name_prefix="ledger")

    def acquire(self, audience_key: str, wait_seconds: float) -> bool:
        """Take the audience's lease, waiting up to `wait_seconds` for another holder to finish."""
        give_up = self.clock() + wait_seconds
        while True:
            now = self.clock()
            take = partial(
                self.dynamodb.put_item,
                TableName=self.table,
                Item={
                    "pk": {"S": f"lock#{audience_key}"},
                    "sk": {"S": "lock"},
                    "owner": {"S": self.owner},
                    "expires": {"N": str(int(now + self.lock_seconds))},
                    "ttl": {"N": str(int(now + self.lock_seconds + 3600))},
                },
                ConditionExpression="attribute_not_exists(pk) OR #o = :me OR expires < :now",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}, ":now": {"N": str(int(now))}},
            )
            if self._conditional("PutItem", take):
                return True
            if self.clock() + LOCK_POLL_SECONDS > give_up:
                return False
            time.sleep(LOCK_POLL_SECONDS)

    def release(self, audience_key: str) -> None:
        """Give the lease back (only if still ours) and note when the audience was synced; an expired lease
        needs no release."""
        with contextlib.suppress(ClientError, BotoCoreError):  # the lease expires on its own anyway
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"lock#{audience_key}"}, "sk": {"S": "lock"}},
                UpdateExpression="SET expires = :zero, synced = :now",
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={
                    ":me": {"S": self.owner},
                    ":zero": {"N": "0"},
                    ":now": {"N": f"{self.clock():.3f}"},
                },
            )

    def last_synced(self, audiences: Iterable[str]) -> dict[str, float]:
        """When each audience's lease was last released (absent: never, or over an hour ago)."""
        items = self._get((f"lock#{audience}", "lock") for audience in audiences)
        return {item["pk"]["S"].removeprefix("lock#"): float(item["synced"]["N"]) for item in items if "synced" in item}

    def memberships(self, audience_key: str, users: Iterable[str]) -> dict[str, Membership]:
        """Each user's membership of the audience (strongly consistent); absent users get an empty one."""
        found = {user: Membership() for user in users}
        for item in self._get([(user, MEMBER + audience_key) for user in found]):
            found[item["pk"]["S"]] = Membership(
                entered=item.get("e", {}).get("S", ""),
                exited=item.get("x", {}).get("S", ""),
                held=Membership.decode_held(item["ids"]["S"]),
                live=item["live"]["BOOL"],
            )
        return found

    def consents(self, users: Iterable[str]) -> dict[str, Consent]:
        """The newest consent known per user (users never seen with consent information are absent)."""
        return {
            item["pk"]["S"]: Consent(item["v"]["S"], item["ok"]["BOOL"], item.get("p", {}).get("BOOL", False))
            for item in self._get((u, CONSENT) for u in dict.fromkeys(users))
        }

    def audiences_of_users(self, users: Iterable[str]) -> dict[str, list[str]]:
        """`audiences_of` for many users (Queries in parallel)."""
        user_list = list(users)
        return dict(zip(user_list, self._pool.map(self.audiences_of, user_list), strict=True))

    def audiences_of(self, user: str) -> list[str]:
        """Every audience the ledger holds the user in or out of (one Query, strongly consistent)."""
        audiences: list[str] = []
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :u AND begins_with(sk, :a)",
            "ExpressionAttributeValues": {":u": {"S": user}, ":a": {"S": MEMBER}},
            "ProjectionExpression": "sk",
            "ConsistentRead": True,
        }
        while True:
            page = self._dynamo("Query", partial(self.dynamodb.query, **arguments))
            audiences.extend(item["sk"]["S"][len(MEMBER) :] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return audiences
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def save_memberships(self, audience_key: str, memberships: dict[str, Membership]) -> None:
        """Write memberships just applied; a user who is out expires after LEFT_TTL_SECONDS."""
        expires = str(int(self.clock()) + LEFT_TTL_SECONDS)
        items = []
        for user, membership in memberships.items():
            item: dict[str, Any] = {
                "pk": {"S": user},
                "sk": {"S": MEMBER + audience_key},
                "ids": {"S": membership.encode()},
                "live": {"BOOL": membership.live},
            }
            if membership.entered:
                item["e"] = {"S": membership.entered}
            if membership.exited:
                item["x"] = {"S": membership.exited}
            if not membership.is_in:
                item["ttl"] = {"N": expires}
            items.append(item)
        self._put(items)

    def save_consents(self, consents: dict[str, Consent]) -> None:
        """Write the newest consent per user."""
        self._put(
            [
                {
                    "pk": {"S": u},
                    "sk": {"S": CONSENT},
                    "v": {"S": c.version},
                    "ok": {"BOOL": c.granted},
                    "p": {"BOOL": c.pending},
                }
                for u, c in consents.items()
            ]
        )

    def mark_held(self, users: Iterable[str]) -> set[str]:
        """For users in an audience but never seen with a consent, create their consent item as a marker (no
        consent, `held`) so that their first grant re-evaluates their audiences. Returns the users whose consent
        item appeared meanwhile (a conditional PutItem each; a user without consent information is rare)."""
        user_list = list(users)
        return {user for user, raced in zip(user_list, self._pool.map(self._mark, user_list), strict=True) if raced}

    def _mark(self, user: str) -> bool:
        """True when a consent item was there already (the marker is not written)."""
        marker: dict[str, Any] = {
            "pk": {"S": user},
            "sk": {"S": CONSENT},
            "v": {"S": ""},
            "ok": {"BOOL": False},
            "p": {"BOOL": False},
        }
        put = partial(
            self.dynamodb.put_item, TableName=self.table, Item=marker, ConditionExpression="attribute_not_exists(pk)"
        )
        return not self._conditional("PutItem", put)

    def settle_consents(self, versions: dict[str, str]) -> None:
        """Clear `pending` where the consent is still that version (one conditional UpdateItem each, in
        parallel; only for consent changes that changed what may be sent)."""
        list(self._pool.map(self._settle, versions.items()))

    def _settle(self, user_version: tuple[str, str]) -> None:
        user, version = user_version
        clear = partial(
            self.dynamodb.update_item,
            TableName=self.table,
            Key={"pk": {"S": user}, "sk": {"S": CONSENT}},
            UpdateExpression="SET p = :f",
            ConditionExpression="v = :v",
            ExpressionAttributeValues={":f": {"BOOL": False}, ":v": {"S": version}},
        )
        self._conditional("UpdateItem", clear)  # condition failed: a newer consent is pending, left as it is

    def _get(self, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        key_list = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys]
        requests = [
            {self.table: {"Keys": key_list[start : start + BATCH_GET_KEYS], "ConsistentRead": True}}
            for start in range(0, len(key_list), BATCH_GET_KEYS)
        ]
        found: list[dict[str, Any]] = []
        for responses in self._pool.map(partial(self._until_processed, "BatchGetItem", "UnprocessedKeys"), requests):
            for response in responses:
                found.extend(response.get("Responses", {}).get(self.table, []))
        return found

    def _put(self, items: list[dict[str, Any]]) -> None:
        puts = [{"PutRequest": {"Item": item}} for item in items]
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
    def _conditional(operation: str, call: Callable[[], Any]) -> bool:
        """A conditional write: True when it was made, False when its condition did not hold."""
        try:
            call()
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "ConditionalCheckFailedException":
                return False
            raise DependencyUnavailable(f"DynamoDB {operation} failed: {code}") from None
        except BotoCoreError as error:
            raise DependencyUnavailable(f"DynamoDB unreachable: {type(error).__name__}") from None
        return True

    @staticmethod
    def _dynamo(operation: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            raise DependencyUnavailable(f"DynamoDB {operation} failed: {type(error).__name__}") from None
