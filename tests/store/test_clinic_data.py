"""What careflow tells of the clinic's data at publish, from a sample: appointment times read hours
off (APPOINTMENT_TIMES_SHIFTED), no patient consenting to an action's purpose (ACTION_CONSENT_UNSEEN)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from careflow.clinic_data import _consent_unseen, _times_shifted

UTC = timezone.utc


def _day(hours: range, tz: timezone | ZoneInfo) -> list[tuple[str, datetime]]:
    """An appointment at each of ``hours`` on the clock of ``tz``, on each of five days."""
    return [
        ("scheduled", datetime(2025, 3, 3 + day, hour, 30, tzinfo=tz)) for day in range(5) for hour in hours
    ]


SEOUL = ZoneInfo("Asia/Seoul")


@pytest.mark.parametrize(
    ("appointments", "zone_name", "said"),
    [
        (_day(range(9, 18), SEOUL), "Asia/Seoul", None),  # as the contract has them
        (_day(range(9, 21), SEOUL), "Asia/Seoul", None),  # evening hours too
        # Seoul wall times read as UTC: 09:30 is read as 18:30 in Seoul
        (_day(range(9, 18), UTC), "Asia/Seoul", "9 hours earlier, 100% would be within it. They look like Asia/Seoul wall times kept without a zone"),
        # UTC read as Seoul wall times: 09:30 (00:30 UTC) is read as 00:30 in Seoul
        (_day(range(0, 9), SEOUL), "Asia/Seoul", "9 hours later, 100% would be within it. They look like times kept in UTC converted as if they were Asia/Seoul wall times"),
        # New York wall times read as UTC: 09:30 is read as 04:30 (5 hours behind in March, 4 after the 9th)
        (_day(range(9, 18), UTC)[:5], "America/New_York", None),  # too few to weigh
        (_day(range(1, 9), UTC), "America/New_York", None),  # night read as such: weighed, not explained
        (_day(range(9, 18), UTC), "UTC", None),  # no offset: nothing to tell
        ([("scheduled", datetime(2025, 3, d, tzinfo=SEOUL)) for d in range(1, 29)], "Asia/Seoul", None),  # dates alone
        (_day(range(9, 18), UTC) + [("scheduled", None), ("scheduled", "not a time")], "Asia/Seoul", "of the 45 with a time"),
    ],
)  # fmt: skip
def test_appointment_times_read_hours_off_are_told(
    appointments: list[tuple[str, object]], zone_name: str, said: str | None
) -> None:
    told = _times_shifted(appointments, "gangnam-01", zone_name)
    if said is None:
        assert told is None
    else:
        assert told is not None and told.code == "APPOINTMENT_TIMES_SHIFTED" and said in told.message, told


def test_new_york_wall_times_read_as_utc_are_told_later() -> None:
    # 09:30 to 17:30 on New York's clock, read as UTC: 04:30 to 12:30 there (EST, before 9 March)
    told = _times_shifted(_day(range(9, 18), UTC)[:-9], "clinic-ny", "America/New_York")
    assert told is not None
    assert told.message.startswith(
        "Clinic clinic-ny's appointments fall outside 08:00-20:00 America/New_York as careflow reads their "
        "times, 44% of the 36 with a time (of the first 1,000 read)"
    )
    assert "5 hours later, 100% would be within it" in told.message


ACTIONS = (("a1", "kakao", "care"), ("a2", "sms", "care"), ("m1", "kakao", "marketing"))


@pytest.mark.parametrize(
    ("patients", "said"),
    [
        ([], []),  # no patients yet
        ([{"consent_messages": None, "consent_marketing": "Y"}], []),  # care by default; yes/no read
        (
            [{"consent_messages": "N", "consent_marketing": None}, {"consent_messages": 0, "consent_marketing": "no"}],
            [("a1", "consents to care messages (consent_messages, true where the clinic's data leaves it empty). "
                    "The messages of actions a1 (kakao), a2 (sms) would each be skipped (no_consent_messages)"),
             ("m1", "consents to marketing messages (consent_marketing, false where the clinic's data leaves it "
                    "empty). The messages of action m1 (kakao)")],
        ),
        (
            [{"consent_messages": True, "consent_marketing": "동의"}, {"consent_messages": True, "consent_marketing": None}],
            [("m1", "false where the clinic's data leaves it empty); 1 has a consent_marketing careflow cannot read")],
        ),
    ],
)  # fmt: skip
def test_no_patient_consenting_to_an_actions_purpose_is_told(
    patients: list[dict[str, object]], said: list[tuple[str, str]]
) -> None:
    told = _consent_unseen(patients, "gangnam-01", ACTIONS)
    assert [d.node_id for d in told] == [node for node, _ in said]
    for diagnostic, (_, text) in zip(told, said, strict=True):
        assert diagnostic.code == "ACTION_CONSENT_UNSEEN" and text in diagnostic.message, diagnostic.message
