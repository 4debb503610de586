"""The operator command (`segment-criteo`, issue: an operator's command line) against moto server, the Criteo
emulator and the local gateway in front of the real ingest handler: each verb, its JSON, and its repairs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audience_sync.records import pack_changes, unpack_changes
from devtools.gateway import LocalGateway
from devtools.lambda_runtime import FakeContext
from segment_criteo import resync
from segment_criteo.cli import main
from segment_criteo.deployment import Deployment
from segment_criteo.target import Target, local
from tests.conftest import AUDIENCE_PREFIX, Stack
from tests.segment_events import audience_event, sha, signed
from tests.test_audience_settings import EU, configure
from tests.test_inbox import enter as inbox_enter
from tests.test_inbox import new_sync

MADID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"


@pytest.fixture
def webhook(stack: Stack) -> Iterator[str]:
    gateway = LocalGateway(stack.ingest.handler, 0)
    gateway.start()
    yield gateway.url
    gateway.stop()


@pytest.fixture
def target(stack: Stack, webhook: str) -> Target:
    prefix = stack.aws.ledger_table.removesuffix("-ledger")
    return local(stack.aws.endpoint, stack.criteo.url, webhook, prefix)


def options(target: Target) -> list[str]:
    return [
        "--local",
        *("--aws-endpoint", str(target.endpoint), "--criteo-url", target.criteo_base_url),
        *("--webhook-url", target.webhook_url, "--prefix", target.ledger_table.removesuffix("-ledger")),
    ]


def run_json(capsys: pytest.CaptureFixture[str], target: Target, *argv: str) -> tuple[int, Any]:
    """Run a verb with --json; (exit code, the JSON it printed)."""
    capsys.readouterr()
    code = main([*argv, *options(target), "--json"])
    # The command prints indented JSON; the in-process handlers behind the gateway log one-line JSON beside it.
    lines = capsys.readouterr().out.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("{", "["))
    end = next(i for i in range(start, len(lines)) if lines[i] in ("}", "]"))
    return code, json.loads("\n".join(lines[start : end + 1]))


def enter(mid: str, audience: str, user: str, madid: str | None = None) -> dict[str, Any]:
    return audience_event(mid, audience, True, email=f"{user}@example.com", madid=madid, user_id=user)


def synced(stack: Stack, *events: dict[str, Any]) -> None:
    for event in events:
        assert stack.invoke_ingest(signed(event))["statusCode"] == 200
    stack.poller().drain()


@pytest.mark.parametrize("verb", ["status", "resync", "backfill", "dlq", "check"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0 and "--json" in capsys.readouterr().out


def test_status_shows_ledger_pending_criteo_statistics_lookalike_and_dead_letters(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(stack, {"audiences": {"vip": {"lookalike": {}}}})
    synced(stack, enter("m1", "cart", "u1", madid=MADID), enter("m2", "cart", "u2"), enter("m3", "vip", "u3"))
    stack.aws.client("sqs").send_message(
        QueueUrl=stack.aws.dead_letter_queue_url,
        MessageBody="{}",
        MessageAttributes={"reason": {"DataType": "String", "StringValue": "undecodable message: test"}},
    )
    code, report = run_json(capsys, target, "status")
    assert code == 0
    rows = {row["audience"]: row for row in report["audiences"]}
    segments = stack.criteo.segments()
    cart = rows["cart"]
    assert (cart["users_in"], cart["identifiers"], cart["pending"]) == (2, {"email": 2, "madid": 1}, 0)
    assert cart["segment_id"] == segments[AUDIENCE_PREFIX + "cart"]["id"] and cart["advertiser"] == "default"
    assert cart["criteo"]["numberOfIdentifiers"] == 3 and cart["last_applied"] is not None
    assert rows["vip"]["lookalike_id"] == segments[AUDIENCE_PREFIX + "vip (lookalike)"]["id"]
    assert report["dead_letters"] == 1 and report["dead_letter_reasons"] == {"undecodable message: test": 1}
    # The peek leaves the message where it was.
    assert stack.queue_length(stack.aws.dead_letter_queue_url) == 1
    # One audience, as a table.
    assert main(["status", "cart", *options(target)]) == 0
    assert "segment_cart" in capsys.readouterr().out


def test_status_counts_changes_applied_but_not_gathered_from_the_inbox_yet(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    # Applied by a sync invocation, not gathered yet by the flusher: status shows them waiting.
    changes = [inbox_enter("cart", n) for n in range(3)]
    assert not new_sync(stack).run([("m1", *pack_changes(changes))]).failed
    code, report = run_json(capsys, target, "status", "cart")
    [row] = report["audiences"]
    assert code == 0 and (row["users_in"], row["pending"]) == (3, 3)
    assert row["last_applied"] is not None and row["segment_id"] == ""


def test_resync_repairs_a_segment_emptied_behind_our_back_and_one_with_extra_members(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    synced(stack, enter("m1", "cart", "u1", madid=MADID), enter("m2", "cart", "u2"), enter("m3", "vip", "u3"))
    cart = stack.criteo.state.find(stack.criteo.advertiser_id, AUDIENCE_PREFIX + "cart")
    vip = stack.criteo.state.find(stack.criteo.advertiser_id, AUDIENCE_PREFIX + "vip")
    assert cart is not None and vip is not None
    stack.criteo.state.empty(cart)  # someone emptied it in Criteo's UI
    stack.criteo.state.amend(vip, "add", "email", [sha("intruder@example.com")])  # added behind our back
    code, dry = run_json(capsys, target, "resync", "--all", "--dry-run")
    assert code == 0 and {p["audience"]: p["calls"] for p in dry["plans"]} == {"cart": 3, "vip": 2}
    assert stack.members("cart") == set()  # a dry run sends nothing
    patches = stack.criteo.count("patch")
    code, done = run_json(capsys, target, "resync", "--all")
    assert code == 0 and [row["audience"] for row in done["resynced"]] == ["cart", "vip"]
    assert stack.members("cart") == {sha("u1@example.com"), sha("u2@example.com")}
    assert stack.members("cart", "madid") == {MADID}
    assert stack.members("vip") == {sha("u3@example.com")}
    assert stack.criteo.count("delete") == 2 and stack.criteo.count("patch") == patches + 3
    assert stack.criteo.spec_violations == []


def test_status_and_resync_after_a_rename_use_the_audiences_segment_until_the_flush_renames_it(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    synced(stack, enter("m1", "cart", "u1"))
    created = stack.criteo.segments()[AUDIENCE_PREFIX + "cart"]["id"]
    configure(stack, {"audiences": {"cart": {"segment_name": "Carts"}}})  # renamed at the next flush
    code, report = run_json(capsys, target, "status", "cart")
    row = report["audiences"][0]
    assert code == 0 and (row["segment_id"], row["segment_name"]) == (created, AUDIENCE_PREFIX + "cart")
    stack.criteo.state.empty(stack.criteo.state.find(stack.criteo.advertiser_id, AUDIENCE_PREFIX + "cart"))
    code, _ = run_json(capsys, target, "resync", "cart", "--mode", "add")
    assert code == 0 and stack.criteo.count("create") == 1  # no segment "Carts" made beside it
    synced(stack, enter("m2", "cart", "u2"))
    assert set(stack.criteo.segments()) == {"Carts"}
    assert stack.criteo.segments()["Carts"]["members"]["email"] == {sha("u1@example.com"), sha("u2@example.com")}


def test_status_shows_an_audience_whose_members_are_being_carried_over_to_another_advertiser(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    stack.aws.add_advertiser("brand_eu", EU)
    synced(stack, enter("m1", "cart", "u1"))
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"cart": {"advertiser": "brand_eu"}}})
    assert stack.invoke_ingest(signed(enter("m2", "cart", "u2")))["statusCode"] == 200
    stack.poller().poll_once()  # the batch's flush moves it; the schedule carries its members over
    _, report = run_json(capsys, target, "status", "cart")
    assert (report["audiences"][0]["advertiser"], report["audiences"][0]["carrying_over"]) == ("brand_eu", True)
    stack.poller().drain()
    _, report = run_json(capsys, target, "status", "cart")
    assert report["audiences"][0]["carrying_over"] is False and report["audiences"][0]["users_in"] == 2
    members = stack.criteo.segments(EU["advertiser_id"])[AUDIENCE_PREFIX + "cart"]["members"]["email"]
    assert members == {sha("u1@example.com"), sha("u2@example.com")}


def test_an_interrupted_resync_resumes_without_sending_a_chunk_twice(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    synced(stack, enter("m1", "cart", "u1", madid=MADID), enter("m2", "cart", "u2"))
    stack.criteo.patch_log.clear()
    deployment = Deployment(target)
    plans = resync.plan(deployment, ["cart"], resync.REPLACE)
    assert plans[0].identifiers == {"email": sorted([sha("u1@example.com"), sha("u2@example.com")]), "madid": [MADID]}

    def ctrl_c(sent: int) -> None:  # the operator interrupts it after the first chunk (the emails)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resync.run(deployment, plans, ctrl_c)
    # The sync is not held: the audience's lease was released, and u3's enter goes to Criteo as usual.
    synced(stack, enter("m3", "cart", "u3"))
    _, resumed = run_json(capsys, target, "resync", "cart", "--dry-run")
    plan = resumed["plans"][0]
    assert plan["resumed"] and not plan["empty_first"]
    # What sorts after the last email sent is sent again by the resumed run (harmless); nothing before it.
    late = int(sha("u3@example.com") > max(sha("u1@example.com"), sha("u2@example.com")))
    assert plan["identifiers"] == {"madid": 1, **({"email": 1} if late else {})}
    assert run_json(capsys, target, "resync", "cart")[0] == 0
    sent = [(p["operation"], p["identifier_type"]) for p in stack.criteo.patch_log]
    assert sent.count(("add", "email")) == 2 + late  # the first run's chunk, u3's enter by the sync, maybe u3 again
    assert sent.count(("add", "madid")) == 1 and stack.criteo.count("delete") == 1
    assert stack.members("cart") == {sha(f"u{n}@example.com") for n in (1, 2, 3)}
    assert stack.members("cart", "madid") == {MADID}


def write_rows(path: Path, count: int, bad_every: int) -> set[int]:
    """A CSV export of `count` users; every `bad_every`-th row's email is not one (its line numbers)."""
    bad = set()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "email", "madid"])
        for n in range(count):
            line = n + 2
            if n % bad_every == bad_every - 1:
                writer.writerow([f"u{n}", "not-an-email", ""])
                bad.add(line)
            else:
                writer.writerow([f"u{n}", f"user{n}@example.com", ""])
    return bad


