"""`backfill`: users exported from a warehouse enter an audience through the webhook, like Engage's events.

Each row becomes an `Audience Entered` track event (Segment's Engage form) for the audience, signed with the
webhook secret and posted in batches, so it takes the same path as any event: ingest's validation, the queue,
the ledger's ordering and consent. Its `messageId` is derived from the audience and the row, so running the
same file again changes nothing. A row is dated `--timestamp` (default: now), or by its `timestamp` column;
give the export's time, so an exit Engage sent after it still wins.

Columns (CSV with a header, or JSON lines with the same keys): `user_id` (required: Segment's userId, so
Engage's later exits find the same user), then any of `email`, `phone`, `madid`, `anonymous_id`,
`timestamp`. Rejected rows are reported with their line number and reason: by this command (not readable,
no user_id, no identifier) or by ingest (e.g. an email that is not one).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from audience_sync.webhook_auth import signature_of
from segment_criteo.target import Target, TargetError

EVENTS_PER_REQUEST = 1000
COLUMNS = ("user_id", "email", "phone", "madid", "anonymous_id", "timestamp")
RETRIES = 5


@dataclass
class BackfillReport:
    """Rows read, accepted by ingest, and rejected (line number and reason)."""

    rows: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


def rows(path: Path) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, the row's columns) or (line number, why it can't be read), from CSV or JSON lines."""
    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    yield number, "not JSON"
                    continue
                if not isinstance(value, dict):
                    yield number, "not a JSON object"
                    continue
                yield number, {k: str(v).strip() for k, v in value.items() if k in COLUMNS and v not in (None, "")}
            return
        reader = csv.DictReader(handle)
        unknown = sorted(set(reader.fieldnames or ()) - set(COLUMNS))
        if not reader.fieldnames or "user_id" not in reader.fieldnames:
            raise TargetError(f"{path}: the header must name user_id and some of {', '.join(COLUMNS[1:])}")
        if unknown:
            raise TargetError(f"{path}: unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
        for row in reader:
            yield reader.line_num, {k: v.strip() for k, v in row.items() if k in COLUMNS and v and v.strip()}


def event(audience: str, row: dict[str, str], timestamp: str) -> dict[str, Any] | str:
    """The Engage `Audience Entered` event of a row, or why there can't be one."""
    if not row.get("user_id"):
        return "no user_id"
    if not any(row.get(column) for column in ("email", "phone", "madid")):
        return "no identifier (email, phone or madid)"
    traits = {name: row[column] for column, name in (("email", "email"), ("phone", "phone")) if row.get(column)}
    context: dict[str, Any] = {
        "traits": traits,
        "personas": {"computation_class": "audience", "computation_key": audience},
    }
    if row.get("madid"):
        context["device"] = {"advertisingId": row["madid"]}
    digest = hashlib.sha256(json.dumps([audience, sorted(row.items())]).encode()).hexdigest()[:32]
    body: dict[str, Any] = {
        "type": "track",
        "event": "Audience Entered",
        "messageId": f"backfill-{digest}",
        "timestamp": row.get("timestamp") or timestamp,
        "userId": row["user_id"],
        "properties": {"audience_key": audience, audience: True},
        "context": context,
    }
    if row.get("anonymous_id"):
        body["anonymousId"] = row["anonymous_id"]
    return body


class Sender:
    """Signed POSTs to the deployment's webhook, retried on 429 and 5xx."""

    def __init__(self, target: Target, sleep: Callable[[float], None] = time.sleep) -> None:
        secret = target.client("secretsmanager").get_secret_value(SecretId=target.webhook_secret)["SecretString"]
        self.secret = str(secret).strip()
        self.url = target.webhook_url
        self.session = requests.Session()
        self.sleep = sleep

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Ingest's answer to one batch."""
        body = json.dumps({"batch": events}).encode()
        headers = {"Content-Type": "application/json", "X-Signature": signature_of(body, self.secret)}
        for attempt in range(RETRIES):
            response = self.session.post(self.url, data=body, headers=headers, timeout=60)
            if response.status_code < 500 and response.status_code != 429:
                answer: dict[str, Any] = response.json()
                if response.status_code not in (200, 400) or "accepted" not in answer:
                    raise TargetError(f"the webhook answered {response.status_code}: {answer.get('error', answer)}")
                return answer
            self.sleep(min(30.0, 2.0**attempt))
        raise TargetError(f"the webhook kept answering {response.status_code}")


def backfill(
    target: Target,
    path: Path,
    audience: str,
    timestamp: str | None = None,
    advance: Callable[[int], None] = lambda n: None,
    sender: Sender | None = None,
) -> BackfillReport:
    """Send every row of the file into the audience; the report of what ingest accepted and refused."""
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sender = sender or Sender(target)
    report = BackfillReport()
    pending: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        answer = sender.post([e for _, e in pending])
        report.requests += 1
        report.accepted += int(answer.get("accepted", 0))
        for error in answer.get("errors", []):
            report.rejected.append({"line": pending[int(error["index"])][0], "reason": error["reason"]})
        advance(len(pending))
        pending.clear()

    for number, row in rows(path):
        report.rows += 1
        made = row if isinstance(row, str) else event(audience, row, stamp)
        if isinstance(made, str):
            report.rejected.append({"line": number, "reason": made})
            advance(1)
            continue
        pending.append((number, made))
        if len(pending) == EVENTS_PER_REQUEST:
            flush()
    if pending:
        flush()
    report.rejected.sort(key=lambda r: int(r["line"]))
    return report


def count_rows(path: Path) -> int:
    """Data rows in the file (for the progress bar)."""
    with path.open(encoding="utf-8") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - (0 if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else 1)
