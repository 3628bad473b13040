"""Answers that break the contract are never taken for an acceptance; classification edge cases."""

from __future__ import annotations

import email.utils
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careflow.providers.client import (
    DEFAULT_RETRY_AFTER,
    Outcome,
    ProviderClient,
    classify_response,
    parse_retry_after,
    redact,
)

from .conftest import PHONE, AppThread, make_message


def send_one(server: AppThread, mode: str):
    client = ProviderClient(f"{server.url}/{mode}", "token", timeout=2)
    [result] = client.send_batch([make_message(1)])
    return result


@pytest.mark.parametrize(
    "mode",
    ["html", "truncated", "int_id", "null_id", "empty_id", "missing_id", "list", "empty", "status_int"],
)
def test_a_malformed_2xx_is_unknown_never_accepted(odd_server: AppThread, mode: str) -> None:
    result = send_one(odd_server, mode)

    assert result.outcome is Outcome.UNKNOWN and not result.delivered
    assert result.request_sent and result.error_code == "malformed_response" and result.provider_id is None


def test_a_connection_dropped_after_the_request_is_unknown(odd_server: AppThread) -> None:
    result = send_one(odd_server, "drop")
    assert (result.outcome, result.request_sent, result.error_code) == (
        Outcome.UNKNOWN,
        True,
        "connection_lost",
    )


def test_provider_error_text_is_kept_without_phone_numbers(odd_server: AppThread) -> None:
    result = send_one(odd_server, "phone_in_error")

    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "invalid_recipient")
    assert PHONE not in (result.error_message or "") and "[redacted]" in (result.error_message or "")


def test_a_redirect_is_a_configuration_error_and_is_not_followed(odd_server: AppThread) -> None:
    result = send_one(odd_server, "redirect")
    assert (result.outcome, result.status_code) == (Outcome.CONFIGURATION, 302)


def test_retry_after_as_an_http_date(odd_server: AppThread) -> None:
    result = send_one(odd_server, "http_date")
    assert result.outcome is Outcome.THROTTLED and 27 <= (result.retry_after or 0) <= 30


def test_a_409_without_a_body_is_still_a_duplicate(odd_server: AppThread) -> None:
    result = send_one(odd_server, "duplicate_no_body")
    assert result.outcome is Outcome.DUPLICATE and result.delivered and result.provider_id is None


def test_an_html_502_from_a_gateway_is_transient(odd_server: AppThread) -> None:
    result = send_one(odd_server, "gateway_html")
    assert (result.outcome, result.status_code, result.error_code) == (Outcome.TRANSIENT, 502, "http_502")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.UNKNOWN),  # body below is not an acceptance
        (400, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (401, Outcome.CONFIGURATION),
        (403, Outcome.CONFIGURATION),
        (404, Outcome.CONFIGURATION),
        (301, Outcome.CONFIGURATION),
        (408, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (429, Outcome.THROTTLED),
        (409, Outcome.DUPLICATE),
        (101, Outcome.UNKNOWN),
    ],
)
def test_status_codes(status: int, outcome: Outcome) -> None:
    result = classify_response("k", status, b'{"error": {"code": "x", "message": "y"}}')
    assert result.outcome is outcome and result.request_sent


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        ("recipient_rejected", "recipient_rejected"),
        ("E.164-invalid", "E.164-invalid"),
        ("invalid_recipient:010-1234-5678:kim@example.com", None),
        ("bad number 01012345678", None),
        ("x" * 65, None),
    ],
)
def test_only_an_identifier_is_kept_of_a_providers_error_code(code: str, kept: str | None) -> None:
    import json

    result = classify_response("k", 422, json.dumps({"error": {"code": code, "message": "m"}}).encode())
    assert result.outcome is Outcome.PERMANENT
    assert result.error_code == (kept or "http_422")


@pytest.mark.parametrize("status", [200, 409, 422, 429, 503])
def test_an_answer_nested_deeper_than_the_parser_goes_is_still_classified(status: int) -> None:
    result = classify_response("k", status, b"[" * 100_000)
    expected = {200: Outcome.UNKNOWN, 409: Outcome.DUPLICATE, 422: Outcome.PERMANENT}
    assert result.outcome is expected.get(status, Outcome.THROTTLED if status == 429 else Outcome.TRANSIENT)


