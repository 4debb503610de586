"""The membership ledger in DynamoDB: per (user, audience) what Criteo holds (or will hold once the
audience's outbox is flushed), per user their consent, and the flusher lease.

Items (`pk`, `sk`): (user, `a#<audience>`) a Membership (newest enter `e` and exit `x` versions, the held
identifiers `ids`, `live`, a suppression's hold `h`); (user, `c#`) the newest consent (`v`, `ok`); (user, `s#`)
the newest suppression from every audience (`t`, `m`, `h`); (`flusher`, `lock`) the lease of the
one flush running, with the flush tick pending (ticks.py). An audience's lease is its outbox item (outbox.py). Users are
hashes (see segment.user_key), so no user id is stored in clear; keying by user answers "which audiences is
this user in" with one Query. See docs/design.md for the model and its cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from audience_sync.errors import DependencyUnavailable
from audience_sync.membership import Membership
from audience_sync.records import REMOVE, AudienceChange
from audience_sync.table import LEASE_KEPT_SECONDS, Table
from audience_sync.ticks import KEEP, Tick

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# A user who left keeps their versions past SQS's longest retention (14 days), so any redelivery finds them.
LEFT_TTL_SECONDS = 15 * 24 * 3600
FLUSHER_LEASE = "flusher"
MEMBER = "a#"
CONSENT = "c#"
SUPPRESSED = "s#"
RACE_ATTEMPTS = 5


class Consent(NamedTuple):
    """A user's newest consent; `pending` until every audience they are in has been re-evaluated for it."""

    version: str
    granted: bool
    pending: bool = False


def _membership(item: dict[str, Any]) -> Membership:
    return Membership(
        entered=item.get("e", {}).get("S", ""),
        exited=item.get("x", {}).get("S", ""),
        held=Membership.decode_held(item["ids"]["S"]),
        live=item["live"]["BOOL"],
        hold_until=int(item.get("h", {}).get("N", "0")),
    )


class Suppression(NamedTuple):
    """A user's newest suppression from every audience, and the latest end of a cool-down among them."""

    timestamp_ms: int
    message_id: str
    hold_until_ms: int

    @property
    def version(self) -> str:
        """The version of the exit it stands for."""
        return self.exit("", "").version

    def exit(self, audience_key: str, user: str) -> AudienceChange:
        """The exit it is in one audience."""
        return AudienceChange(
            audience_key, "", REMOVE, user, self.timestamp_ms, self.message_id, {}, self.hold_until_ms
        )

    def merged(self, other: Suppression | None) -> Suppression:
        """The newer of two, holding as long as either."""
        if other is None:
            return self
        newer = max(self, other, key=lambda s: s.version)
        return newer._replace(hold_until_ms=max(self.hold_until_ms, other.hold_until_ms))


