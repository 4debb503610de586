"""Which Criteo account an audience goes to: per advertiser a client and segment directory, per app (client id)
one call budget, shared by every advertiser the app serves (Criteo limits calls per app)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from audience_sync.audience_config import DEFAULT_ADVERTISER
from audience_sync.budget import CallBudget
from audience_sync.criteo.client import CriteoClient
from audience_sync.criteo.segments import SegmentDirectory
from audience_sync.errors import DependencyUnavailable


@dataclass
class App:
    """One Criteo app in this invocation: its budget, and whether it may still be called now.

    A flush pass takes what the bucket has once (`take`), hands it out to its audiences, and gives back what it
    did not use (`give_back`): the bucket's item read and written per pass, not per audience (under a backlog a
    pass sends ~17 audiences)."""

    budget: CallBudget
    stop: threading.Event = field(default_factory=threading.Event)  # out of budget, or credentials refused
    held: int = 0  # tokens taken from the bucket and not used yet
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, calls: int) -> bool:
        """Take `calls` tokens from those held, taking all the bucket has when they are too few."""
        with self.lock:
            if self.held < calls:
                self.held += self.budget.take_all()
            if self.held < calls:
                return False
            self.held -= calls
            return True

    def charge(self, calls: int) -> None:
        """Count calls already made (segment searches and creates): paid from the tokens held first, the rest
        owed to the bucket."""
        with self.lock:
            paid = min(self.held, max(0, calls))
            self.held -= paid
        self.budget.charge(calls - paid)

    def give_back(self) -> None:
        """Return the tokens held to the bucket."""
        with self.lock:
            held, self.held = self.held, 0
            with contextlib.suppress(DependencyUnavailable):  # lost: the bucket refills within seconds
                self.budget.give_back(held)


@dataclass
class Advertiser:
    """One advertiser's Criteo client, segments, and the app it calls through."""

    name: str
    criteo: CriteoClient
    directory: SegmentDirectory
    app: App
    resolving: threading.Lock = field(default_factory=threading.Lock)  # segment look-ups, one at a time


def secret_id(advertiser: str, default_secret: str, prefix: str) -> str:
    """Where an advertiser's Criteo credentials are: the deployment's own secret for `default`, else the secret
    named after it."""
    return default_secret if advertiser == DEFAULT_ADVERTISER else prefix + advertiser


def app_key(client_id: str) -> str:
    """The key of an app's budget item: its client id, hashed (the id stays out of the table)."""
    return "criteo#" + hashlib.sha256(client_id.encode()).hexdigest()[:16]


class Advertisers:
    """The advertisers of one invocation, connected on first use.

    `connect(name)`: a client with that advertiser's credentials, or None when they can't be read;
    `budget(client_id, calls_per_minute)`: the app's shared budget. Advertisers sharing an app share its
    budget; the budget set for the first of them to connect applies.
    """

    def __init__(
        self,
        connect: Callable[[str], CriteoClient | None],
        budget: Callable[[str, int], CallBudget],
        deployment: str,
        adopt: frozenset[str],
    ) -> None:
        self.connect = connect
        self.budget = budget
        self.deployment = deployment
        self.adopt = adopt
        self._advertisers: dict[str, Advertiser | None] = {}
        self._apps: dict[str, App] = {}
        self._lock = threading.Lock()

    def get(self, name: str, calls_per_minute: int) -> Advertiser | None:
        """The advertiser (None: its credentials can't be read; asked again in the next invocation)."""
        with self._lock:
            if name not in self._advertisers:
                self._advertisers[name] = self._connect(name, calls_per_minute)
            return self._advertisers[name]

    def connected(self) -> list[Advertiser]:
        """Every advertiser connected so far."""
        with self._lock:
            return [a for a in self._advertisers.values() if a is not None]

    def unreadable(self) -> list[str]:
        """The advertisers whose credentials could not be read."""
        with self._lock:
            return sorted(name for name, a in self._advertisers.items() if a is None)

    def call_counts(self) -> dict[str, int]:
        """The Criteo calls made through every advertiser so far (for metrics)."""
        stats = [a.criteo.stats for a in self.connected()]
        return {
            "criteo_calls": sum(s.total_calls for s in stats),
            "criteo_retries": sum(s.retries for s in stats),
            "criteo_throttles": sum(s.throttles for s in stats),
            "token_fetches": sum(s.calls.get("token", 0) for s in stats),
        }

    def _connect(self, name: str, calls_per_minute: int) -> Advertiser | None:
        criteo = self.connect(name)
        if criteo is None:
            return None
        client_id = criteo.credentials.client_id
        if client_id not in self._apps:
            self._apps[client_id] = App(self.budget(client_id, calls_per_minute))
        directory = SegmentDirectory(criteo, self.deployment, self.adopt)
        return Advertiser(name, criteo, directory, self._apps[client_id])
