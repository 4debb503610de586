"""`python -m bench [--quick] [--out DIR]`: run every benchmark, print the table, write results.json and
scaling.png. Quick mode (CI) runs small sizes only and may reuse an existing `sam build`."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from bench import (  # noqa: E402
    cold_init,
    cost,
    criteo_calls,
    ingest_throughput,
    latency,
    memory,
    package_size,
    plot,
    report,
    sync_core,
)


def run_all(quick: bool, max_changes: int, jobs: int = 1) -> dict[str, Any]:
    """Every benchmark, in an order that keeps the noisy ones (subprocesses, servers) apart."""
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "machine": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("sync_core", lambda: sync_core.run(quick)),
        ("ingest", lambda: ingest_throughput.run(quick)),
        ("cold_init", lambda: cold_init.run(quick)),
        ("package_size", lambda: package_size.run(quick)),
        ("latency", lambda: latency.run(quick)),
        ("memory", lambda: memory.run(quick)),
    ]
    for name, step in steps:
        began = time.monotonic()
        print(f"[bench] {name} ...", flush=True)
        results[name] = step()
        print(f"[bench] {name} done in {time.monotonic() - began:.1f}s", flush=True)
    print("[bench] criteo_calls ...", flush=True)
    results["criteo_calls"] = criteo_calls.run(quick, max_changes, jobs)
    results["cost"] = cost.run(results)
    return results


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (seconds, not minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where results.json and scaling.png go")
    parser.add_argument(
        "--max-changes", type=int, default=10_000_000, help="largest Criteo-call stream (10M streams take ~1 h each)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="Criteo-call streams run at once (one process each)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    results = run_all(args.quick, args.max_changes, args.jobs)
    results["seconds"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot.draw(results, args.out / "scaling.png")
    print("\n".join(["", *report.lines(results), ""]))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'scaling.png'} in {results['seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
