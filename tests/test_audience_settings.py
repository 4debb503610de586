"""Settings per audience (issue: beyond the peers): the JSON document in SSM (moto server), validated with the
path of a bad field, used by the real sync handler against the Criteo emulator without a redeploy."""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from audience_sync.audience_config import AudienceSettings, ConfigError, parse
from audience_sync.inbox import Inbox
from audience_sync.ledger import Ledger
from audience_sync.moves import Moves, carry_over
from devtools.lambda_runtime import FakeContext, load_function
from devtools.poller import SCHEDULED_EVENT, outbox_waiting
from tests.conftest import AUDIENCE_PREFIX, Stack
from tests.segment_events import answer, audience_event, sha, signed

MADID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"


def configure(stack: Stack, document: Any) -> None:
    """Write the settings document as an operator would (`aws ssm put-parameter --overwrite`)."""
    value = document if isinstance(document, str) else json.dumps(document)
    stack.aws.client("ssm").put_parameter(
        Name=stack.aws.audience_settings_parameter, Value=value, Type="String", Overwrite=True
    )


def sync(stack: Stack, *payloads: dict[str, Any]) -> None:
    for payload in payloads:
        status, body = answer(stack.invoke_ingest(signed(payload)))
        assert status == 200, body
    stack.poller().drain()


def enter(mid: str, audience: str, user: str, **ids: str) -> dict[str, Any]:
    return audience_event(mid, audience, True, email=ids.get("email"), madid=ids.get("madid"), user_id=user)


def leave(mid: str, audience: str, user: str) -> dict[str, Any]:
    event = audience_event(mid, audience, False, timestamp="2026-11-20T12:00:00Z", email=None, user_id=user)
    return event


# --- the document -----------------------------------------------------------------------------------------


def test_an_empty_document_is_the_behaviour_without_one() -> None:
    for document in ("", "{}", '{"defaults": {}, "audiences": {}}'):
        assert parse(document).settings("cart") == AudienceSettings()


