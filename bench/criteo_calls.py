"""Benchmark 1: Criteo calls our real sync code makes on realistic streams, against the minimum and the peer.

Streams up to 100k go through the real sync handler (functions/sync/app.py) with its DynamoDB membership
ledger in moto and Criteo in the emulator; SQS is replaced by handing the handler the batches the event
source would deliver. The 1M streams run the same sync core (AudienceSync + Ledger + CriteoClient + emulator)
with the ledger's table in memory, counting the DynamoDB calls: moto needs minutes per million.
Either way the DynamoDB calls are metered from their requests as DynamoDB bills them (`meter`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import asdict
from typing import Any, cast

import requests

from audience_sync.ledger import Ledger
from audience_sync.records import AudienceChange, unpack_changes
from bench.peer import peer_calls
from bench.servers import Servers
from bench.streams import StreamSpec, generate, minimum_calls, sync_batches, tokens_needed
from devtools.lambda_runtime import FakeContext, load_function
from devtools.local_aws import DEV_CRITEO

CALL_KINDS = ("token", "search", "create", "patch")
HANDLER_PATH_MAX_CHANGES = 100_000
WRITE_UNIT_BYTES = 1024  # one WRU writes up to 1 KB
Item = dict[str, dict[str, Any]]  # DynamoDB's wire format: attribute -> {type: value}


def item_bytes(item: Item) -> int:
    """DynamoDB's size of an item: attribute names plus values (S and B by length, N ~1 byte per 2 digits)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        for kind, content in value.items():
            if kind == "S":
                size += len(str(content).encode())
            elif kind == "N":
                size += math.ceil(len(str(content).strip("-").lstrip("0").replace(".", "")) / 2) + 1
            elif kind == "B":
                size += len(content)
            else:  # BOOL, NULL (the ledger writes nothing else)
                size += 1
    return size


def meter(operation: str, params: dict[str, Any]) -> Counter[str]:
    """The call and the capacity DynamoDB on-demand bills for it: every read here is strongly consistent on
    items under 4 KB (1 RRU per key asked, found or not; 1 per Query page of one user's few items), every
    write 1 WRU per started KB of the item (the lease's conditional writes count even when they fail)."""
    billed: Counter[str] = Counter({operation: 1})
    if operation == "BatchGetItem":
        billed["rru"] += sum(len(request["Keys"]) for request in params["RequestItems"].values())
    elif operation == "Query":
        billed["rru"] += 1
    elif operation == "BatchWriteItem":
        for writes in params["RequestItems"].values():
            for write in writes:
                put = write.get("PutRequest")
                billed["wru"] += math.ceil(item_bytes(put["Item"]) / WRITE_UNIT_BYTES) if put else 1
    elif operation == "PutItem":
        billed["wru"] += math.ceil(item_bytes(params["Item"]) / WRITE_UNIT_BYTES)
    elif operation == "UpdateItem":
        billed["wru"] += 1  # the lease or a consent item, well under 1 KB
    return billed


class InMemoryTable:
    """The DynamoDB client calls the ledger makes, answered from memory (one table, no conditions
    enforced: one sync at a time here), each metered."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Item]] = {}  # pk -> sk -> item
        self.billed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _bill(self, operation: str, params: dict[str, Any]) -> None:
        billed = meter(operation, params)
        with self._lock:
            self.billed.update(billed)

    def put_item(self, **params: Any) -> dict[str, Any]:
        """PutItem (the lease)."""
        self._bill("PutItem", params)
        self._store(params["Item"])
        return {}

    def update_item(self, **params: Any) -> dict[str, Any]:
        """UpdateItem `SET a = :x, b = :y` (the lease's release, a consent's settling) on an existing item."""
        self._bill("UpdateItem", params)
        key, values = params["Key"], params["ExpressionAttributeValues"]
        assignments = params["UpdateExpression"].removeprefix("SET ").split(", ")
        with self._lock:
            item = self.items.get(key["pk"]["S"], {}).get(key["sk"]["S"])
            if item is not None:
                for assignment in assignments:
                    name, value = assignment.split(" = ")
                    item[name] = values[value]
        return {}

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        """BatchGetItem: every key answered, nothing left unprocessed."""
        self._bill("BatchGetItem", params)
        with self._lock:
            return {
                "Responses": {
                    table: [
                        item
                        for key in request["Keys"]
                        if (item := self.items.get(key["pk"]["S"], {}).get(key["sk"]["S"])) is not None
                    ]
                    for table, request in params["RequestItems"].items()
                }
            }

    def batch_write_item(self, **params: Any) -> dict[str, Any]:
        """BatchWriteItem of PutRequests: every item written."""
        self._bill("BatchWriteItem", params)
        for writes in params["RequestItems"].values():
            for write in writes:
                self._store(write["PutRequest"]["Item"])
        return {}

    def query(self, **params: Any) -> dict[str, Any]:
        """Query `pk = :u AND begins_with(sk, :a)`, the ledger's only one; one page."""
        self._bill("Query", params)
        values = params["ExpressionAttributeValues"]
        prefix = values[":a"]["S"]
        with self._lock:
            found = self.items.get(values[":u"]["S"], {})
            return {"Items": [{"sk": item["sk"]} for sk, item in sorted(found.items()) if sk.startswith(prefix)]}

    def _store(self, item: Item) -> None:
        with self._lock:
            self.items.setdefault(item["pk"]["S"], {})[item["sk"]["S"]] = item


