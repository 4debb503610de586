"""`python -m bench.one_stream CHANGES AUDIENCES {burst,steady} [--into bench/results.json]`: one Criteo-call
stream of benchmark 1, its row put into a results file (replacing that stream's row, if any), with the cost and
the plot redone. The 10M streams take 40-60 min each on the 2-core machine (TMPDIR=/dev/shm): they are run one at a time
this way, not in one `make bench`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from bench import cost, criteo_calls, plot  # noqa: E402
from bench.streams import StreamSpec  # noqa: E402


def merged(results: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """`results` with `row` in place of the row of the same stream and mode (or added), rows in the benchmark's
    order, and the cost recomputed."""
    rows = [r for r in results["criteo_calls"] if (r["stream"], r["mode"]) != (row["stream"], row["mode"])]
    rows.append(row)
    rows.sort(key=lambda r: (r["changes"], r["audiences"], r["mode"] != "burst"))
    out = {**results, "criteo_calls": rows}
    out["cost"] = cost.run(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the stream, merge it, write the file and the plot beside it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int)
    parser.add_argument("audiences", type=int)
    parser.add_argument("mode", choices=("burst", "steady"))
    parser.add_argument("--into", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    row = criteo_calls.one_stream(StreamSpec(args.changes, args.audiences), args.mode == "burst")
    row["measured"] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit.strip()}
    results = merged(json.loads(args.into.read_text()), row)
    args.into.write_text(json.dumps(results, indent=2) + "\n")
    plot.draw(results, args.into.parent / "scaling.png")
    print(f"{row['stream']} {row['mode']}: {row['calls']['patch']} PATCHes, window minimum {row['window_minimum']}")
    print(f"wrote {args.into} and {args.into.parent / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