class Ledger(Table):
    """The membership ledger's items and the flusher lease."""

    def __init__(
        self, dynamodb: DynamoDBClient, table: str, lock_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(dynamodb, table, clock)
        self.lock_seconds = lock_seconds
        self.flusher_tick: float | None = None  # the tick pending when the flusher lease was last taken

    def acquire_flusher(self, wait_seconds: float = 0.0) -> int | None:
        """Take (or, taken, extend) the one flusher lease, waiting up to `wait_seconds` for another holder to give
        it back: one flush at a time, whichever invocation runs it. Like an audience's, it outlasts the function's
        timeout: two flushers of one audience could delete each other's entries, so one that crashed holds the
        flush back until it expires. Returns the lease's number (one more at every taking: a jump says another
        invocation flushed meanwhile), or None when another invocation holds it."""
        taken = self._lease_item((FLUSHER_LEASE, "lock"), self.lock_seconds, wait_seconds, LEASE_KEPT_SECONDS)
        if taken is None:
            return None
        self.flusher_tick = float(taken["tick"]["N"]) if "tick" in taken else None
        return int(taken.get("seq", {}).get("N", "0"))

    def release_flusher(self, tick: Tick = KEEP) -> bool:
        """Give the flusher lease back (only if still ours; an expired lease needs no release), arming or clearing
        the pending tick in the same write; False when it was not written."""
        expression = "SET expires = :zero"
        values = {":me": {"S": self.owner}, ":zero": {"N": "0"}}
        if tick.arm is not None:
            expression += ", tick = :tick"
            values[":tick"] = {"N": f"{tick.arm:.3f}"}
        elif tick.clear:
            expression += " REMOVE tick"
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"pk": {"S": FLUSHER_LEASE}, "sk": {"S": "lock"}},
                UpdateExpression=expression,
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues=values,
            )
        except (ClientError, BotoCoreError):  # the lease expires on its own anyway
            return False
        return True

    def memberships(self, audience_key: str, users: Iterable[str]) -> dict[str, Membership]:
        """Each user's membership of the audience (strongly consistent); absent users get an empty one."""
        return self.memberships_of({audience_key: users})[audience_key]

    def memberships_of(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Membership]]:
        """`memberships` of several audiences in one read (BatchGetItem takes 100 keys whatever their audience:
        a batch over 2,000 audiences touches most of them with a user or two)."""
        found = {audience_key: {user: Membership() for user in users} for audience_key, users in wanted.items()}
        keys = [(user, MEMBER + audience_key) for audience_key, users in found.items() for user in users]
        for item in self._get(keys):
            found[item["sk"]["S"][len(MEMBER) :]][item["pk"]["S"]] = _membership(item)
        return found

    def scan_memberships(self, audiences: Iterable[str] | None = None) -> Iterator[tuple[str, str, Membership]]:
        """(audience, user, membership) for every membership in the ledger, or of these audiences: a Scan of the
        whole table (strongly consistent), for operators' commands, never on the sync's path."""
        wanted = None if audiences is None else {MEMBER + a for a in audiences}
        pages = self.dynamodb.get_paginator("scan").paginate(
            TableName=self.table,
            ConsistentRead=True,
            FilterExpression="begins_with(sk, :member)",
            ExpressionAttributeValues={":member": {"S": MEMBER}},
        )
        try:
            for page in pages:
                for item in page["Items"]:
                    if wanted is None or item["sk"]["S"] in wanted:
                        yield item["sk"]["S"][len(MEMBER) :], item["pk"]["S"], _membership(item)
        except (ClientError, BotoCoreError) as error:
            raise DependencyUnavailable(f"DynamoDB Scan failed: {type(error).__name__}") from None

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

    def save_memberships(self, by_audience: Mapping[str, Mapping[str, Membership]]) -> None:
        """Write memberships just applied, per audience and user, in one batch write; a user who is out expires
        after LEFT_TTL_SECONDS."""
        expires = int(self.clock()) + LEFT_TTL_SECONDS
        items = []
        for audience_key, user, membership in (
            (a, u, m) for a, memberships in by_audience.items() for u, m in memberships.items()
        ):
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
            if membership.hold_until:
                item["h"] = {"N": str(membership.hold_until)}
            if not membership.is_in:  # kept while a hold lasts
                item["ttl"] = {"N": str(max(expires, membership.hold_until // 1000 + LEFT_TTL_SECONDS))}
            items.append(item)
        self._put(items)

    def suppressions(self, users: Iterable[str]) -> dict[str, Suppression]:
        """The suppression from every audience stored per user (users never suppressed are absent)."""
        return {
            item["pk"]["S"]: Suppression(int(item["t"]["N"]), item["m"]["S"], int(item["h"]["N"]))
            for item in self._get((u, SUPPRESSED) for u in dict.fromkeys(users))
        }

    def save_suppressions(self, suppressions: dict[str, Suppression]) -> None:
        """Merge each user's suppression into the stored one (a read and a conditional write each, in
        parallel: suppressions from every audience are rare). Kept while a late event could still arrive
        (SQS keeps messages 14 days) and while its hold lasts."""
        list(self._pool.map(self._suppress, suppressions.items()))

    def _suppress(self, user_suppression: tuple[str, Suppression]) -> None:
        user, suppression = user_suppression
        for _ in range(RACE_ATTEMPTS):
            stored = self.suppressions([user]).get(user)
            merged = suppression.merged(stored)
            if merged == stored:
                return
            expires = max(int(self.clock()), merged.hold_until_ms // 1000) + LEFT_TTL_SECONDS
            item = {
                "pk": {"S": user},
                "sk": {"S": SUPPRESSED},
                "t": {"N": str(merged.timestamp_ms)},
                "m": {"S": merged.message_id},
                "h": {"N": str(merged.hold_until_ms)},
                "ttl": {"N": str(expires)},
            }
            if stored is None:
                condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
            else:
                condition = {
                    "ConditionExpression": "m = :m AND h = :h AND t = :t",
                    "ExpressionAttributeValues": {
                        ":m": {"S": stored.message_id},
                        ":h": {"N": str(stored.hold_until_ms)},
                        ":t": {"N": str(stored.timestamp_ms)},
                    },
                }
            put = partial(self.dynamodb.put_item, TableName=self.table, Item=item, **condition)
            if self._conditional("PutItem", put) is not None:
                return
        raise DependencyUnavailable("a user's suppression kept changing under us")

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
