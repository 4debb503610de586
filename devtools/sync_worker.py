"""A sync worker in its own process (the poller feeding the real sync handler), so a chaos run can SIGKILL it.

python -m devtools.sync_worker CONFIG.json

The config holds the handler environment, the LocalAws fields and the event-source-mapping settings.
One JSON line per invocation goes to the `report` file: `{"event": "start", "batch": n, "messages": m,
"records": r, "min_patches": p}` before an SQS batch runs and `{"event": "end", "batch": n, "failed": f}`
after; the schedule's flushes are `{"event": "start"|"end", "flush": n}`. A `start` without its `end` is an
invocation the process died in. SIGTERM stops after the current invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from devtools.lambda_runtime import LAYER, ROOT, load_function
from devtools.local_aws import LocalAws
from devtools.minimum import minimum_patches
from devtools.poller import Handler, SqsPoller

sys.path.insert(0, str(LAYER))
from audience_sync.records import AudienceChange, PoisonMessage, unpack_changes


@dataclass
class WorkerConfig:
    """Everything a worker process needs."""

    aws: dict[str, Any]
    env: dict[str, str]
    report: str
    batch_size: int = 1000
    window_seconds: float = 0.5
    retry_delay_seconds: int = 1
    function_timeout_seconds: float = 60.0


def batch_minimum(bodies: list[str]) -> tuple[int, int]:
    """(records, fewest PATCHes for them) of one delivered batch (devtools.minimum, not our planner or ledger).

    Not exact: what the ledger held before the batch is not knowable here (earlier batches, other workers,
    redeliveries), so the batch is counted as reaching a ledger that knows none of its users. Adds: what each
    (audience, user) must hold after the batch, as if Criteo held nothing for them (a redelivery of adds
    Criteo already has is counted again). Removes: the identifiers carried by the exits of the users the batch
    ends out (an exit that carries none removes, here, nothing). Consent is not modelled: adds of users without
    a grant are counted though never sent.
    """
    changes: list[AudienceChange] = []
    for body in bodies:
        with contextlib.suppress(PoisonMessage):  # undecodable: no PATCH can carry it
            changes.extend(unpack_changes(body))
    return len(changes), minimum_patches(changes)


def reporting(handler: Handler, out: IO[str]) -> Handler:
    """Wrap the handler: a `start` line before each invocation and an `end` line after it.

    SQS invocations are numbered `batch`, the schedule's flushes `flush`.
    """
    batches, flushes = itertools.count(1), itertools.count(1)

    def emit(line: dict[str, Any]) -> None:
        out.write(json.dumps({**line, "at": round(time.time(), 3)}) + "\n")
        out.flush()

    def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if "Records" not in event:  # the minute schedule's flush
            label = {"flush": next(flushes)}
            emit({"event": "start", **label})
            answer = handler(event, context)
            emit({"event": "end", **label, "failed": 0})
            return answer
        number = next(batches)
        bodies = [record["body"] for record in event["Records"]]
        records, patches = batch_minimum(bodies)
        emit({"event": "start", "batch": number, "messages": len(bodies), "records": records, "min_patches": patches})
        try:
            result = handler(event, context)
        except Exception:
            emit({"event": "end", "batch": number, "failed": len(bodies), "crashed": True})
            raise
        emit({"event": "end", "batch": number, "failed": len(result.get("batchItemFailures", []))})
        return result

    return run


def run_worker(config: WorkerConfig) -> None:
    """Load the sync function (a cold start) and poll until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    aws = LocalAws(**config.aws)
    module = load_function("sync", config.env)
    with Path(config.report).open("a", encoding="utf-8") as out:
        poller = SqsPoller(
            aws.client("sqs"),
            aws.queue_url,
            reporting(module.handler, out),
            batch_size=config.batch_size,
            window_seconds=config.window_seconds,
            retry_delay_seconds=config.retry_delay_seconds,
            function_timeout_seconds=config.function_timeout_seconds,
        )
        poller.run(stop)


class WorkerProcess:
    """Starts a worker process and reads its batch report; `kill()` is a real SIGKILL."""

    def __init__(self, config: WorkerConfig, config_path: Path, log: IO[bytes]) -> None:
        config_path.write_text(json.dumps(asdict(config)))
        self.report = Path(config.report)
        self.report.touch()
        self._skip = len(self.report.read_text().splitlines())  # earlier workers' lines
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.sync_worker", str(config_path)], cwd=ROOT, stdout=log, stderr=log
        )

    def lines(self) -> list[dict[str, Any]]:
        """This worker's report lines so far."""
        text = self.report.read_text().splitlines()[self._skip :]
        return [json.loads(line) for line in text if line.endswith("}")]

    def in_invocation(self) -> dict[str, Any] | None:
        """The `start` line of the invocation running now, if any."""
        lines = self.lines()
        return lines[-1] if lines and lines[-1]["event"] == "start" else None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no answer to the poller, leases stay taken."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM and wait for the current batch to finish."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="sync worker (poller + real sync handler) in its own process")
    parser.add_argument("config", type=Path)
    run_worker(WorkerConfig(**json.loads(parser.parse_args().config.read_text())))
