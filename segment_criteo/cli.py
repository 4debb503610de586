"""segment-criteo: is each Criteo audience right, how well does it match, and repair it when it isn't.

Works on a deployed stack (`--stack NAME`, with your AWS credentials and region) or on the local stack
(`--local`, what `make serve` runs), the same way. Every verb prints JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from audience_sync.criteo.errors import CriteoError
from segment_criteo import backfill, dlq, resync, status
from segment_criteo.check import check
from segment_criteo.deployment import Deployment
from segment_criteo.target import Target, TargetError, from_stack, local

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
PIPED_WIDTH = 200  # a table piped to a file or a test is not cut to 80 columns


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "")


@contextmanager
def progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar with rate and ETA on stderr (none with --json or without a terminal); yields `advance`."""
    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def target_of(args: argparse.Namespace) -> Target:
    """The deployment the options name."""
    if args.local:
        return local(args.aws_endpoint, args.criteo_url, args.webhook_url, args.prefix)
    if not args.stack:
        raise TargetError("name the deployment: --stack NAME (AWS), or --local (make serve)")
    return from_stack(args.stack, args.region, args.profile)


def _status(args: argparse.Namespace, deployment: Deployment) -> int:
    report = status.status(deployment, args.audience or None)
    if args.json:
        out.print_json(json.dumps(report))
        return 0
    table = Table(
        "audience",
        "advertiser",
        "segment",
        "users in",
        "identifiers",
        "pending",
        "Criteo: ids / matched / rate",
        "lookalike",
    )
    for row in report["audiences"]:
        stats = row["criteo"]
        criteo = stats.get("error") or (
            " / ".join(str(stats.get(k, "-")) for k in ("numberOfIdentifiers", "numberOfMatches", "matchRate"))
            if stats
            else "-"
        )
        pending = f"{row['pending']} ({row['oldest_pending_seconds']} s)" if row["pending"] else "0"
        table.add_row(
            row["audience"] + (" (paused)" if row["paused"] else ""),
            row["advertiser"] + (" (carrying members over)" if row["carrying_over"] else ""),
            f"{row['segment_name']} [{row['segment_id'] or 'none yet'}]",
            str(row["users_in"]),
            ", ".join(f"{t} {n}" for t, n in row["identifiers"].items()) or "-",
            pending,
            criteo,
            row["lookalike_id"] or "-",
        )
    out.print(table)
    out.print(f"Dead-letter queue: {report['dead_letters']} message(s)")
    for reason, count in report["dead_letter_reasons"].items():
        out.print(f"  {count} x {reason}")
    return 0


def _resync(args: argparse.Namespace, deployment: Deployment) -> int:
    if not args.all and not args.audience:
        raise TargetError("name an AUDIENCE, or --all")
    plans = resync.plan(deployment, None if args.all else [args.audience], args.mode)
    summary: list[dict[str, Any]] = [
        {
            "audience": p.audience,
            "segment": p.segment_id or "(created)",
            "mode": p.mode,
            "resumed": p.resumed,
            "empty_first": p.empty_first,
            "identifiers": {t: len(v) for t, v in p.identifiers.items()},
            "calls": p.calls,
        }
        for p in plans
    ]
    if args.dry_run:
        if args.json:
            out.print_json(json.dumps({"dry_run": True, "plans": summary}))
        else:
            for row in summary:
                empty = "empty it, then " if row["empty_first"] else ""
                ids = ", ".join(f"{n} {t}" for t, n in row["identifiers"].items()) or "nothing"
                resumed = " (resuming)" if row["resumed"] else ""
                out.print(
                    f"{row['audience']}{resumed}: {empty}add {ids} to segment {row['segment']}: {row['calls']} call(s)"
                )
        return 0
    with progress("resync", sum(p.total for p in plans), args.json) as advance:
        done = resync.run(deployment, plans, advance)
    if args.json:
        out.print_json(json.dumps({"resynced": done}))
    else:
        for row in done:
            held = row["identifiers"] or "nothing"
            out.print(f"{row['audience']}: segment {row['segment_id']} now holds the ledger's {held}")
    return 0


def _backfill(args: argparse.Namespace, deployment: Deployment) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise TargetError(f"{path}: no such file")
    with progress("backfill", backfill.count_rows(path), args.json) as advance:
        report = backfill.backfill(deployment.target, path, args.audience, args.timestamp, advance)
    if args.json:
        out.print_json(json.dumps(report.__dict__))
    else:
        out.print(f"{report.rows} rows: {report.accepted} sent into {args.audience}, {len(report.rejected)} rejected")
        for row in report.rejected[: args.show]:
            out.print(f"  line {row['line']}: {row['reason']}")
        if len(report.rejected) > args.show:
            out.print(f"  ... and {len(report.rejected) - args.show} more (--json lists them all)")
    return 1 if report.rejected else 0


