"""Benchmark 7: AWS cost per million audience changes, from this run's measured figures and list prices.

Prices: us-east-1, AWS's public pricing pages as known on PRICES_AS_OF (see docs/cost.md for sources).
"""

from __future__ import annotations

import math
from typing import Any

from devtools.criteo_emulator.api import MAX_IDENTIFIERS

PRICES_AS_OF = "2026-11-24"
PRICES = {
    "http_api_per_million_requests": 1.00,  # first 300M/month; metered in 512 KB increments
    "lambda_arm64_per_gb_second": 0.0000133334,  # first 7.5B GB-s/month
    "lambda_per_million_requests": 0.20,
    "sqs_standard_per_million_requests": 0.40,  # each 64 KiB of payload is one request
    "dynamodb_on_demand_per_million_wru": 0.625,  # since the November 2024 reduction
    "dynamodb_on_demand_per_million_rru": 0.125,  # a strongly consistent read ≤4 KB = 1 RRU
    "secrets_manager_per_10k_calls": 0.05,
}
CHANGES = 1_000_000
EVENTS_PER_REQUEST = 1_000  # Segment batches (Webhooks Actions allow up to 4,000: cheaper still)
REQUEST_BYTES_PER_EVENT = 420  # a Segment audience event in a batch, as the ingest benchmark sends it
HTTP_API_UNIT_BYTES = 512 * 1024
LAMBDA_MEMORY_GB = 0.5  # template.yaml MemorySize 512
VCPU_SHARE = 512 / 1769  # Lambda gives a full vCPU at 1,769 MB
SQS_CALL_SECONDS = 0.02  # a SendMessageBatch round trip inside AWS
CRITEO_PATCH_SECONDS = 0.1  # a PATCH round trip to Criteo, plus...
CRITEO_SECONDS_PER_50K = 1.0  # ...uploading and processing 50,000 identifiers (assumptions)
DYNAMODB_CALL_SECONDS = 0.01  # one BatchGet/BatchWrite/Query, 16 in parallel
# An invocation that only flushes (a tick's, the minute schedule's): the handler, the flusher lease taken and
# given back, the inbox's group items read; its Criteo and table calls are counted above.
FLUSH_INVOCATION_SECONDS = 0.1
SECRET_READS_PER_MILLION = 2 * 2 * 12 * 24  # 2 functions x 2 containers x one read per 5 min, for a day


def _money(value: float) -> float:
    return round(value, 5)


