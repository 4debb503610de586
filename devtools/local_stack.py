"""The whole pipeline on loopback: moto (SQS, Secrets Manager, DynamoDB), Criteo emulator, gateway, poller."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import ModuleType

from devtools.criteo_emulator import CriteoEmulator
from devtools.gateway import LocalGateway
from devtools.lambda_runtime import load_function
from devtools.local_aws import DEV_CRITEO, LocalAws, MotoServer, provision
from devtools.poller import SqsPoller


@dataclass
class StackSettings:
    """Ports and event-source-mapping settings of the local stack."""

    gateway_port: int = 3000
    moto_port: int = 0
    criteo_port: int = 0
    batch_size: int = 1000
    window_seconds: float = 1.0
    max_receive_count: int = 3
    retry_delay_seconds: int = 1
    with_poller: bool = True
    log_level: str = "WARNING"
    visibility_timeout: int = 30
    function_env: dict[str, str] = field(default_factory=dict)  # extra handler settings, e.g. IDENTIFIER_TYPES


class LocalStack:
    """Starts every piece in order and stops them all, whatever happened in between."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.moto = MotoServer(settings.moto_port)
        self.criteo = CriteoEmulator(
            port=settings.criteo_port,
            client_id=DEV_CRITEO["client_id"],
            client_secret=DEV_CRITEO["client_secret"],
            advertiser_id=DEV_CRITEO["advertiser_id"],
        )
        self._stop = threading.Event()
        self._started: list[object] = []

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start moto, provision it, start the emulator, load both handlers, start gateway and poller."""
        self.moto.start()
        self._started.append(self.moto)
        self.aws: LocalAws = provision(
            self.moto.endpoint,
            prefix="local",
            max_receive_count=self.settings.max_receive_count,
            visibility_timeout=self.settings.visibility_timeout,
        )
        self.criteo.start()
        self._started.append(self.criteo)
        self.env = self.aws.function_env(
            self.criteo.url,
            POWERTOOLS_LOG_LEVEL=self.settings.log_level,
            POWERTOOLS_METRICS_DISABLED="true",
            **self.settings.function_env,
        )
        self.ingest: ModuleType = load_function("ingest", self.env)
        self.sync: ModuleType = load_function("sync", self.env)
        self.gateway = LocalGateway(self.ingest.handler, self.settings.gateway_port)
        self.gateway.start()
        self._started.append(self.gateway)
        self.poller = SqsPoller(
            self.aws.client("sqs"),
            self.aws.queue_url,
            self.sync.handler,
            batch_size=self.settings.batch_size,
            window_seconds=self.settings.window_seconds,
            retry_delay_seconds=self.settings.retry_delay_seconds,
        )
        if self.settings.with_poller:
            self._poller_thread = threading.Thread(target=self.poller.run, args=(self._stop,), daemon=True)
            self._poller_thread.start()

    def wait_until_drained(self, max_seconds: float = 300.0) -> None:
        """Block until the queue is empty and the poller is idle."""
        give_up = time.monotonic() + max_seconds
        quiet_since = None
        while time.monotonic() < give_up:
            if self.poller.backlog() == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > self.settings.window_seconds + 0.5:
                    return
            else:
                quiet_since = None
            time.sleep(0.2)
        raise TimeoutError(f"the queue did not drain within {max_seconds:.0f}s")

    def stop(self) -> None:
        """Stop the poller, then every server, in reverse order."""
        self._stop.set()
        if hasattr(self, "_poller_thread"):
            self._poller_thread.join(timeout=30)
        for part in reversed(self._started):
            part.stop()  # type: ignore[attr-defined]
        self._started.clear()
