"""The log scan finds every known sensitive value wherever it sits in the text, and only those."""

from __future__ import annotations

from devtools.log_scan import leaks


def test_every_sensitive_value_is_found_at_the_start_middle_and_end_and_counted_once() -> None:
    text = 'tok-abcdef1234 {"msg": "sync", "phone": "15551234567"} again 15551234567 tail secret-xyz'
    found = leaks(text, ["tok-abcdef1234", "15551234567", "secret-xyz", "absent-value", "15551234999"])
    assert sorted(found) == [
        "a sensitive value (15***, 11 chars)",
        "a sensitive value (se***, 10 chars)",
        "a sensitive value (to***, 14 chars)",
    ]


def test_values_sharing_a_prefix_are_told_apart_and_short_ones_ignored() -> None:
    text = "hash 5f4dcc3b5aa765d61d8327deb882cf99 done; code 12345"
    values = ["5f4dcc3b5aa765d61d8327deb882cf99", "5f4dcc3b5aa7ffff", "5f4dcc", "12345"]
    assert sorted(leaks(text, values)) == ["a sensitive value (5f***, 32 chars)", "a sensitive value (5f***, 6 chars)"]


def test_an_email_address_is_a_leak_even_when_nobody_listed_it() -> None:
    assert leaks("user Jane.Doe@Example.com entered", []) == ["an email address (Ja***)"]
    assert leaks('{"level": "INFO", "message": "batch done", "records": 25013}', ["jane.doe@example.com"]) == []
