"""Criteo failures, typed by what the caller should do with the records."""

from __future__ import annotations


class CriteoError(Exception):
    """Base of every Criteo failure; messages never carry tokens, secrets or identifiers."""


class RetryLater(CriteoError):
    """Transient (5xx, timeout, 429, time budget spent): hand the records back to SQS."""


class InvalidCredentials(CriteoError):
    """`invalid_client`: the client id/secret are wrong. A configuration alarm, not a retry loop."""


class SegmentGone(CriteoError):
    """404, or 403 `audience-invalid`: the cached segment id is no longer ours."""


class RejectedRequest(CriteoError):
    """4xx validation: retrying can't help, the records go to the dead-letter queue with this reason."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"Criteo answered {status} {code}: {detail}")
        self.status = status
        self.code = code


class NameNotUnique(RejectedRequest):
    """Create raced with another creator of the same name: search again."""


class SegmentOwnedElsewhere(CriteoError):
    """The segment of that name belongs to another deployment or to someone else: configuration, not retryable."""

    def __init__(self, name: str, owner: str | None) -> None:
        who = (
            f"deployment {owner}" if owner else "not created by this deployment (e.g. Segment's own Criteo destination)"
        )
        super().__init__(
            f"Criteo segment {name!r} is not ours: {who}. To take it over, add its name to ADOPT_SEGMENTS "
            "(comma-separated segment names, or * for any)"
        )
        self.name = name
        self.owner = owner
