"""`check`: the first thing to run after a deploy. Is the settings document valid; can each advertiser's
credentials be read, get a token and see its segments; does the webhook take a signed event."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from audience_sync.criteo.errors import CriteoError
from segment_criteo.backfill import Sender
from segment_criteo.deployment import Deployment
from segment_criteo.target import TargetError

CHECK_EVENT = "Segment Criteo Sync Check"  # a track event no rule names: ingest accepts and ignores it


def check(deployment: Deployment) -> list[dict[str, Any]]:
    """One row per check: what, ok, and the detail (never a secret)."""
    results: list[dict[str, Any]] = []

    def record(what: str, attempt: Any) -> None:
        started = time.monotonic()
        try:
            detail = attempt()
            results.append({"check": what, "ok": True, "detail": detail, "seconds": _since(started)})
        except (TargetError, CriteoError) as error:
            results.append({"check": what, "ok": False, "detail": str(error), "seconds": _since(started)})

    record(
        "settings document",
        lambda: f"{len(deployment.config.audiences)} audiences, {len(deployment.config.rules)} rules",
    )
    advertisers = deployment.config.advertisers() if results[0]["ok"] else ["default"]
    for advertiser in advertisers:
        record(f"advertiser {advertiser}", lambda a=advertiser: _advertiser(deployment, a))
    record("webhook", lambda: _webhook(deployment))
    return results


def _advertiser(deployment: Deployment, advertiser: str) -> str:
    client = deployment.criteo(advertiser)
    segments = list(client.search_segments())  # its first call fetches the app's token
    return f"advertiser {client.credentials.advertiser_id}: token issued, {len(segments)} contact lists visible"


def _webhook(deployment: Deployment) -> str:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    probe = {
        "type": "track",
        "event": CHECK_EVENT,
        "messageId": f"check-{uuid.uuid4()}",
        "userId": "check",
        "timestamp": now,
    }
    answer = Sender(deployment.target).post([probe])
    if answer.get("ignored") != 1:
        raise TargetError(f"the webhook answered {answer} to a signed test event")
    return f"{deployment.target.webhook_url} accepted a signed test event"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 2)