def test_audiences_not_named_get_the_defaults_and_named_ones_override_them() -> None:
    config = parse(
        json.dumps(
            {
                "defaults": {"identifier_types": ["email"], "description": "From Engage"},
                "audiences": {"vip": {"segment_id": "5567", "paused": True}, "cart": {"segment_name": "Carts"}},
            }
        )
    )
    assert config.settings("other") == AudienceSettings(
        description="From Engage", identifier_types=frozenset({"email"})
    )
    assert config.settings("vip").segment_id == "5567" and config.settings("vip").paused
    assert config.settings("vip").identifier_types == frozenset({"email"})
    assert config.settings("cart").segment_name == "Carts" and not config.settings("cart").paused


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("[]", "(document): must be an object"),
        ('{"audience": {}}', "(document).audience: unknown setting (one of advertisers, audiences, defaults, rules)"),
        ('{"audiences": {"cart": {"paused": "yes"}}}', "audiences.cart.paused: must be true or false"),
        ('{"audiences": {"cart": {"identifier_types": ["mail"]}}}', "audiences.cart.identifier_types: must be"),
        ('{"audiences": {"cart": {"segment_id": "abc"}}}', "audiences.cart.segment_id: must be a Criteo segment id"),
        ('{"audiences": {"cart": {"segment_name": ""}}}', "audiences.cart.segment_name: must be a non-empty string"),
        ('{"audiences": {"cart": {"pause": true}}}', "audiences.cart.pause: unknown setting"),
        ('{"defaults": {"segment_id": "1"}}', "defaults.segment_id: unknown setting"),
        ('{"audiences": {"a": {"segment_id": "1"}, "b": {"segment_id": "1"}}}', "two audiences name the same"),
        ('{"audiences": {"a": {"lookalike": {"target_size": 0}}}}', "audiences.a.lookalike.target_size: must be a"),
        ('{"audiences": {"a": {"lookalike": {"size": 5}}}}', "audiences.a.lookalike.size: unknown setting"),
        ('{"defaults": {"lookalike": {}}}', "defaults.lookalike: unknown setting"),
    ],
)
def test_a_bad_document_is_refused_with_the_path_of_the_bad_field(document: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(document)
    assert message in str(refused.value)


# --- used by the sync, without a redeploy -------------------------------------------------------------------


def test_segment_name_and_description_come_from_the_settings(stack: Stack) -> None:
    configure(stack, {"audiences": {"cart": {"segment_name": "Cart abandoners", "description": "Engage carts"}}})
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    segments = stack.criteo.segments()
    assert AUDIENCE_PREFIX + "cart" not in segments
    assert segments["Cart abandoners"]["members"]["email"] == {sha("a@example.com")}
    assert segments["Cart abandoners"]["description"].startswith("Engage carts [segment-criteo-sync deployment=")


def test_a_new_segment_name_renames_the_segment_the_audience_is_sent_to(stack: Stack) -> None:
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    created = stack.criteo.segments()[AUDIENCE_PREFIX + "cart"]["id"]
    configure(stack, {"audiences": {"cart": {"segment_name": "Carts"}}})
    sync(stack, enter("m2", "cart", "u2", email="b@example.com"))  # renamed at the audience's next flush
    segments = stack.criteo.segments()
    assert AUDIENCE_PREFIX + "cart" not in segments and stack.criteo.count("create") == 1
    assert segments["Carts"]["id"] == created
    assert segments["Carts"]["members"]["email"] == {sha("a@example.com"), sha("b@example.com")}


def test_a_new_segment_name_renames_the_segment_of_an_audience_idle_for_hours(stack: Stack) -> None:
    # An audience that changes weekly: its outbox item expired (TTL, an hour after its last flush) and the
    # containers are new. It used to get a new, empty segment under the new name, its members left behind.
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    created = stack.criteo.segments()[AUDIENCE_PREFIX + "cart"]["id"]
    dynamodb = stack.aws.client("dynamodb")
    dynamodb.delete_item(TableName=stack.aws.ledger_table, Key={"pk": {"S": "outbox"}, "sk": {"S": "cart"}})
    stack.sync = load_function("sync", stack.aws.function_env(stack.criteo.url))
    configure(stack, {"audiences": {"cart": {"segment_name": "Carts"}}})
    sync(stack, enter("m2", "cart", "u2", email="b@example.com"))
    segments = stack.criteo.segments()
    assert set(segments) == {"Carts"} and segments["Carts"]["id"] == created
    assert segments["Carts"]["members"]["email"] == {sha("a@example.com"), sha("b@example.com")}


def test_an_existing_segment_id_is_populated_instead_of_one_found_or_created(stack: Stack) -> None:
    existing = stack.criteo.add_foreign_segment("Made in Criteo", advertiser_id=stack.criteo.advertiser_id)
    configure(stack, {"audiences": {"cart": {"segment_id": existing}}})
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    assert stack.criteo.segments()["Made in Criteo"]["members"]["email"] == {sha("a@example.com")}
    assert (stack.criteo.count("create"), stack.criteo.count("search")) == (0, 0)


def test_a_paused_audience_keeps_its_changes_and_sends_them_netted_when_resumed(stack: Stack) -> None:
    configure(stack, {"audiences": {"cart": {"paused": True}}})
    sync(
        stack,
        enter("m1", "cart", "u1", email="a@example.com"),
        enter("m2", "cart", "u2", email="b@example.com"),
        enter("m3", "other", "u3", email="c@example.com"),
    )
    sync(stack, leave("m4", "cart", "u2"))
    assert stack.members("cart") == set() and stack.members("other") == {sha("c@example.com")}
    assert outbox_waiting(stack.aws.client("dynamodb"), stack.aws.ledger_table) == 1
    patches = stack.criteo.count("patch")
    configure(stack, {})
    assert stack.poller().scheduled() == 0
    assert stack.members("cart") == {sha("a@example.com")}
    # Netted to the last operation per identifier: a's add and b's remove (the outbox can't know b never got
    # to Criteo), not b's add.
    assert stack.criteo.count("patch") == patches + 2


def test_identifier_types_per_audience_limit_the_adds_and_never_the_removes(stack: Stack) -> None:
    sync(stack, enter("m1", "cart", "u1", email="a@example.com", madid=MADID))
    assert stack.members("cart", "madid") == {MADID}
    configure(stack, {"audiences": {"cart": {"identifier_types": ["email"]}}})
    sync(stack, enter("m2", "cart", "u2", email="b@example.com", madid="0e9c3b1a-1111-4222-8333-944445555666"))
    assert stack.members("cart", "madid") == {MADID}  # the new madid is not sent
    assert stack.members("cart") == {sha("a@example.com"), sha("b@example.com")}
    sync(stack, leave("m3", "cart", "u1"))
    assert stack.members("cart", "madid") == set()  # the madid sent before the setting is removed
    assert stack.members("cart") == {sha("b@example.com")}


def test_a_bad_document_keeps_the_last_good_one_and_says_where_it_is_wrong(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    configure(stack, {"audiences": {"cart": {"segment_name": "Carts"}}})
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    configure(stack, '{"audiences": {"cart": {"segment_name": "Carts", "paused": "no"}}}')
    with caplog.at_level(logging.ERROR):
        sync(stack, enter("m2", "cart", "u2", email="b@example.com"))
    assert stack.criteo.segments()["Carts"]["members"]["email"] == {sha("a@example.com"), sha("b@example.com")}
    reasons = [getattr(r, "reason", "") for r in caplog.records if "configuration refused" in r.getMessage()]
    assert reasons and "audiences.cart.paused: must be true or false" in reasons[0]


def test_a_configured_segment_id_that_does_not_exist_holds_the_changes_until_fixed(stack: Stack) -> None:
    configure(stack, {"audiences": {"cart": {"segment_id": "999999"}}})
    assert answer(stack.invoke_ingest(signed(enter("m1", "cart", "u1", email="a@example.com"))))[0] == 200
    assert stack.poller().poll_once() == 1  # applied; its flush fails (404) and backs off
    assert outbox_waiting(stack.aws.client("dynamodb"), stack.aws.ledger_table) == 1
    assert stack.criteo.segments() == {}  # nothing created in its place
    configure(stack, {})
    stack.poller().scheduled()
    assert stack.members("cart") == {sha("a@example.com")}


def test_a_lookalike_is_created_once_from_the_audience_segment_and_kept(stack: Stack) -> None:
    configure(stack, {"audiences": {"cart": {"lookalike": {"target_size": 250000}}}})
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"))
    sync(stack, enter("m2", "cart", "u2", email="b@example.com"))
    segments = stack.criteo.segments()
    lookalike = segments[AUDIENCE_PREFIX + "cart (lookalike)"]
    assert (lookalike["type"], lookalike["seed"]) == ("Lookalike", segments[AUDIENCE_PREFIX + "cart"]["id"])
    assert lookalike["target_size"] == 250000
    # A new container (nothing cached) with the audience idle for hours (its outbox item expired) finds it again.
    stack.aws.client("dynamodb").delete_item(
        TableName=stack.aws.ledger_table, Key={"pk": {"S": "outbox"}, "sk": {"S": "cart"}}
    )
    stack.sync = load_function("sync", stack.aws.function_env(stack.criteo.url))
    sync(stack, enter("m3", "cart", "u3", email="c@example.com"))
    assert stack.criteo.count("create") == 2  # the contact list and its lookalike, once each
    assert len(stack.criteo.segments()) == 2


# --- several advertisers ------------------------------------------------------------------------------------

EU = {"client_id": "eu-app", "client_secret": "eu-app-secret", "advertiser_id": "777"}


def test_audiences_go_to_their_advertiser_with_its_own_credentials_token_and_budget(stack: Stack) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    stack.aws.add_advertiser("brand_eu", EU)
    configure(
        stack, {"advertisers": {"brand_eu": {"calls_per_minute": 100}}, "audiences": {"eu": {"advertiser": "brand_eu"}}}
    )
    sync(stack, enter("m1", "eu", "u1", email="a@example.com"), enter("m2", "cart", "u2", email="b@example.com"))
    sync(stack, enter("m3", "eu", "u3", email="c@example.com"))
    eu_segments = stack.criteo.segments(EU["advertiser_id"])
    assert set(eu_segments) == {AUDIENCE_PREFIX + "eu"}
    assert eu_segments[AUDIENCE_PREFIX + "eu"]["members"]["email"] == {sha("a@example.com"), sha("c@example.com")}
    assert set(stack.criteo.segments()) == {AUDIENCE_PREFIX + "cart"}
    # One token per app, cached across invocations of the container.
    assert stack.criteo.tokens_issued == {EU["client_id"]: 1, stack.criteo.client_id: 1}
    # One budget item per app, keyed by a hash: no client id in the table.
    items = stack.aws.client("dynamodb").scan(TableName=stack.aws.ledger_table)["Items"]
    budgets = [item for item in items if item["pk"]["S"] == "budget"]
    assert len(budgets) == 2
    text = json.dumps(items, default=repr)  # (inbox entries are compressed bytes)
    assert EU["client_id"] not in text and stack.criteo.client_id not in text


def test_an_advertiser_without_a_readable_secret_holds_only_its_own_audiences(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"eu": {"advertiser": "brand_eu"}}})
    for payload in (enter("m1", "eu", "u1", email="a@example.com"), enter("m2", "cart", "u2", email="b@example.com")):
        assert answer(stack.invoke_ingest(signed(payload)))[0] == 200
    assert stack.poller().poll_once() == 2  # two messages (one per request), applied
    assert stack.members("cart") == {sha("b@example.com")}
    assert stack.criteo.segments(EU["advertiser_id"]) == {}
    assert outbox_waiting(stack.aws.client("dynamodb"), stack.aws.ledger_table) == 1
    assert '"criteo_credentials_errors":[1.0]' in capsys.readouterr().out
    stack.aws.add_advertiser("brand_eu", EU)  # the operator creates the secret: nothing to redeploy
    stack.poller().scheduled()
    assert stack.criteo.segments(EU["advertiser_id"])[AUDIENCE_PREFIX + "eu"]["members"]["email"] == {
        sha("a@example.com")
    }


