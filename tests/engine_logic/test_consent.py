"""Consent per purpose and the marketing quiet hours (docs/contracts.md §2)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from careflow.engine.consent import check_consent, in_quiet_hours, quiet_hours_end

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")
NOON = datetime(2026, 3, 16, 12, 0, tzinfo=SEOUL)
NIGHT = datetime(2026, 3, 16, 23, 0, tzinfo=SEOUL)


def patient(**consents: object) -> dict:
    return {"id": "p-1", **consents}


@pytest.mark.parametrize(
    ("purpose", "consents", "local_now", "expected"),
    [
        ("care", {}, NOON, None),  # care is allowed by default
        ("care", {"consent_messages": None}, NOON, None),
        ("care", {"consent_messages": False}, NOON, "no_consent_messages"),
        ("care", {"consent_messages": 0}, NOON, "no_consent_messages"),  # SQLite
        ("care", {"consent_messages": True}, NIGHT, None),  # quiet hours are for marketing only
        ("marketing", {}, NOON, "no_consent_marketing"),  # marketing needs explicit consent
        ("marketing", {"consent_marketing": True}, NOON, None),
        ("marketing", {"consent_marketing": "true"}, NOON, None),
        ("marketing", {"consent_marketing": True, "consent_messages": False}, NOON, None),
        ("marketing", {"consent_marketing": True}, NIGHT, "marketing_quiet_hours"),
        ("marketing", {"consent_marketing": True, "consent_night_marketing": True}, NIGHT, None),
        ("marketing", {"consent_night_marketing": True}, NIGHT, "no_consent_marketing"),
        ("marketing", {}, NIGHT, "no_consent_marketing"),  # consent before quiet hours
    ],
)
def test_check_consent(purpose: str, consents: dict, local_now: datetime, expected: str | None) -> None:
    assert (
        check_consent(purpose=purpose, channel="kakao", patient=patient(**consents), local_now=local_now)
        == expected
    )


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [
        (20, 59, False),
        (21, 0, True),
        (23, 59, True),
        (0, 0, True),
        (7, 59, True),
        (8, 0, False),
        (12, 0, False),
    ],
)
def test_quiet_hour_edges(hour: int, minute: int, quiet: bool) -> None:
    at = datetime(2026, 3, 16, hour, minute, tzinfo=SEOUL)
    assert in_quiet_hours(at) is bool(quiet)
    reason = check_consent(
        purpose="marketing", channel="sms", patient=patient(consent_marketing=True), local_now=at
    )
    assert reason == ("marketing_quiet_hours" if quiet else None)


def test_quiet_hours_end() -> None:
    assert quiet_hours_end(NOON) == NOON
    assert quiet_hours_end(NIGHT) == datetime(2026, 3, 17, 8, 0, tzinfo=SEOUL)
    early = datetime(2026, 3, 17, 3, 0, tzinfo=SEOUL)
    assert quiet_hours_end(early) == datetime(2026, 3, 17, 8, 0, tzinfo=SEOUL)
    assert quiet_hours_end(datetime(2026, 3, 16, 21, 0)) == datetime(2026, 3, 17, 8, 0)  # naive stays naive


def test_quiet_hours_end_across_dst() -> None:
    # Saturday 22:00 EST -> Sunday 08:00 EDT: 9 real hours, 08:00 on the wall clock.
    end = quiet_hours_end(datetime(2026, 3, 7, 22, 0, tzinfo=NEW_YORK))
    assert end == datetime(2026, 3, 8, 12, 0, tzinfo=ZoneInfo("UTC"))
    assert end.astimezone(NEW_YORK).hour == 8


def test_unknown_purpose_or_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="purpose"):
        check_consent(purpose="sales", channel="sms", patient=patient(), local_now=NOON)
    with pytest.raises(ValueError, match="channel"):
        check_consent(purpose="care", channel="fax", patient=patient(), local_now=NOON)


def test_unreadable_consent_names_the_patient_not_the_value() -> None:
    with pytest.raises(ValueError) as info:
        check_consent(
            purpose="care", channel="sms", patient=patient(consent_messages="maybe"), local_now=NOON
        )
    assert "p-1" in str(info.value)
    assert "maybe" not in str(info.value)
