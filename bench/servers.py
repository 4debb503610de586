"""The real local servers the benchmarks run against: moto (own process) and the Criteo emulator."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from devtools.criteo_emulator import CriteoEmulator
from devtools.local_aws import DEV_CRITEO, LocalAws, MotoServer, provision

_prefixes = itertools.count()


@dataclass
class Servers:
    """One moto server and one Criteo emulator, shared by the benchmarks of a run."""

    moto: MotoServer
    criteo: CriteoEmulator

    def fresh_aws(self) -> LocalAws:
        """New queues, secrets and membership ledger table (unique names), like a new deployment."""
        return provision(self.moto.endpoint, prefix=f"bench{next(_prefixes)}")


def new_emulator() -> CriteoEmulator:
    """A Criteo emulator that knows the local development app."""
    return CriteoEmulator(
        client_id=DEV_CRITEO["client_id"],
        client_secret=DEV_CRITEO["client_secret"],
        advertiser_id=DEV_CRITEO["advertiser_id"],
    )


@contextmanager
def local_servers() -> Iterator[Servers]:
    """Start moto and the emulator; stop both whatever happens."""
    with MotoServer() as moto, new_emulator() as criteo:
        yield Servers(moto, criteo)