def test_a_flush_arms_no_tick_when_only_audiences_without_credentials_wait(stack: Stack) -> None:
    # Their credentials are read again by the minute schedule's invocation: a pass every few seconds would only
    # bill Lambda time (and did: ~50 s a minute for as long as the secret was missing).
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"eu": {"advertiser": "brand_eu"}}})
    assert answer(stack.invoke_ingest(signed(enter("m1", "eu", "u1", email="a@example.com"))))[0] == 200
    assert stack.poller().poll_once() == 1
    scheduled = stack.sync.handler(SCHEDULED_EVENT, FakeContext(timeout_seconds=60))
    assert scheduled["outbox_audiences"] == 1
    assert scheduled["outbox_without_credentials"] == 1
    assert scheduled["flush_ticks_sent"] == 0


def test_an_audience_moved_to_another_advertiser_gets_its_segment_there(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    stack.aws.add_advertiser("brand_eu", EU)
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"eu": {"advertiser": "brand_eu"}}})
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"), enter("m0", "eu", "u0", email="z@example.com"))
    configure(
        stack,
        {
            "advertisers": {"brand_eu": {}},
            "audiences": {"cart": {"advertiser": "brand_eu", "lookalike": {}}, "eu": {"advertiser": "brand_eu"}},
        },
    )
    with caplog.at_level(logging.WARNING):
        sync(stack, enter("m2", "cart", "u2", email="b@example.com"))
    # The move is logged (and a new audience's first flush is no move).
    moves = [r for r in caplog.records if r.getMessage().startswith("audience moved")]
    assert [(getattr(r, "audience", ""), getattr(r, "was", "")) for r in moves] == [("cart", "default")]
    # Its members from before are carried over by the scheduled flush: the new segment holds every member.
    moved = stack.criteo.segments(EU["advertiser_id"])
    assert moved[AUDIENCE_PREFIX + "cart"]["members"]["email"] == {sha("a@example.com"), sha("b@example.com")}
    assert moved[AUDIENCE_PREFIX + "cart (lookalike)"]["seed"] == moved[AUDIENCE_PREFIX + "cart"]["id"]
    # The first advertiser's segment is left as it was.
    assert stack.members("cart") == {sha("a@example.com")}
    assert moved[AUDIENCE_PREFIX + "eu"]["members"]["email"] == {sha("z@example.com")}  # not moved: untouched