def model(ingest_events_per_second: float, sync_records_per_second: float, stream: dict[str, Any]) -> dict[str, Any]:
    """Dollars per million changes, by service, with the quantities behind them."""
    requests = CHANGES / EVENTS_PER_REQUEST
    units_per_request = math.ceil(EVENTS_PER_REQUEST * REQUEST_BYTES_PER_EVENT / HTTP_API_UNIT_BYTES)
    ingest_seconds = requests * (EVENTS_PER_REQUEST / ingest_events_per_second / VCPU_SHARE + 2 * SQS_CALL_SECONDS)
    scale = CHANGES / stream["changes"]
    messages = stream["sqs_messages"] * scale  # packed 64 KiB messages (records.py), as the stream made them
    dynamo = stream["dynamodb_calls"]
    table_calls = sum(n for operation, n in dynamo.items() if operation not in ("rru", "wru")) * scale
    flush_invocations = (stream.get("tick_invocations", 0) + stream.get("scheduled_invocations", 0)) * scale
    sync_invocations = stream["invocations"] * scale + flush_invocations
    sync_seconds = (
        CHANGES / sync_records_per_second / VCPU_SHARE
        # The flusher's threads send several audiences' calls at once: billed is the longest thread's round trips
        # per pass (rows measured before the fourteenth session: every PATCH one after another).
        + stream.get("patch_rounds", stream["calls"]["patch"]) * scale * CRITEO_PATCH_SECONDS
        + stream["identifiers_sent"] * scale / MAX_IDENTIFIERS * CRITEO_SECONDS_PER_50K
        + table_calls / 16 * DYNAMODB_CALL_SECONDS
        + flush_invocations * FLUSH_INVOCATION_SECONDS
        # Rows measured before the flush ticks (twelfth session): the scheduled invocation stayed awake between
        # its passes, billed though it slept.
        + stream.get("flush_invocation_seconds", 0.0) * scale
    )
    # The ledger and the outbox, as their DynamoDB requests on that stream were billed (bench/memory_table.py
    # meters each one): per (audience, user) touched one consistent read and one write; per audience and
    # batch the leases, an outbox entry (written, then left to expire behind the cursor: ~40 bytes an identifier) and
    # its summary; the budget's item per Criteo call.
    capacity = {"rru": dynamo.get("rru", 0) * scale, "wru": dynamo.get("wru", 0) * scale}
    quantities = {
        "http_api_billed_requests": requests * units_per_request,
        "lambda_requests": requests + sync_invocations,
        "lambda_gb_seconds": (ingest_seconds + sync_seconds) * LAMBDA_MEMORY_GB,
        # send + receive (per 64 KiB) + batched deletes; a flush tick is sent, received and deleted
        "sqs_requests": messages * 2 + messages / 10 + stream.get("ticks_sent", 0) * scale * 3,
        "dynamodb_wru": capacity.get("wru", 0.0),
        "dynamodb_rru": capacity.get("rru", 0.0),
        "secrets_manager_calls": SECRET_READS_PER_MILLION,
    }
    dollars = {
        "http_api": quantities["http_api_billed_requests"] / 1e6 * PRICES["http_api_per_million_requests"],
        "lambda": quantities["lambda_requests"] / 1e6 * PRICES["lambda_per_million_requests"]
        + quantities["lambda_gb_seconds"] * PRICES["lambda_arm64_per_gb_second"],
        "sqs": quantities["sqs_requests"] / 1e6 * PRICES["sqs_standard_per_million_requests"],
        "dynamodb": quantities["dynamodb_wru"] / 1e6 * PRICES["dynamodb_on_demand_per_million_wru"]
        + quantities["dynamodb_rru"] / 1e6 * PRICES["dynamodb_on_demand_per_million_rru"],
        "secrets_manager": quantities["secrets_manager_calls"] / 1e4 * PRICES["secrets_manager_per_10k_calls"],
    }
    return {
        "prices_as_of": PRICES_AS_OF,
        "region": "us-east-1",
        "prices": PRICES,
        "quantities_per_million_changes": {k: round(v, 1) for k, v in quantities.items()},
        "dollars_per_million_changes": {k: _money(v) for k, v in dollars.items()},
        "total_dollars_per_million_changes": _money(sum(dollars.values())),
        "target_dollars": 1.0,
        "based_on_stream": stream["stream"],
    }


def run(results: dict[str, Any]) -> dict[str, Any]:
    """The model fed with this run's ingest and sync-core throughput and the counts of the largest burst
    stream up to 1M changes (20 audiences when there is one); `by_stream`: the total on every stream of
    100k changes or more."""
    ingest = max(row["events_per_second"] for row in results["ingest"])
    sync = min(row["records_per_second"] for row in results["sync_core"])
    bursts = [row for row in results["criteo_calls"] if row["mode"] == "burst" and row["changes"] <= CHANGES]
    stream = max(bursts, key=lambda row: (row["changes"], row["audiences"] == 20))
    by_stream = [
        {
            "stream": row["stream"],
            "mode": row["mode"],
            "total_dollars_per_million_changes": model(ingest, sync, row)["total_dollars_per_million_changes"],
        }
        for row in results["criteo_calls"]
        if row["changes"] >= 100_000
    ]
    return {**model(ingest, sync, stream), "by_stream": by_stream}
