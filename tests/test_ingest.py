"""Ingest handler against moto server: accepted events become records, every bad input a precise 4xx."""

from __future__ import annotations

import base64
import hashlib
import json
import logging

import pytest

from audience_sync.config import IngestSettings
from audience_sync.records import unpack_changes
from devtools.sample_events import http_event
from tests.conftest import Stack, make_stack
from tests.segment_events import answer, audience_event, signed, user_hash

JANE_HASH = hashlib.sha256(b"jane.doe@example.com").hexdigest()


def records_in(stack: Stack) -> list[list[object]]:
    return [row for message in stack.queued_bodies() for row in message["body"]["r"]]


def test_single_event_becomes_one_normalized_hashed_record(stack: Stack) -> None:
    event = audience_event("m1", "cart_abandoners", True, email="  Jane.Doe@Example.COM ", user_id="u_123")
    status, body = answer(stack.invoke_ingest(signed(event)))
    assert status == 200
    assert body == {"accepted": 1, "ignored": 0, "rejected": 0, "records": 1, "messages": 1, "errors": []}
    assert records_in(stack) == [
        ["cart_abandoners", "", "add", user_hash("u_123"), 1795168800000, "m1", {"email": [JANE_HASH]}]
    ]


def test_array_and_batch_envelope_give_one_record_per_event(stack: Stack) -> None:
    madid = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    events = [
        audience_event("m1", "a", True, madid=madid),
        audience_event("m2", "b", False, email="x@example.org"),
        {"type": "track", "event": "Order Completed", "messageId": "m3", "timestamp": "2026-11-20T10:00:00Z"},
    ]
    for payload in (events, {"batch": events}):
        status, body = answer(stack.invoke_ingest(signed(payload)))
        assert status == 200
        assert (body["accepted"], body["ignored"], body["rejected"], body["records"]) == (2, 1, 0, 2)
        rows = sorted(records_in(stack), key=lambda r: str(r[0]))
        assert [(r[0], r[2], sorted(r[6])) for r in rows] == [
            ("a", "add", ["email", "madid"]),
            ("b", "remove", ["email"]),
        ]
        assert rows[0][6]["madid"] == [madid.lower()]


def test_identify_audience_trait_and_base64_body(stack: Stack) -> None:
    event = {
        "type": "identify",
        "messageId": "i1",
        "timestamp": "2026-11-20T10:00:00+01:00",
        "userId": "u_9",
        "traits": {"vip": False, "email": "ana@example.net"},
        "context": {"personas": {"computation_class": "audience", "computation_key": "vip"}},
    }
    status, body = answer(stack.invoke_ingest(signed(event, base64_body=True)))
    assert status == 200 and body["accepted"] == 1
    assert records_in(stack)[0][:4] == ["vip", "", "remove", user_hash("u_9")]


def test_hashing_off_keeps_normalized_email(moto_server, criteo) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo, env={"HASH_EMAILS": "false"})
    answer(stack.invoke_ingest(signed(audience_event("m1", "a", True, email=" A.B@Example.com"))))
    assert records_in(stack)[0][6] == {"email": ["a.b@example.com"]}


def test_large_request_is_packed_into_few_messages(stack: Stack) -> None:
    events = [audience_event(f"m{i}", "big", True, email=f"user{i}@example.com") for i in range(4000)]
    status, body = answer(stack.invoke_ingest(signed(events)))
    assert status == 200 and body["records"] == 4000
    messages = stack.queued_bodies()
    assert len(messages) == body["messages"] < 20
    assert sum(len(unpack_changes(json.dumps(m["body"]))) for m in messages) == 4000


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ("{not json", 400, "malformed_json"),
        ("[]", 400, "empty_batch"),
        ('{"batch": {}}', 400, "invalid_batch"),
        ('{"batch": []}', 400, "empty_batch"),
    ],
)
def test_request_level_errors(stack: Stack, payload: str, status: int, code: str) -> None:
    got_status, body = answer(stack.invoke_ingest(signed(payload)))
    assert (got_status, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]
    assert stack.queued_bodies() == []


def test_wrong_content_type_is_415(stack: Stack) -> None:
    event = signed(audience_event("m1", "a", True), content_type="text/plain")
    status, body = answer(stack.invoke_ingest(event))
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


def test_body_over_the_limit_is_413(moto_server, criteo) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo, env={"MAX_BODY_BYTES": "1000"})
    events = [audience_event(f"m{i}", "a", True) for i in range(10)]
    status, body = answer(stack.invoke_ingest(signed(events)))
    assert (status, body["error"]["code"]) == (413, "body_too_large")


def test_bad_base64_is_400(stack: Stack) -> None:
    event = signed(audience_event("m1", "a", True))
    event["body"], event["isBase64Encoded"] = "***not base64***", True
    status, body = answer(stack.invoke_ingest(event))
    assert (status, body["error"]["code"]) == (400, "invalid_base64")


