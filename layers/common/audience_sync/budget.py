"""The Criteo call budget, shared by every invocation: a token bucket in the ledger's table.

Criteo limits calls per app, whichever Lambda makes them, so each app's budget lives in one item (`budget`,
`criteo#<hashed client id>`): `tokens` left at time `at`. It refills at `per_minute / 60` per second up to a
small burst, so no 60-second window holds more than `per_minute` plus that burst (docs/design.md, "Call budget").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from audience_sync.table import Table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# The bucket holds at most a tenth of a minute's calls (20 at 200/min): more than a flusher pass every 5 s
# uses, so no token is lost between passes, and at most 220 calls fall in any 60 s at 200/min.
BURST_SHARE = 0.1
RACE_ATTEMPTS = 5
MIN_SLEEP_SECONDS = 0.05  # between looks at a bucket another invocation just emptied


class CallBudget(Table):
    """Take tokens before calling Criteo; never waits (the caller decides what to do meanwhile)."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        per_minute: int,
        clock: Callable[[], float] = time.time,
        burst: float | None = None,
        app: str = "criteo",
    ) -> None:
        super().__init__(dynamodb, table, clock)
        self.app = app
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute * BURST_SHARE) if burst is None else burst

    def take(self, calls: int = 1) -> bool:
        """Take `calls` tokens if the bucket has them."""
        return self._change(-calls, require=True)

    def wait_for(self, calls: int, seconds_left: Callable[[], float], sleep: Callable[[float], None]) -> bool:
        """Take `calls` tokens, sleeping until the bucket has them; False (nothing taken) when that would take
        longer than `seconds_left()`."""
        while not self.take(calls):
            wait = self.seconds_until(calls)
            if seconds_left() < wait:
                return False
            sleep(max(wait, MIN_SLEEP_SECONDS))
        return True

    def take_all(self) -> int:
        """Take every whole token the bucket has; how many (0: it had none, and nothing was written)."""
        for _ in range(RACE_ATTEMPTS):
            tokens, at = self._read()
            whole = int(tokens)
            if whole < 1:
                return 0
            if self._set(tokens - whole, at):
                return whole
        return 0

    def charge(self, calls: int) -> None:
        """Count calls already made (segment searches and creates: their number is known afterwards)."""
        if calls > 0:
            self._change(-calls, require=False)

    def give_back(self, tokens: int) -> None:
        """Return tokens taken and not used."""
        if tokens > 0:
            self._change(tokens, require=False)

    def seconds_until(self, calls: int = 1) -> float:
        """How long until `calls` tokens are there (0 when they are)."""
        tokens, _ = self._read()
        return max(0.0, (calls - tokens) / self.rate)

    def _read(self) -> tuple[float, str | None]:
        """Tokens now (refilled since the item's `at`) and the `at` read, for the conditional write."""
        found = self._get([("budget", self.app)])
        if not found:
            return self.capacity, None
        item = found[0]
        at = item["at"]["N"]
        refilled = float(item["tokens"]["N"]) + (self.clock() - float(at)) * self.rate
        return min(self.capacity, refilled), at

    def _change(self, delta: int, require: bool) -> bool:
        for _ in range(RACE_ATTEMPTS):
            tokens, at = self._read()
            if require and tokens + delta < 0:
                return False
            if self._set(tokens + delta, at):
                return True
        return False  # other invocations kept winning the race: treated as no tokens

    def _set(self, tokens: float, at: str | None) -> bool:
        """Set the bucket to `tokens` now, if no one wrote it since it was read at `at` (None: it did not exist)."""
        condition = "attribute_not_exists(pk)" if at is None else "#at = :at"
        values = {":t": {"N": f"{tokens:.6f}"}, ":now": {"N": f"{self.clock():.6f}"}}
        if at is not None:
            values[":at"] = {"N": at}
        write = partial(
            self.dynamodb.update_item,
            TableName=self.table,
            Key={"pk": {"S": "budget"}, "sk": {"S": self.app}},
            UpdateExpression="SET tokens = :t, #at = :now",
            ConditionExpression=condition,
            ExpressionAttributeNames={"#at": "at"},
            ExpressionAttributeValues=values,
        )
        return self._conditional("UpdateItem", write) is not None