def _dlq(args: argparse.Namespace, deployment: Deployment) -> int:
    parked = dlq.parked_reasons(deployment.target)
    moved = dlq.redrive_target(deployment.target) if args.redrive else None
    if args.json:
        out.print_json(
            json.dumps(
                {
                    **parked,
                    **(
                        {"redrive": {"method": moved.method, "moved": moved.moved, "task": moved.task_handle}}
                        if moved
                        else {}
                    ),
                }
            )
        )
        return 0
    out.print(f"Dead-letter queue: {parked['dead_letters']} message(s)")
    for reason, count in parked["dead_letter_reasons"].items():
        out.print(f"  {count} x {reason}")
    if moved is not None:
        how = (
            f"StartMessageMoveTask {moved.task_handle}"
            if moved.method == "move-task"
            else f"moved {moved.moved} by hand"
        )
        out.print(f"Redrive: {how}, back to {deployment.target.queue_url}")
    return 0


def _check(args: argparse.Namespace, deployment: Deployment) -> int:
    results = check(deployment)
    if args.json:
        out.print_json(json.dumps(results))
    else:
        for row in results:
            out.print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['check']}: {row['detail']} ({row['seconds']} s)")
    return 0 if all(row["ok"] for row in results) else 1


def parser() -> argparse.ArgumentParser:
    """The command line: a verb, and the deployment options after it."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("deployment")
    where.add_argument("--stack", help="the CloudFormation stack name (AWS)")
    where.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    where.add_argument("--profile", help="AWS profile")
    where.add_argument("--local", action="store_true", help="the local stack of `make serve` instead")
    where.add_argument("--aws-endpoint", default="http://127.0.0.1:4566", help=argparse.SUPPRESS)
    where.add_argument("--criteo-url", default="http://127.0.0.1:8642", help=argparse.SUPPRESS)
    where.add_argument("--webhook-url", default="http://127.0.0.1:3000/segment", help=argparse.SUPPRESS)
    where.add_argument("--prefix", default="local", help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    top = argparse.ArgumentParser(
        prog="segment-criteo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, summary: str, run: Callable[[argparse.Namespace, Deployment], int]) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(run=run)
        return sub

    about = "per audience: segment, ledger members, pending changes, Criteo's statistics, lookalike; the DLQ"
    sub = verb("status", about, _status)
    sub.add_argument("audience", nargs="*", help="audience keys (default: all)")
    sub = verb("resync", "make Criteo's segment equal the ledger (within the call budget; resumable)", _resync)
    sub.add_argument("audience", nargs="?", help="the audience key")
    sub.add_argument("--all", action="store_true", help="every audience")
    sub.add_argument(
        "--mode",
        choices=(resync.REPLACE, resync.ADD_ONLY),
        default=resync.REPLACE,
        help="replace: empty, then add the ledger's identifiers (removes extras); add: only add them",
    )
    sub.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")
    sub = verb(
        "backfill", "users from a warehouse export (CSV or JSON lines) enter an audience through the webhook", _backfill
    )
    sub.add_argument(
        "file", help="CSV with a header, or .jsonl: user_id and any of email, phone, madid, anonymous_id, timestamp"
    )
    sub.add_argument("--audience", required=True, help="the audience key")
    sub.add_argument("--timestamp", help="the export's time, ISO 8601 (default: now); a `timestamp` column wins")
    sub.add_argument("--show", type=int, default=20, help="rejected rows listed (default 20)")
    sub = verb("dlq", "what the dead-letter queue holds and why", _dlq)
    sub.add_argument("--redrive", action="store_true", help="move it back to the queue (StartMessageMoveTask on AWS)")
    verb("check", "settings, each advertiser's credentials and token, and a signed test event to the webhook", _check)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one verb; exit 0 when it did what was asked, 1 when something it checked or sent failed, 2 on a
    usage or configuration error."""
    args = parser().parse_args(argv)
    out.width = out.width if out.is_terminal else PIPED_WIDTH
    try:
        return int(args.run(args, Deployment(target_of(args))))
    except TargetError as error:
        err.print(f"segment-criteo {args.verb}: {error}")
        return 2
    except CriteoError as error:
        err.print(f"segment-criteo {args.verb}: Criteo: {error} (a resync run again resumes where it stopped)")
        return 1
    except KeyboardInterrupt:
        err.print(f"segment-criteo {args.verb}: interrupted (a resync run again resumes where it stopped)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
