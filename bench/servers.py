"""The Criteo emulator the benchmarks run against (each stream its own)."""

from __future__ import annotations

from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import DEV_CRITEO


def new_emulator() -> CriteoEmulator:
    """A Criteo emulator that knows the local development app."""
    return CriteoEmulator(
        client_id=DEV_CRITEO["client_id"],
        client_secret=DEV_CRITEO["client_secret"],
        advertiser_id=DEV_CRITEO["advertiser_id"],
    )
