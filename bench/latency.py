"""Benchmark 6: end-to-end latency on the local stack, event accepted -> identifier in the Criteo emulator.

The real gateway, ingest handler, moto SQS, poller (the event source mapping stand-in) and sync handler.
A steady trickle of single-event requests per batching window shows how the window trades latency for calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

import requests

from audience_sync.identifiers import sha256_hex
from audience_sync.webhook_auth import signature_of
from bench.timing import percentile
from devtools.local_aws import DEV_WEBHOOK_SECRET
from devtools.local_stack import LocalStack, StackSettings

EVENTS_PER_SECOND = 10.0


def _event(index: int, window: float) -> bytes:
    return json.dumps(
        {
            "type": "track",
            "event": "Audience Entered",
            "messageId": f"latency-{window}-{index}",
            "userId": f"latency-user-{window}-{index}",
            "timestamp": "2026-11-21T10:00:00Z",
            "properties": {"audience_key": "latency"},
            "context": {"traits": {"email": f"latency{window}-{index}@example.com"}},
        }
    ).encode()


def measure_window(window: float, seconds: float) -> dict[str, Any]:
    """Send a trickle for `seconds` through a stack with this batching window; latencies and calls per event."""
    settings = StackSettings(gateway_port=0, window_seconds=window, log_level="ERROR")
    count = int(seconds * EVENTS_PER_SECOND)
    accepted: dict[str, float] = {}
    arrived: dict[str, float] = {}
    # The handlers print EMF metrics to stdout as in Lambda; keep them off the report.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), LocalStack(settings) as stack:
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                now = time.monotonic()
                for segment in stack.criteo.segments().values():
                    for identifier in segment["members"].get("email", ()):
                        arrived.setdefault(identifier, now)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        session = requests.Session()
        started = time.monotonic()
        for index in range(count):
            time.sleep(max(0.0, started + index / EVENTS_PER_SECOND - time.monotonic()))
            body = _event(index, window)
            headers = {"Content-Type": "application/json", "X-Signature": signature_of(body, DEV_WEBHOOK_SECRET)}
            session.post(stack.gateway.url, data=body, headers=headers, timeout=30).raise_for_status()
            accepted[sha256_hex(f"latency{window}-{index}@example.com")] = time.monotonic()
        give_up = time.monotonic() + window * 3 + 30
        while len(set(accepted) & set(arrived)) < count and time.monotonic() < give_up:
            time.sleep(0.05)
        done.set()
        watcher.join()
        patches = stack.criteo.count("patch")
        invocations = stack.poller.stats.invocations
    latencies = [arrived[k] - t for k, t in accepted.items() if k in arrived]
    return {
        "window_s": window,
        "events": count,
        "delivered": len(latencies),
        "p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "sync_invocations": invocations,
        "patches": patches,
        "patches_per_1k_events": round(1000 * patches / count, 1),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Windows: the local stack's default (1 s) and longer ones, up to the template's default (20 s)."""
    if quick:
        return [measure_window(0.2, 2.0)]
    return [measure_window(window, max(10.0, 2 * window)) for window in (1.0, 5.0, 20.0)]
