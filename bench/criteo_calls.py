"""Benchmark 1: Criteo calls our real sync code makes on realistic streams, against the minimum and the peer.

Streams up to 100k go through the real sync handler (functions/sync/app.py) with its DynamoDB ordering
store in moto and Criteo in the emulator; SQS is replaced by handing the handler the batches the event
source would deliver. The 1M streams run the same sync core (AudienceSync + CriteoClient + emulator) with
an in-memory ordering store that counts the DynamoDB calls it stands for: moto needs minutes per million.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import requests

from audience_sync.records import AudienceChange, unpack_changes
from bench.peer import peer_calls
from bench.servers import Servers
from bench.streams import StreamSpec, generate, minimum_calls, sync_batches, tokens_needed
from devtools.lambda_runtime import FakeContext, load_function
from devtools.local_aws import DEV_CRITEO

CALL_KINDS = ("token", "search", "create", "patch")
HANDLER_PATH_MAX_CHANGES = 100_000


class CountingOrderingStore:
    """The ordering store's interface in memory, counting the DynamoDB calls the real one would make."""

    def __init__(self) -> None:
        from audience_sync.ordering import BATCH_GET_KEYS, BATCH_WRITE_ITEMS

        self.versions_by_key: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self._get, self._write = BATCH_GET_KEYS, BATCH_WRITE_ITEMS

    def acquire(self, audience_key: str, wait_seconds: float) -> bool:
        """One conditional PutItem."""
        self.calls["PutItem"] += 1
        return True

    def release(self, audience_key: str) -> None:
        """One conditional DeleteItem."""
        self.calls["DeleteItem"] += 1

    def versions(self, keys: Any) -> dict[str, str]:
        """BatchGetItem of 100 keys per call."""
        key_list = list(keys)
        self.calls["BatchGetItem"] += math.ceil(len(key_list) / self._get)
        return {k: self.versions_by_key[k] for k in key_list if k in self.versions_by_key}

    def save(self, versions: dict[str, str]) -> None:
        """BatchWriteItem of 25 items per call."""
        self.calls["BatchWriteItem"] += math.ceil(len(versions) / self._write)
        self.versions_by_key.update(versions)


class _NoQueue:
    def send(self, bodies: list[str], attributes: Any = None) -> int:
        raise AssertionError("the benchmark streams hold no poison")


def _sqs_event(batch: list[tuple[str, str]]) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "body": body} for message_id, body in batch]}


def _run_handler(servers: Servers, batches: list[list[tuple[str, str]]]) -> Counter[str]:
    """Every batch through the real handler (a warm container); returns the DynamoDB calls by operation."""
    aws = servers.fresh_aws()
    env = aws.function_env(servers.criteo.url, POWERTOOLS_LOG_LEVEL="ERROR", POWERTOOLS_METRICS_DISABLED="true")
    sync = load_function("sync", env)
    dynamo_calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(model: Any, **_: Any) -> None:
        with lock:
            dynamo_calls[model.name] += 1

    sync.store.dynamodb.meta.events.register("before-call.dynamodb", count)
    for batch in batches:
        result = sync.handler(_sqs_event(batch), FakeContext(timeout_seconds=300))
        if result["batchItemFailures"]:
            raise RuntimeError(f"sync handed back {len(result['batchItemFailures'])} messages")
    return dynamo_calls


def _run_core(servers: Servers, batches: list[list[tuple[str, str]]]) -> Counter[str]:
    """Every batch through AudienceSync + CriteoClient (fresh container caches), in-memory ordering store."""
    from audience_sync.criteo.auth import CriteoCredentials, TokenCache
    from audience_sync.criteo.client import CriteoClient
    from audience_sync.criteo.segments import SEGMENT_IDS
    from audience_sync.sync import AudienceSync, DeadLetters

    SEGMENT_IDS.clear()
    tokens = TokenCache()
    store = CountingOrderingStore()
    credentials = CriteoCredentials(DEV_CRITEO["client_id"], DEV_CRITEO["client_secret"], DEV_CRITEO["advertiser_id"])
    session = requests.Session()
    for batch in batches:
        client = CriteoClient(session, servers.criteo.url, "2026-07", credentials, lambda: 300.0, tokens=tokens)
        sync = AudienceSync(client, store, DeadLetters(_NoQueue()), "segment_", lambda: 300.0)  # type: ignore[arg-type]
        report = sync.run(batch)
        if report.failed_message_ids:
            raise RuntimeError(f"sync handed back {len(report.failed_message_ids)} messages")
    return store.calls


def _decoded(batch: list[tuple[str, str]]) -> list[AudienceChange]:
    return [change for _, body in batch for change in unpack_changes(body)]


def measure_stream(servers: Servers, spec: StreamSpec) -> dict[str, Any]:
    """Run one stream; calls by kind, the minimum, the ratios and the peer's calls."""
    changes = generate(spec)
    batches = sync_batches(changes)
    minimum = minimum_calls(changes, [_decoded(b) for b in batches])
    servers.criteo.reset()
    path = "handler+moto" if spec.changes <= HANDLER_PATH_MAX_CHANGES else "core+counted store"
    started = time.monotonic()
    dynamo = (_run_handler if path == "handler+moto" else _run_core)(servers, batches)
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
        "seconds": round(elapsed, 2),
        "calls": {**calls, "total": total},
        "minimum": {**asdict(minimum), "tokens": tokens_needed(elapsed), "total": floor},
        "patch_ratio": round(calls["patch"] / minimum.patches_per_batch, 3),
        "ratio": round(total / floor, 3),
        "ratio_vs_whole_stream": round(total / (floor - minimum.patches_per_batch + minimum.patches_whole_stream), 3),
        "peer": {**asdict(peer), "total": peer.total},
        "peer_ratio": round(peer.total / floor, 3),
        "dynamodb_calls": dict(dynamo),
        "spec_violations": len(servers.criteo.spec_violations),
    }


def run(servers: Servers, quick: bool) -> list[dict[str, Any]]:
    """Every stream of the benchmark (1k only in quick mode)."""
    sizes = (1_000,) if quick else (1_000, 100_000, 1_000_000)
    audiences = (1, 20) if quick else (1, 20, 200)
    return [measure_stream(servers, StreamSpec(n, a)) for n in sizes for a in audiences]