REJECTIONS = [
    ("not an object", "event must be a JSON object"),
    ({"type": "track", "event": "Audience Entered", "timestamp": "2026-11-20T10:00:00Z"}, "`messageId`"),
    ({**audience_event("x", "a", True), "timestamp": "yesterday"}, "ISO 8601"),
    ({**audience_event("x", "a", True), "timestamp": "2026-11-20T10:00:00"}, "time zone"),
    (
        {**audience_event("x", "a", True), "properties": {}, "context": {"traits": {"email": "a@b.co"}}},
        "no audience key",
    ),
    (audience_event("x", "a", True, email=None), "no usable identifier"),
    (audience_event("x", "a", True, email="not-an-email"), "no usable identifier"),
    ({**audience_event("x", "a", True), "context": {"traits": {"email": 42}, "personas": {}}}, "no usable identifier"),
    ({**audience_event("x", "a", False), "userId": None}, "neither `userId` nor `anonymousId`"),
    ({"messageId": "x", "timestamp": "2026-11-20T10:00:00Z"}, "`type`"),
    (
        {
            "type": "identify",
            "messageId": "x",
            "timestamp": "2026-11-20T10:00:00Z",
            "traits": {"vip": "yes"},
            "context": {"personas": {"computation_class": "audience", "computation_key": "vip"}},
        },
        "must be true or false",
    ),
]


@pytest.mark.parametrize(("event", "reason"), REJECTIONS)
def test_per_event_rejections_say_what_was_wrong(stack: Stack, event: object, reason: str) -> None:
    good = audience_event("good", "a", True)
    status, body = answer(stack.invoke_ingest(signed([good, event])))
    assert status == 200
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["index"] == 1 and reason in body["errors"][0]["reason"]
    alone_status, alone = answer(stack.invoke_ingest(signed([event])))
    assert alone_status == 400 and alone["error"]["code"] == "no_valid_events"


def test_signature_missing_wrong_and_bearer(stack: Stack, webhook_secret: str) -> None:
    event = signed(audience_event("m1", "a", True))
    del event["headers"]["x-signature"]
    assert answer(stack.invoke_ingest(event))[1]["error"]["code"] == "missing_signature"
    status, body = answer(stack.invoke_ingest(signed(audience_event("m1", "a", True), secret="wrong")))
    assert (status, body["error"]["code"]) == (401, "invalid_signature")
    event["headers"]["authorization"] = f"Bearer {webhook_secret}"
    assert stack.invoke_ingest(event)["statusCode"] == 401, "bearer tokens are off by default"
    assert stack.queued_bodies() == []


def test_bearer_token_when_enabled(moto_server, criteo, webhook_secret: str) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo, env={"ALLOW_BEARER_TOKEN": "true"})
    event = signed(audience_event("m1", "a", True))
    del event["headers"]["x-signature"]
    event["headers"]["authorization"] = f"Bearer {webhook_secret}"
    assert stack.invoke_ingest(event)["statusCode"] == 200
    event["headers"]["authorization"] = "Bearer nope"
    assert stack.invoke_ingest(event)["statusCode"] == 401


def test_rotated_secret_takes_effect_without_redeploy(stack: Stack, webhook_secret: str) -> None:
    assert stack.invoke_ingest(signed(audience_event("m1", "a", True)))["statusCode"] == 200
    stack.aws.client("secretsmanager").put_secret_value(
        SecretId=stack.aws.webhook_secret_arn, SecretString="rotated-secret"
    )
    assert stack.invoke_ingest(signed(audience_event("m2", "a", True), secret="rotated-secret"))["statusCode"] == 200
    assert stack.invoke_ingest(signed(audience_event("m3", "a", True), secret=webhook_secret))["statusCode"] == 401


def test_missing_webhook_secret_refuses_instead_of_accepting(moto_server, criteo) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo, webhook_secret=None)
    status, body = answer(stack.invoke_ingest(signed(audience_event("m1", "a", True))))
    assert (status, body["error"]["code"]) == (503, "not_configured")
    assert stack.queued_bodies() == []


def test_sqs_unavailable_is_503_so_segment_retries(moto_server, criteo) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(moto_server, criteo)
    stack.aws.client("sqs").delete_queue(QueueUrl=stack.aws.queue_url)
    status, body = answer(stack.invoke_ingest(signed(audience_event("m1", "a", True))))
    assert (status, body["error"]["code"]) == (503, "service_unavailable")


def test_no_pii_or_secret_in_logs(
    stack: Stack, webhook_secret: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the deployed level; botocore DEBUG would print secret values itself
    events = [
        audience_event("m1", "a", True, email="Secret.Person@Example.com"),
        audience_event("m2", "a", True, email="bad"),
    ]
    stack.invoke_ingest(signed(events))
    stack.invoke_ingest(signed(events, secret="wrong-secret-value"))
    output = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "delivery handled" in output
    for secret in ("secret.person", "Secret.Person", webhook_secret, "wrong-secret-value"):
        assert secret not in output


LAMBDA_PAYLOAD_LIMIT = 6_291_456  # bytes of a synchronous invocation's event (Lambda quotas)


def test_every_body_we_would_answer_fits_lambdas_payload_limit_after_escaping() -> None:
    """Our 413 must come from us, not from Lambda: the largest accepted body, at its worst escaping
    (every character a quote or a backslash doubles in the event's JSON; base64 adds a third), still fits."""
    limit = IngestSettings.from_env({"QUEUE_URL": "q", "WEBHOOK_SECRET_ARN": "s"}).max_body_bytes
    quote_heavy = '["' + '\\"' * ((limit - 4) // 2) + '"]'
    assert len(quote_heavy) <= limit
    escaped = json.dumps(http_event(quote_heavy, "0" * 40)).encode()
    assert len(escaped) < LAMBDA_PAYLOAD_LIMIT, f"{len(escaped):,} bytes"
    as_base64 = dict(http_event("", "0" * 40), body=base64.b64encode(b"x" * limit).decode(), isBase64Encoded=True)
    assert len(json.dumps(as_base64).encode()) < LAMBDA_PAYLOAD_LIMIT
