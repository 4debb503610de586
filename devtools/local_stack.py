"""The whole pipeline on loopback: moto (SQS, Secrets Manager, DynamoDB), Criteo emulator, gateway, poller.

Fixed ports are checked before anything starts: a port another program holds is refused with one line that
names the port, who holds it and the flag to change it (`PortInUse`), never a traceback or a hang. After
start, each server is asked its identity (moto's /moto-api/config, the emulator's /__admin/state, the
gateway's /__local/health) so a stranger answering on our port is caught too.

python -m devtools.local_stack --need-ports 4566 8642 --for "make sam-invoke"   exit 1 (one line) if either is taken
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from devtools.criteo_emulator import CriteoEmulator
from devtools.gateway import LocalGateway
from devtools.http_server import (
    command_line,
    describe_listener,
    get_json,
    http_banner,
    is_address_in_use,
    listener_pid,
    parent_pid,
    port_in_use,
)
from devtools.lambda_runtime import load_function
from devtools.local_aws import DEV_CRITEO, LocalAws, MotoServer, provision
from devtools.poller import BatchReport, SqsPoller, outbox_waiting

# (what, the local_pipeline / make local flag that moves it)
PORT_ROLES = {
    "moto": ("moto (the local AWS endpoint)", "--moto-port"),
    "criteo": ("the Criteo emulator", "--criteo-port"),
    "gateway": ("the webhook gateway", "--gateway-port"),
}


class PortInUse(RuntimeError):
    """A port of the local stack is held by another program, or a stranger answers on it."""

    def __init__(self, role: str, port: int, holder: str) -> None:
        what, flag = PORT_ROLES[role]
        self.role, self.port, self.flag = role, port, flag
        super().__init__(
            f"port {port} for {what} is in use by {holder}. Stop that program, or pick another port with"
            f" {flag} PORT (make local ARGS='{flag} PORT'; 0 = any free port)"
        )


def identify(port: int, host: str = "127.0.0.1") -> str | None:
    """Which of our servers answers on a port ('moto', 'criteo', 'gateway'), or None (a stranger, or nothing)."""
    base = f"http://{host}:{port}"
    status, body = get_json(f"{base}/__local/health")
    if status == 200 and isinstance(body, dict) and body.get("service") == LocalGateway.SERVICE:
        return "gateway"
    status, body = get_json(f"{base}/__admin/state")
    if status == 200 and isinstance(body, dict) and {"segments", "calls", "faults"} <= body.keys():
        return "criteo"
    status, body = get_json(f"{base}/moto-api/config")
    if status in (200, 201) and isinstance(body, dict) and "lambda" in body:
        return "moto"
    return None


def stack_pid(port: int) -> int | None:
    """The `python -m devtools.local_pipeline` (e.g. `make serve`) that owns a port, through moto's child process."""
    pid = listener_pid(port)
    while pid and pid > 1:
        if "devtools.local_pipeline" in command_line(pid):
            return pid
        pid = parent_pid(pid)
    return listener_pid(port)


def holder_of(port: int) -> tuple[str, bool]:
    """Who holds a port, in words, and whether it is one of ours (another `make serve` still running)."""
    banner = http_banner(port)
    ours = identify(port) if banner and banner.startswith("HTTP") else None  # a silent listener is asked once
    if ours:
        pid = stack_pid(port)
        short = {"moto": "moto", "criteo": "Criteo emulator", "gateway": "webhook gateway"}[ours]
        return f"another local stack's {short} (a `make serve` still running{f', pid {pid}' if pid else ''})", True
    return describe_listener(port, probed=(banner,)), False


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise PortInUse for the first fixed (non-zero) port another program holds."""
    for role, port in ports.items():
        if port and port_in_use(port):
            raise PortInUse(role, port, holder_of(port)[0])


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


@dataclass
class SyncBatch:
    """One sync invocation as the local stack saw it: the poller's report plus what Criteo received meanwhile."""

    number: int  # invocations so far, this one included
    report: BatchReport
    patches: int
    added: int
    removed: int
    invalid: int


