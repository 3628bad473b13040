"""Recipient addresses: phone normalisation to E.164, email syntax, reason codes."""

from __future__ import annotations

import pytest

from careflow.engine.recipients import missing_recipient_reason, normalize_phone, recipient_for, valid_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+821012345678", "+821012345678"),
        ("010-1234-5678", "+821012345678"),
        ("01012345678", "+821012345678"),
        ("010 1234 5678", "+821012345678"),
        ("010.1234.5678", "+821012345678"),
        ("(010) 1234-5678", "+821012345678"),
        ("  010-1234-5678  ", "+821012345678"),
        ("+82 10-1234-5678", "+821012345678"),
        ("+82-10-1234-5678", "+821012345678"),
        ("+82 010-1234-5678", "+821012345678"),  # trunk 0 written after the country code
        ("011-123-4567", "+82111234567"),  # legacy mobile prefixes, 7 digits
        ("016-1234-5678", "+821612345678"),
        ("019-123-4567", "+82191234567"),
        ("+1 415 555 0100", "+14155550100"),  # another country: accepted as E.164
        ("+447911123456", "+447911123456"),
        # refused
        ("02-555-0101", None),  # Seoul landline
        ("031-123-4567", None),
        ("+82 2-555-0101", None),
        ("010-1234-567", None),  # too short
        ("010-1234-56789", None),  # too long
        ("012-1234-5678", None),  # not a mobile prefix
        ("1012345678", None),  # no trunk 0, no country code
        ("821012345678", "+821012345678"),  # the country code without "+", as Korean systems store it
        ("82-10-1234-5678", "+821012345678"),
        ("82 010-1234-5678", "+821012345678"),
        ("０１０－１２３４－５６７８", "+821012345678"),  # full-width, as a Korean input method types it
        ("＋８２ １０ １２３４ ５６７８", "+821012345678"),
        ("010–1234–5678", "+821012345678"),  # en dashes a word processor wrote for hyphens
        ("010\u22121234\u22125678", "+821012345678"),  # minus signs
        ("010\u00a01234\u00a05678", "+821012345678"),  # no-break spaces
        ("010-1234-5678 ext 1", None),
        ("010-12a4-5678", None),
        ("+82+1012345678", None),
        ("010+1234+5678", None),
        ("82-2-555-0101", None),  # a landline with the country code
        ("8210123456789", None),
        ("14155550100", None),  # another country's code without "+": not told from a national number
        ("٠١٠١٢٣٤٥٦٧٨", None),  # digits of another script
        ("+123", None),
        ("+0 123 456 789", None),
        ("", None),
        ("   ", None),
        (None, None),
        (1012345678, None),
    ],
)
def test_normalize_phone(raw: object, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("minji@example.com", True),
        ("minji.kim+care@mail.example.co.kr", True),
        (" minji@example.com ", True),
        ("minji@example", False),  # no dot in the domain
        ("minji@@example.com", False),
        ("minji example@example.com", False),
        ("@example.com", False),
        ("minji@", False),
        ("minji@-example.com", False),
        ("minji..kim@example.com", False),
        ("minji@example..com", False),
        ("a" * 65 + "@example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_valid_email(raw: object, expected: bool) -> None:
    assert valid_email(raw) is expected


PATIENT = {"id": "p-1", "phone": "010-1234-5678", "email": " minji@example.com "}


@pytest.mark.parametrize("channel", ["sms", "lms", "kakao"])
def test_phone_channels(channel: str) -> None:
    assert recipient_for(channel, PATIENT) == "+821012345678"
    assert recipient_for(channel, {"phone": "02-555-0101"}) is None
    assert recipient_for(channel, {}) is None


def test_email_channel() -> None:
    assert recipient_for("email", PATIENT) == "minji@example.com"
    assert recipient_for("email", {"email": "not-an-address"}) is None
    assert recipient_for("email", {"email": None}) is None


@pytest.mark.parametrize(
    ("channel", "patient", "reason"),
    [
        ("sms", None, "no_phone"),
        ("kakao", {"phone": None}, "no_phone"),
        ("lms", {"phone": "  "}, "no_phone"),
        ("sms", {"phone": "02-555-0101"}, "invalid_phone"),
        ("email", None, "no_email"),
        ("email", {}, "no_email"),
        ("email", {"email": "minji@"}, "invalid_email"),
    ],
)
def test_missing_recipient_reason(channel: str, patient: dict | None, reason: str) -> None:
    assert missing_recipient_reason(channel, patient) == reason
    if patient is not None:
        assert recipient_for(channel, patient) is None


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="channel"):
        recipient_for("fax", PATIENT)
    with pytest.raises(ValueError, match="channel"):
        missing_recipient_reason("fax")


@pytest.mark.parametrize(
    ("written", "e164"),
    [
        ("+44 (0) 20 7946 0958", "+442079460958"),
        ("+49 (0)30 1234567", "+49301234567"),
        ("+33 (0)6 12 34 56 78", "+33612345678"),
        ("+82 (0)10-1234-5678", "+821012345678"),
        ("+1 (415) 555-0100", "+14155550100"),  # an area code in brackets is kept
    ],
)
def test_a_trunk_prefix_written_in_brackets_is_left_out(written, e164):
    assert normalize_phone(written) == e164
