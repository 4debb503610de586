"""The membership ledger in DynamoDB: per (user, audience) what Criteo holds (or will hold once the
audience's outbox is flushed), per user their consent, and the flusher lease.

Items (`pk`, `sk`): (user, `a#<audience>`) a Membership (newest enter `e` and exit `x` versions, the held
identifiers `ids`, `live`); (user, `c#`) the newest consent (`v`, `ok`); (`flusher`, `lock`) the lease of the
one flush running. An audience's lease is its outbox item (outbox.py). Users are
hashes (see segment.user_key), so no user id is stored in clear; keying by user answers "which audiences is
this user in" with one Query. See docs/design.md for the model and its cost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.membership import Membership
from audience_sync.table import LEASE_KEPT_SECONDS, Table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# A user who left keeps their versions past SQS's longest retention (14 days), so any redelivery finds them.
LEFT_TTL_SECONDS = 15 * 24 * 3600
FLUSHER_LEASE = "flusher"
MEMBER = "a#"
CONSENT = "c#"


class Consent(NamedTuple):
    """A user's newest consent; `pending` until every audience they are in has been re-evaluated for it."""

    version: str
    granted: bool
    pending: bool = False


class Ledger(Table):
    """The membership ledger's items and the flusher lease."""

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, lock_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(dynamodb, table, clock)
        self.lock_seconds = lock_seconds

    def acquire_flusher(self) -> bool:
        """Take (or, taken, extend) the one flusher lease without waiting: one flush at a time, whichever
        invocation runs it. Like an audience's, it outlasts the function's timeout: two flushers of one audience
        could delete each other's entries, so one that crashed holds the flush back until it expires."""
        return self._lease((FLUSHER_LEASE, "lock"), self.lock_seconds, 0.0, LEASE_KEPT_SECONDS) is not None

    def release_flusher(self) -> None:
        """Give the flusher lease back (only if still ours; an expired lease needs no release)."""
        with contextlib.suppress(ClientError, BotoCoreError):  # the lease expires on its own anyway
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"pk": {"S": FLUSHER_LEASE}, "sk": {"S": "lock"}},
                UpdateExpression="SET expires = :zero",
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}, ":zero": {"N": "0"}},
            )

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
        return [item["sk"]["S"][len(MEMBER) :] for item in self._query(user, MEMBER, projection="sk")]

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
        return self._conditional("PutItem", put) is None

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
