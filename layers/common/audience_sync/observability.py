"""One Logger and one Metrics namespace for both functions (Powertools, EMF, JSON logs without PII)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

SERVICE = "segment-criteo-sync"
NAMESPACE = "SegmentCriteoSync"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
