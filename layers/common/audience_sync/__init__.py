"""Shared package of the Segment → Criteo audience sync (deployed as the Lambda layer)."""