def test_a_backfill_of_100k_rows_reports_the_bad_rows_by_line_and_queues_the_rest(
    stack: Stack, target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.csv"
    bad = write_rows(export, 100_000, bad_every=100)
    code, report = run_json(
        capsys, target, "backfill", str(export), "--audience", "loyal", "--timestamp", "2026-11-20T10:00:00Z"
    )
    assert code == 1 and report["rows"] == 100_000 and report["accepted"] == 99_000
    assert {row["line"] for row in report["rejected"]} == bad
    assert all("no usable identifier" in row["reason"] for row in report["rejected"])
    changes = [c for body in stack.queued_bodies() for c in unpack_changes(json.dumps(body["body"]))]
    assert len(changes) == 99_000 and {c.audience_key for c in changes} == {"loyal"}
    assert {c.operation for c in changes} == {"add"}


def test_a_backfill_enters_users_like_engage_and_running_it_again_changes_nothing(
    stack: Stack, target: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.jsonl"
    rows = [
        {"user_id": "u1", "email": "u1@example.com"},
        {"user_id": "u2", "madid": MADID},
        {"email": "nobody@example.com"},
        "not json",
        {"user_id": "u4", "email": "u4@example.com", "timestamp": "2026-11-20T09:00:00Z"},
    ]
    export.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    code, report = run_json(capsys, target, "backfill", str(export), "--audience", "loyal")
    assert code == 1 and report["accepted"] == 3
    assert report["rejected"] == [{"line": 3, "reason": "no user_id"}, {"line": 4, "reason": "not JSON"}]
    stack.poller().drain()
    assert stack.members("loyal") == {sha("u1@example.com"), sha("u4@example.com")}
    assert stack.members("loyal", "madid") == {MADID}
    patches = stack.criteo.count("patch")
    run_json(capsys, target, "backfill", str(export), "--audience", "loyal")
    stack.poller().drain()
    assert stack.criteo.count("patch") == patches  # the same messageIds: duplicates, dropped by the ledger


def test_dlq_lists_by_reason_and_redrive_moves_the_messages_back(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = stack.aws.client("sqs")
    for reason in ("criteo refused: invalid-identifiers", "criteo refused: invalid-identifiers", None):
        attributes = {"reason": {"DataType": "String", "StringValue": reason}} if reason else {}
        sqs.send_message(QueueUrl=stack.aws.dead_letter_queue_url, MessageBody="{}", MessageAttributes=attributes)
    code, parked = run_json(capsys, target, "dlq")
    assert parked["dead_letter_reasons"] == {"criteo refused: invalid-identifiers": 2, "max receives reached": 1}
    code, moved = run_json(capsys, target, "dlq", "--redrive")
    assert code == 0 and moved["redrive"]["moved"] == 3
    assert stack.queue_length(stack.aws.dead_letter_queue_url) == 0 and stack.queue_length(stack.aws.queue_url) == 3


def test_check_passes_on_a_working_deployment_and_names_what_is_broken(
    stack: Stack, target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    code, results = run_json(capsys, target, "check")
    assert code == 0 and [r["check"] for r in results] == ["settings document", "advertiser default", "webhook"]
    assert all(r["ok"] for r in results)
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"eu": {"advertiser": "brand_eu"}}})
    code, results = run_json(capsys, target, "check")
    failed = [r for r in results if not r["ok"]]
    assert code == 1 and [r["check"] for r in failed] == ["advertiser brand_eu"]
    assert "criteo/brand_eu: can't be read" in failed[0]["detail"]
    stack.aws.add_advertiser("brand_eu", {"client_id": "nope", "client_secret": "s3cr3t", "advertiser_id": "777"})
    code, results = run_json(capsys, target, "check")
    failed = [r for r in results if not r["ok"]]
    assert code == 1 and "refused the client credentials" in failed[0]["detail"]
    assert "s3cr3t" not in json.dumps(results)


def test_a_deployment_that_is_not_named_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 2
    assert "--stack NAME" in capsys.readouterr().err


def test_the_hourly_schedule_reads_criteos_match_statistics_into_metrics(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    synced(stack, enter("m1", "cart", "u1", madid=MADID), enter("m2", "cart", "u2"), enter("m3", "vip", "u3"))
    stack.criteo.add_foreign_segment("not ours", advertiser_id=stack.criteo.advertiser_id)  # not measured
    capsys.readouterr()
    answer = stack.sync.handler({"match_statistics": True}, FakeContext(60))
    assert answer == {"segments_measured": 2, "match_rate_percent": 100}
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    (emitted,) = [m for m in metrics if "segment_identifiers" in m]
    figures = (emitted["segment_identifiers"], emitted["segment_matches"], emitted["lowest_match_rate_percent"])
    assert figures == ([4.0], [4.0], [100.0])  # EMF lists the values
    assert stack.criteo.count("statistics") == 2