class LocalStack:
    """Starts every piece in order and stops them all, whatever happened in between."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._started: list[object] = []
        self.on_batch: Callable[[SyncBatch], None] | None = None  # called after each sync invocation
        self._patches_seen = 0
        ports = {"moto": settings.moto_port, "criteo": settings.criteo_port, "gateway": settings.gateway_port}
        check_ports_free(ports)
        self.moto = MotoServer(settings.moto_port)
        try:
            self.criteo = CriteoEmulator(
                port=settings.criteo_port,
                client_id=DEV_CRITEO["client_id"],
                client_secret=DEV_CRITEO["client_secret"],
                advertiser_id=DEV_CRITEO["advertiser_id"],
            )
        except OSError as error:  # taken between the check and the bind
            if is_address_in_use(error):
                raise PortInUse("criteo", settings.criteo_port, holder_of(settings.criteo_port)[0]) from None
            raise

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _expect(self, role: str, port: int) -> None:
        """The server we just started answers as itself on `port` (not a stranger that got there first)."""
        if identify(port) != role:
            raise PortInUse(role, port, holder_of(port)[0])

    def start(self) -> None:
        """Start moto, provision it, start the emulator, load both handlers, start gateway and poller."""
        self.moto.start()
        self._started.append(self.moto)
        self._expect("moto", self.moto.port)
        self.aws: LocalAws = provision(
            self.moto.endpoint,
            prefix="local",
            max_receive_count=self.settings.max_receive_count,
            visibility_timeout=self.settings.visibility_timeout,
        )
        self.criteo.start()
        self._started.append(self.criteo)
        self._expect("criteo", int(self.criteo.url.rsplit(":", 1)[1]))
        self.env = self.aws.function_env(
            self.criteo.url,
            POWERTOOLS_LOG_LEVEL=self.settings.log_level,
            POWERTOOLS_METRICS_DISABLED="true",
            **self.settings.function_env,
        )
        self.ingest: ModuleType = load_function("ingest", self.env)
        self.sync: ModuleType = load_function("sync", self.env)
        try:
            self.gateway = LocalGateway(self.ingest.handler, self.settings.gateway_port)
        except OSError as error:
            if is_address_in_use(error):
                raise PortInUse(
                    "gateway", self.settings.gateway_port, holder_of(self.settings.gateway_port)[0]
                ) from None
            raise
        self.gateway.start()
        self._started.append(self.gateway)
        self._expect("gateway", self.gateway.server.port)
        self.poller = SqsPoller(
            self.aws.client("sqs"),
            self.aws.queue_url,
            self.sync.handler,
            batch_size=self.settings.batch_size,
            window_seconds=self.settings.window_seconds,
            retry_delay_seconds=self.settings.retry_delay_seconds,
            on_batch=self._batch_done,
        )
        if self.settings.with_poller:
            self._poller_thread = threading.Thread(target=self.poller.run, args=(self._stop,), daemon=True)
            self._poller_thread.start()

    def _batch_done(self, report: BatchReport) -> None:
        """Attribute the PATCHes Criteo received since the last batch to this one (one sync runs at a time)."""
        if self.on_batch is None:
            return
        patches = self.criteo.patch_log[self._patches_seen :]
        self._patches_seen += len(patches)
        self.on_batch(
            SyncBatch(
                number=self.poller.stats.invocations,
                report=report,
                patches=len(patches),
                added=sum(int(p["valid"]) for p in patches if p["operation"] == "add"),
                removed=sum(int(p["valid"]) for p in patches if p["operation"] == "remove"),
                invalid=sum(int(p["invalid"]) for p in patches),
            )
        )

    def report_batches(self, callback: Callable[[SyncBatch], None]) -> None:
        """Call `callback` after every sync invocation from now on (earlier PATCHes are not counted)."""
        self._patches_seen = len(self.criteo.patch_log)
        self.on_batch = callback

    def wait_until_drained(self, max_seconds: float = 300.0) -> None:
        """Block until the queue is empty, the poller is idle and nothing waits in the outbox."""
        give_up = time.monotonic() + max_seconds
        quiet_since = None
        dynamodb = self.aws.client("dynamodb")
        while time.monotonic() < give_up:
            if self.poller.backlog() == 0 and outbox_waiting(dynamodb, self.aws.ledger_table) == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > self.settings.window_seconds + 0.5:
                    return
            else:
                quiet_since = None
            time.sleep(0.2)
        raise TimeoutError(f"the queue and the outbox did not drain within {max_seconds:.0f}s")

    def stop(self) -> None:
        """Stop the poller, then every server, in reverse order."""
        self._stop.set()
        if hasattr(self, "_poller_thread"):
            self._poller_thread.join(timeout=30)
        for part in reversed(self._started):
            part.stop()  # type: ignore[attr-defined]
        if hasattr(self, "criteo") and self.criteo not in self._started:
            self.criteo.stop()  # bound at construction: close the socket even if it never served
        self._started.clear()


def need_ports(ports: list[int], purpose: str) -> int:
    """Exit status 0 when every port is free; else 1 after one line per taken port saying who holds it."""
    taken = [port for port in ports if port_in_use(port)]
    for port in taken:
        holder, ours = holder_of(port)
        stop = "Stop that `make serve` (Ctrl-C in its terminal)" if ours else "Stop that program"
        print(f"error: {purpose} needs port {port}, which is in use by {holder}. {stop}, then rerun.", file=sys.stderr)
    return 1 if taken else 0


def main(argv: list[str] | None = None) -> int:
    """`--need-ports`: the port check on its own (make sam-invoke runs it before binding 4566 and 8642)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--need-ports", type=int, nargs="+", required=True, metavar="PORT")
    parser.add_argument("--for", dest="purpose", default=os.path.basename(sys.argv[0]), help="who needs them")
    args = parser.parse_args(argv)
    return need_ports(args.need_ports, args.purpose)


if __name__ == "__main__":
    raise SystemExit(main())
