"""Errors the handlers turn into HTTP answers or SQS retries."""

from __future__ import annotations


class DependencyUnavailable(RuntimeError):
    """An AWS dependency (SQS, Secrets Manager, DynamoDB) failed: answer 5xx / retry later."""


class ConfigurationError(RuntimeError):
    """The deployment is misconfigured (missing secret, bad credentials): alarm, don't crash-loop."""