@settings(max_examples=300, deadline=None)
@given(status=st.integers(100, 599), raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_nothing_but_a_2xx_with_a_string_id_is_accepted(status: int, raw: bytes) -> None:
    result = classify_response("k", status, raw)
    if result.outcome is Outcome.ACCEPTED:
        assert 200 <= status < 300 and isinstance(result.provider_id, str) and result.provider_id
    assert result.outcome is not Outcome.NOT_SENT and result.request_sent


@settings(max_examples=100, deadline=None)
@given(provider_id=st.text(min_size=1, max_size=40), status=st.integers(200, 299))
def test_a_well_formed_acceptance_is_accepted(provider_id: str, status: int) -> None:
    import json

    result = classify_response("k", status, json.dumps({"id": provider_id, "status": "accepted"}).encode())
    assert result.outcome is Outcome.ACCEPTED and result.provider_id == provider_id


def _as_json_loads_reads_it(raw: bytes) -> str | None:
    """The provider id that ``json.loads`` (NaN and Infinity refused) and the model make of ``raw``."""
    import json

    from careflow.providers.client import AcceptedBody

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        return AcceptedBody.model_validate(json.loads(raw, parse_constant=refuse)).id
    except (ValueError, RecursionError):
        return None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "abc-1", "status": "accepted"}',
        b'\xef\xbb\xbf{"id": "abc-1", "status": "accepted"}',  # a UTF-8 byte order mark
        '{"id": "abc-1", "status": "accepted"}'.encode("utf-16"),
        '{"id": "abc-1", "status": "accepted"}'.encode("utf-16-le"),
        '{"id": "abc-1", "status": "accepted"}'.encode("utf-32"),
        b'{"id": "abc-1", "status": "accepted", "cost": NaN}',
        b'{"id": "abc-1", "status": "accepted", "cost": -Infinity}',
        b'{"id": "abc-1", "status": "accepted", "cost": 1e999}',
        b'{"id": "abc-1", "status": "accepted", "id": "abc-2"}',
        b'{"id": "abc-1", "status": "accepted"} and more',
        b'{"id": "abc-\xff", "status": "accepted"}',
        b'{"id": "\xed\xa0\x80", "status": "accepted"}',  # a lone surrogate, as UTF-8 cannot carry it
        b'{"id": "\\ud800", "status": "accepted"}',
        b"\xef\xbb\xbf\xef\xbb\xbf{}",
        # the two fields alone, which msgspec reads first: what it makes of them must not differ
        b'{"id": "abc-1", "status": "accepted", "id": ""}',
        b'{"id": "a\\u0000", "status": "accepted"}',
        b'{"id": "a\x01", "status": "accepted"}',  # a raw control character
        b'{"id": "\\ud83d\\ude00", "status": "accepted"}',  # an escaped surrogate pair
        b'{"id": "\xf0\x9f\x98\x80", "status": "accepted"}',
        b'{"id": "' + "\u00e9".encode() * 512 + b'", "status": "accepted"}',  # 512 characters
        b'{"id": "' + "\u00e9".encode() * 513 + b'", "status": "accepted"}',
        b'{"id": "", "status": "accepted"}',
        b'{"id": "abc-1", "status": 1}',
        b'{"id": "abc-1"}',
        b' {"id": "abc-1", "status": "accepted"}\n',
        b'{"id": "abc-1", "status": "accepted"}\x00',
        b'["abc-1", "accepted"]',
        # and with a field more, read the long way, which refuses what json.loads refuses
        b'{"id": "abc-1", "status": "accepted", "n": ' + b"1" * 5000 + b"}",
        b'{"id": "abc-1", "status": "accepted", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_an_answer_is_read_as_json_loads_reads_it(raw: bytes) -> None:
    from careflow.providers.client import parse_accepted

    try:
        provider_id: str | None = parse_accepted(raw).id
    except ValueError:
        provider_id = None
    assert provider_id == _as_json_loads_reads_it(raw)


def test_a_plain_answer_is_read_without_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's answer, two fields in UTF-8, is read by msgspec: no JSON decoder, no model."""
    from careflow.providers import client

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the long way")

    monkeypatch.setattr(client.AcceptedBody, "model_validate", refuse)
    monkeypatch.setattr(client._STRICT_JSON, "decode", refuse)
    accepted = client.parse_accepted(b'{"id":"msg_1","status":"accepted"}')
    assert (accepted.id, accepted.status) == ("msg_1", "accepted")
    with pytest.raises(AssertionError, match="long way"):  # a field more: the long way
        client.parse_accepted(b'{"id":"msg_1","status":"accepted","cost":1}')


def test_answers_share_one_json_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """``json.loads`` with ``parse_constant`` builds a decoder per call: thousands a batch."""
    import json

    from careflow.providers.client import parse_accepted

    built: list[object] = []

    class Counted(json.JSONDecoder):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "JSONDecoder", Counted)
    for n in range(100):
        assert parse_accepted(f'{{"id": "abc-{n}", "status": "accepted"}}'.encode()).id == f"abc-{n}"
    assert built == []


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) == DEFAULT_RETRY_AFTER
    assert parse_retry_after("soon") == DEFAULT_RETRY_AFTER
    assert parse_retry_after("nan") == DEFAULT_RETRY_AFTER
    assert parse_retry_after(email.utils.formatdate(now + 60, usegmt=True), now=now) == pytest.approx(
        60, abs=1
    )
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("zone", ["UTC", "Asia/Seoul", "America/New_York"])
def test_retry_after_dates_without_a_zone_are_utc_on_any_worker(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        now = time.time()
        later = time.gmtime(now + 120)
        asctime = time.strftime("%a %b %e %H:%M:%S %Y", later)  # RFC 9110's third form
        minus_zero = time.strftime("%a, %d %b %Y %H:%M:%S -0000", later)
        assert parse_retry_after(asctime, now=now) == pytest.approx(120, abs=1)
        assert parse_retry_after(minus_zero, now=now) == pytest.approx(120, abs=1)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_redact_removes_phone_numbers_and_emails() -> None:
    text = redact("bad recipient 010-5550-1234 / +82 10 5550 1234 / kim@example.com for key wf1:a1:ex1")
    assert "5550" not in text and "kim@" not in text and "wf1:a1:ex1" in text
