"""The ingest use case: authenticate, validate, normalize, queue; answer with exact accounting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audience_sync.errors import ConfigurationError, DependencyUnavailable
from audience_sync.http import HttpRequest, HttpResponse, error_response
from audience_sync.observability import logger
from audience_sync.queue import QueueWriter
from audience_sync.records import REMOVE, pack_changes
from audience_sync.segment import ParseResult, RequestError, SegmentEventParser, parse_events
from audience_sync.webhook_auth import Unauthorized, WebhookAuthenticator


@dataclass
class IngestOutcome:
    """What happened to a request, for the answer, the logs and the metrics (no PII)."""

    response: HttpResponse
    metrics: dict[str, int]


class IngestService:
    """Handles one Segment delivery end to end."""

    def __init__(
        self, authenticator: WebhookAuthenticator, parser: SegmentEventParser, queue: QueueWriter, max_body_bytes: int
    ) -> None:
        self.authenticator = authenticator
        self.parser = parser
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    def handle(self, request: HttpRequest) -> IngestOutcome:
        """Answer a request: 200/400 with per-event accounting, 4xx for bad requests, 5xx for our outages."""
        try:
            return self._handle(request)
        except RequestError as error:
            return IngestOutcome(error_response(error.status, error.code, str(error)), {"bad_requests": 1})
        except Unauthorized as error:
            return IngestOutcome(error_response(401, error.code, str(error)), {"unauthorized_requests": 1})
        except ConfigurationError as error:
            return IngestOutcome(
                error_response(503, "not_configured", str(error)), {"webhook_secret_errors": 1}
            )  # alarm-worthy
        except DependencyUnavailable:
            message = "a dependency of the service is unavailable; retry later"
            return IngestOutcome(error_response(503, "service_unavailable", message), {"dependency_errors": 1})

    def _handle(self, request: HttpRequest) -> IngestOutcome:
        if not request.body_is_valid_base64:
            raise RequestError(400, "invalid_base64", "the body is marked base64-encoded but is not valid base64")
        if len(request.body) > self.max_body_bytes:
            raise RequestError(413, "body_too_large", f"the body is larger than {self.max_body_bytes} bytes")
        self.authenticator.verify(request.body, request.headers)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise RequestError(415, "unsupported_media_type", "Content-Type must be application/json")
        result = self.parser.parse(parse_events(request.body))
        bodies = list(pack_changes(result.changes))
        if bodies:
            self.queue.send(bodies)
        counts = {
            "accepted": result.accepted,
            "ignored": result.ignored,
            "rejected": len(result.rejections),
            "records": len(result.changes),
            "messages": len(bodies),
        }
        payload: dict[str, Any] = {**counts, "errors": result.rejections}
        status = 400 if result.rejections and not (result.accepted or result.ignored) else 200
        if status == 400:
            payload["error"] = {"code": "no_valid_events", "message": "no event in the request could be accepted"}
        return IngestOutcome(HttpResponse(status, payload), metrics_of(result, len(bodies)))


def metrics_of(result: ParseResult, messages: int) -> dict[str, int]:
    """Counts for CloudWatch, with every rejection and dropped identifier by reason; logged without PII."""
    metrics = {
        "events_accepted": result.accepted,
        "events_ignored": result.ignored,
        "events_rejected": len(result.rejections),
        "exits_rejected": sum(n for (_, _, operation), n in result.rejected.items() if operation == REMOVE),
        "identifiers_dropped": sum(result.dropped.values()),
        "timestamps_clamped": result.clamped_timestamps,
        "consent_changes": result.consent_changes,
        "rule_events": result.rule_events,
        "records_queued": len(result.changes),
        "messages_queued": messages,
    }
    for kind, counter in (("rejected", result.rejected), ("dropped", result.dropped)):
        for (reason, _, _), count in counter.items():
            metrics[f"{kind}_{reason}"] = metrics.get(f"{kind}_{reason}", 0) + count
        if counter:
            rows = [
                {"reason": r, "audience": a, "operation": o, "count": n} for (r, a, o), n in sorted(counter.items())
            ]
            logger.warning(f"events {kind}" if kind == "rejected" else "identifiers dropped", extra={kind: rows})
    return metrics