class CountingLedger(Ledger):
    """The real membership ledger over an in-memory table; `billed` counts its DynamoDB calls, RRU and WRU."""

    def __init__(self, lock_seconds: int = 960) -> None:
        self.in_memory = InMemoryTable()
        super().__init__(cast(Any, self.in_memory), "bench-ledger", lock_seconds)

    @property
    def billed(self) -> Counter[str]:
        """DynamoDB calls by operation, plus `rru` and `wru`."""
        return self.in_memory.billed


class _NoQueue:
    def send(self, bodies: list[str], attributes: Any = None) -> int:
        raise AssertionError("the benchmark streams hold no poison")


def _sqs_event(batch: list[tuple[str, str]]) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "body": body} for message_id, body in batch]}


def _run_handler(servers: Servers, batches: list[list[tuple[str, str]]]) -> Counter[str]:
    """Every batch through the real handler (a warm container); returns the DynamoDB calls by operation and
    the capacity they bill (`rru`, `wru`)."""
    aws = servers.fresh_aws()
    env = aws.function_env(servers.criteo.url, POWERTOOLS_LOG_LEVEL="ERROR", POWERTOOLS_METRICS_DISABLED="true")
    sync = load_function("sync", env)
    billed: Counter[str] = Counter()
    lock = threading.Lock()

    def count(params: dict[str, Any], model: Any, **_: Any) -> None:
        with lock:
            billed.update(meter(model.name, params))

    sync.ledger.dynamodb.meta.events.register("before-parameter-build.dynamodb", count)
    for batch in batches:
        result = sync.handler(_sqs_event(batch), FakeContext(timeout_seconds=300))
        if result["batchItemFailures"]:
            raise RuntimeError(f"sync handed back {len(result['batchItemFailures'])} messages")
    return billed


def _run_core(servers: Servers, batches: list[list[tuple[str, str]]]) -> Counter[str]:
    """Every batch through AudienceSync + CriteoClient (fresh container caches), the ledger's table in memory."""
    from audience_sync.criteo.auth import CriteoCredentials, TokenCache
    from audience_sync.criteo.client import CriteoClient
    from audience_sync.criteo.segments import SEGMENT_IDS
    from audience_sync.sync import AudienceSync, DeadLetters, SyncOptions

    SEGMENT_IDS.clear()
    tokens = TokenCache()
    ledger = CountingLedger()
    credentials = CriteoCredentials(DEV_CRITEO["client_id"], DEV_CRITEO["client_secret"], DEV_CRITEO["advertiser_id"])
    session = requests.Session()
    for batch in batches:
        client = CriteoClient(session, servers.criteo.url, "2026-07", credentials, lambda: 300.0, tokens=tokens)
        dead_letters = DeadLetters(_NoQueue())  # type: ignore[arg-type]
        sync = AudienceSync(client, ledger, dead_letters, SyncOptions(), lambda: 300.0)
        report = sync.run(batch)
        if report.failed_message_ids:
            raise RuntimeError(f"sync handed back {len(report.failed_message_ids)} messages")
    return ledger.billed


def _decoded(batch: list[tuple[str, str]]) -> list[AudienceChange]:
    return [change for _, body in batch for change in unpack_changes(body)]


def measure_stream(servers: Servers, spec: StreamSpec) -> dict[str, Any]:
    """Run one stream; calls by kind, the minimum, the ratios and the peer's calls."""
    changes = generate(spec)
    batches = sync_batches(changes)
    minimum = minimum_calls(changes, [_decoded(b) for b in batches])
    servers.criteo.reset()
    path = "handler+moto" if spec.changes <= HANDLER_PATH_MAX_CHANGES else "core+in-memory ledger"
    started = time.monotonic()
    dynamo = (_run_handler if path == "handler+moto" else _run_core)(servers, batches)
    capacity = {unit: dynamo.pop(unit, 0) for unit in ("rru", "wru")}
    elapsed = time.monotonic() - started
    calls = {kind: servers.criteo.count(kind) for kind in CALL_KINDS}
    total = sum(calls.values())
    floor = minimum.total(tokens_needed(elapsed))
    peer = peer_calls(changes)
    return {
        "stream": spec.label,
        "changes": spec.changes,
        "audiences": spec.audiences,
        "path": path,
        "sync_batches": len(batches),
        "sqs_messages": sum(len(batch) for batch in batches),
        "seconds": round(elapsed, 2),
        "calls": {**calls, "total": total},
        "minimum": {**asdict(minimum), "tokens": tokens_needed(elapsed), "total": floor},
        "patch_ratio": round(calls["patch"] / minimum.patches_per_batch, 3),
        "ratio": round(total / floor, 3),
        "ratio_vs_whole_stream": round(total / (floor - minimum.patches_per_batch + minimum.patches_whole_stream), 3),
        "peer": {**asdict(peer), "total": peer.total},
        "peer_ratio": round(peer.total / floor, 3),
        "dynamodb_calls": dict(sorted(dynamo.items())),
        "dynamodb_capacity": capacity,
        "spec_violations": len(servers.criteo.spec_violations),
    }


def run(servers: Servers, quick: bool) -> list[dict[str, Any]]:
    """Every stream of the benchmark (1k only in quick mode)."""
    sizes = (1_000,) if quick else (1_000, 100_000, 1_000_000)
    audiences = (1, 20) if quick else (1, 20, 200)
    return [measure_stream(servers, StreamSpec(n, a)) for n in sizes for a in audiences]