def test_an_advertiser_the_settings_do_not_declare_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"audiences.eu.advertiser: 'brand_eu' is not in advertisers \(default\)"):
        parse('{"audiences": {"eu": {"advertiser": "brand_eu"}}}')
    with pytest.raises(ConfigError, match=r"advertisers\.a b: a name is 1-64 letters"):
        parse('{"advertisers": {"a b": {}}}')
    with pytest.raises(ConfigError, match=r"advertisers\.eu\.calls_per_minute: must be a whole number"):
        parse('{"advertisers": {"eu": {"calls_per_minute": 0}}}')
    assert parse('{"advertisers": {"eu": {"calls_per_minute": 50}}}').calls_per_minute == {"eu": 50}


def test_the_documented_examples_are_valid_documents() -> None:
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/audience-settings.md"):
        text = (root / doc).read_text()
        blocks = [b for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL) if '"audiences"' in b]
        assert blocks, doc
        for block in blocks:
            config = parse(block)
            assert config.audiences and config.rules and config.calls_per_minute, doc


def test_a_move_is_carried_over_a_page_at_a_time_and_a_change_meanwhile_is_never_overtaken(stack: Stack) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    stack.aws.add_advertiser("brand_eu", EU)
    sync(stack, *[enter(f"m{i}", "cart", f"u{i}", email=f"u{i}@example.com") for i in range(10)])
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"cart": {"advertiser": "brand_eu"}}})
    for payload in (enter("m10", "cart", "u10", email="u10@example.com"), leave("x3", "cart", "u3")):
        assert answer(stack.invoke_ingest(signed(payload)))[0] == 200
    stack.poller().poll_once()  # applied and flushed to the new advertiser: the move starts
    dynamodb = stack.aws.client("dynamodb")
    moves = Moves(dynamodb, stack.aws.ledger_table)
    moves.page_items = 4  # a few items per Scan page (the table holds ~25)
    ledger = Ledger(dynamodb, stack.aws.ledger_table, lock_seconds=60)
    inbox = Inbox(dynamodb, stack.aws.ledger_table, lock_seconds=60)
    invocations = 0
    while moves.pending():
        one_page = partial(next, iter([True]), False)  # one page per "invocation"
        counts = carry_over(moves, ledger, inbox, one_page, lock_wait_seconds=1)
        invocations += 1
        if invocations == 3:  # a member leaves while the move is under way (carried already or not)
            assert answer(stack.invoke_ingest(signed(leave("x7", "cart", "u7"))))[0] == 200
            stack.poller().poll_once()
        assert counts["moves_pending"] == (1 if moves.pending() else 0)
    assert invocations > 3
    stack.poller().drain()
    moved = stack.criteo.segments(EU["advertiser_id"])[AUDIENCE_PREFIX + "cart"]["members"]["email"]
    assert moved == {sha(f"u{i}@example.com") for i in range(11) if i not in (3, 7)}


def test_an_audience_moved_by_the_settings_alone_moves_without_waiting_for_a_change_of_it(stack: Stack) -> None:
    stack.criteo.add_app(EU["client_id"], EU["client_secret"], EU["advertiser_id"])
    stack.aws.add_advertiser("brand_eu", EU)
    sync(stack, enter("m1", "cart", "u1", email="a@example.com"), enter("m2", "vip", "u2", email="b@example.com"))
    configure(stack, {"advertisers": {"brand_eu": {}}, "audiences": {"cart": {"advertiser": "brand_eu"}}})
    assert stack.poller().scheduled() == 0  # no change of cart came: the schedule moved it and carried it over
    moved = stack.criteo.segments(EU["advertiser_id"])
    assert set(moved) == {AUDIENCE_PREFIX + "cart"}
    assert moved[AUDIENCE_PREFIX + "cart"]["members"]["email"] == {sha("a@example.com")}
    assert stack.members("cart") == {sha("a@example.com")} and stack.members("vip") == {sha("b@example.com")}
    patches = stack.criteo.count("patch")
    assert stack.poller().scheduled() == 0 and stack.criteo.count("patch") == patches  # moved once
