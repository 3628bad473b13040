"""Delays: durations (elapsed and calendar), ``until`` an appointment field, missing fields."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from careflow.engine.delays import day_passed, release_time, shift, to_utc
from careflow.workflow.models import DelayData

UTC = timezone.utc
SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")


def duration(amount: int, unit: str) -> DelayData:
    return DelayData(amount=amount, unit=unit)


def until(
    field: str = "appointment.scheduled_at", offset: tuple[int, str] | None = None, at: str | None = None
):
    data: dict = {"until": field, "at": at}
    if offset:
        data["offset"] = {"amount": offset[0], "unit": offset[1]}
    return DelayData.model_validate(data)


def facts_with(**appointment: object) -> dict:
    return {"appointment": appointment}


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


def elapsed(a: datetime, b: datetime) -> timedelta:
    return b.astimezone(UTC) - a.astimezone(UTC)


class TestDuration:
    def test_minutes_and_hours_are_elapsed_time(self) -> None:
        arrived = datetime(2026, 3, 14, 1, 30, tzinfo=UTC)
        assert release_time(duration(90, "minutes"), arrived, {}, SEOUL) == arrived + timedelta(minutes=90)
        assert release_time(duration(0, "days"), arrived, {}, SEOUL) == arrived

    def test_hours_across_spring_forward_stay_elapsed(self) -> None:
        released = release_time(duration(2, "hours"), ny(2026, 3, 8, 1, 30), {}, NEW_YORK)
        assert released == ny(2026, 3, 8, 4, 30)  # 01:30 EST + 2 h = 04:30 EDT
        assert elapsed(ny(2026, 3, 8, 1, 30), released) == timedelta(hours=2)

    def test_days_keep_the_local_wall_time_across_spring_forward(self) -> None:
        arrived = ny(2026, 3, 6, 14, 0)  # Friday, EST
        released = release_time(duration(3, "days"), arrived, {}, NEW_YORK)
        assert released == ny(2026, 3, 9, 14, 0)  # Monday 14:00 EDT
        assert released.tzinfo is UTC
        assert elapsed(arrived, released) == timedelta(hours=71)

    def test_weeks_keep_the_local_wall_time_across_fall_back(self) -> None:
        arrived = ny(2026, 10, 29, 9, 0)  # EDT
        released = release_time(duration(1, "weeks"), arrived, {}, NEW_YORK)
        assert released == ny(2026, 11, 5, 9, 0)  # EST
        assert elapsed(arrived, released) == timedelta(hours=169)

    def test_day_landing_in_the_skipped_hour_moves_an_hour_later(self) -> None:
        released = release_time(duration(3, "days"), ny(2026, 3, 5, 2, 30), {}, NEW_YORK)
        assert released == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT

    def test_naive_arrival_is_utc(self) -> None:
        released = release_time(duration(1, "days"), datetime(2026, 3, 14, 1, 30), {}, SEOUL)
        assert released == datetime(2026, 3, 15, 1, 30, tzinfo=UTC)

    def test_unknown_unit_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown duration unit"):
            shift(datetime(2026, 1, 1, tzinfo=UTC), 1, "months", SEOUL)


class TestDurationAt:
    def test_days_at_a_time_end_at_that_local_time_on_the_last_day(self) -> None:
        arrived = datetime(2026, 3, 16, 14, 0, tzinfo=SEOUL)  # Monday 14:00
        delay = DelayData(amount=1, unit="days", at="10:00")
        assert release_time(delay, arrived, {}, SEOUL) == datetime(2026, 3, 17, 10, 0, tzinfo=SEOUL)
        weeks = DelayData(amount=1, unit="weeks", at="09:30")
        assert release_time(weeks, arrived, {}, SEOUL) == datetime(2026, 3, 23, 9, 30, tzinfo=SEOUL)

    def test_zero_days_at_a_time_is_the_next_such_time(self) -> None:
        delay = DelayData(amount=0, unit="days", at="10:00")
        morning = datetime(2026, 3, 16, 8, 0, tzinfo=SEOUL)
        afternoon = datetime(2026, 3, 16, 14, 0, tzinfo=SEOUL)
        assert release_time(delay, morning, {}, SEOUL) == datetime(2026, 3, 16, 10, 0, tzinfo=SEOUL)
        assert release_time(delay, afternoon, {}, SEOUL) == datetime(2026, 3, 17, 10, 0, tzinfo=SEOUL)

    def test_the_time_is_on_the_patients_clock_across_a_dst_change(self) -> None:
        arrived = ny(2026, 3, 6, 22, 0)  # Friday, EST
        released = release_time(DelayData(amount=3, unit="days", at="08:00"), arrived, {}, NEW_YORK)
        assert released == ny(2026, 3, 9, 8, 0)  # Monday 08:00 EDT
        assert released.tzinfo is UTC


class TestUntil:
    def test_day_before_at_ten_in_seoul(self) -> None:
        facts = facts_with(scheduled_at=datetime(2026, 3, 15, 14, 0, tzinfo=SEOUL))
        released = release_time(until(offset=(-1, "days"), at="10:00"), datetime.now(UTC), facts, SEOUL)
        assert released == datetime(2026, 3, 14, 1, 0, tzinfo=UTC)
        assert released.tzinfo is UTC

    @pytest.mark.parametrize(
        "scheduled_at",
        [
            "2026-03-15T14:00:00+09:00",
            "2026-03-15T05:00:00Z",
            "2026-03-15 05:00:00",  # SQLite text without offset: UTC
            datetime(2026, 3, 15, 5, 0),  # naive: UTC
        ],
    )
    def test_field_forms(self, scheduled_at: object) -> None:
        facts = facts_with(scheduled_at=scheduled_at)
        released = release_time(until(offset=(-1, "days"), at="10:00"), datetime.now(UTC), facts, SEOUL)
        assert released == datetime(2026, 3, 14, 1, 0, tzinfo=UTC)

    def test_local_date_not_utc_date_decides_the_day(self) -> None:
        # 08:00 KST on the 15th is still the 14th in UTC: the reminder is on the 14th local.
        facts = facts_with(scheduled_at=datetime(2026, 3, 15, 8, 0, tzinfo=SEOUL))
        released = release_time(until(offset=(-1, "days"), at="10:00"), datetime.now(UTC), facts, SEOUL)
        assert released == datetime(2026, 3, 14, 10, 0, tzinfo=SEOUL)

    def test_day_before_across_dst_in_new_york(self) -> None:
        facts = facts_with(scheduled_at=ny(2026, 3, 9, 9, 0))  # Monday, EDT
        released = release_time(until(offset=(-1, "days"), at="10:00"), datetime.now(UTC), facts, NEW_YORK)
        assert released == datetime(2026, 3, 8, 14, 0, tzinfo=UTC)  # Sunday 10:00 EDT

    def test_at_without_offset_is_the_same_local_day(self) -> None:
        facts = facts_with(scheduled_at=datetime(2026, 3, 15, 14, 0, tzinfo=SEOUL))
        released = release_time(until(at="08:30"), datetime.now(UTC), facts, SEOUL)
        assert released == datetime(2026, 3, 15, 8, 30, tzinfo=SEOUL)

    def test_offset_in_hours_without_at(self) -> None:
        facts = facts_with(completed_at=datetime(2026, 3, 15, 5, 0, tzinfo=UTC))
        released = release_time(
            until("appointment.completed_at", offset=(2, "hours")), datetime.now(UTC), facts, SEOUL
        )
        assert released == datetime(2026, 3, 15, 7, 0, tzinfo=UTC)

    def test_hours_offset_then_at_uses_the_shifted_date(self) -> None:
        # 01:00 KST minus 2 hours is 23:00 the day before; "at 10:00" applies to that day.
        facts = facts_with(scheduled_at=datetime(2026, 3, 15, 1, 0, tzinfo=SEOUL))
        released = release_time(until(offset=(-2, "hours"), at="10:00"), datetime.now(UTC), facts, SEOUL)
        assert released == datetime(2026, 3, 14, 10, 0, tzinfo=SEOUL)

    @pytest.mark.parametrize(
        "facts",
        [
            {},
            {"appointment": {}},
            facts_with(scheduled_at=None),
            facts_with(scheduled_at=""),
            facts_with(scheduled_at="next tuesday"),
            facts_with(scheduled_at=1773451800),
        ],
    )
    def test_missing_or_unreadable_field_gives_none(self, facts: dict) -> None:
        assert release_time(until(offset=(-1, "days"), at="10:00"), datetime.now(UTC), facts, SEOUL) is None


def test_to_utc() -> None:
    assert to_utc("2026-03-14T10:30:00+09:00") == datetime(2026, 3, 14, 1, 30, tzinfo=UTC)
    assert to_utc("2026-03-14T10:30:00+09:00").tzinfo is UTC
    assert to_utc(None) is None
    assert to_utc("garbage") is None


@pytest.mark.parametrize(
    ("field_value", "offset", "at"),
    [
        (datetime(9998, 12, 31, tzinfo=UTC), (60, "weeks"), None),  # a placeholder "no date yet"
        (datetime(9999, 12, 31, 20, tzinfo=UTC), (1, "days"), "10:00"),
        (datetime(1, 1, 2, tzinfo=UTC), (-3, "days"), None),
        ("9999-12-31T23:00:00+00:00", (2, "hours"), None),
    ],
)
def test_a_release_past_the_calendar_is_no_time_to_wait_for(field_value, offset, at):
    # Out of datetime's range (years 1 to 9999): None, which the node records as an exit.
    assert (
        release_time(
            until(offset=offset, at=at),
            datetime(2026, 3, 3, tzinfo=UTC),
            facts_with(scheduled_at=field_value),
            SEOUL,
        )
        is None
    )


@pytest.mark.parametrize(
    ("data", "release", "now", "passed"),
    [
        # "10:00 on the day before" found the next morning, Seoul time: its day is over.
        (
            {"until": "appointment.scheduled_at", "offset": {"amount": -1, "unit": "days"}, "at": "10:00"},
            datetime(2025, 3, 4, 1, tzinfo=UTC),
            datetime(2025, 3, 4, 23, tzinfo=UTC),  # 08:00 on 5 March in Seoul
            True,
        ),
        # The same release found that afternoon: still its day (a booking made after 10:00).
        (
            {"until": "appointment.scheduled_at", "offset": {"amount": -1, "unit": "days"}, "at": "10:00"},
            datetime(2025, 3, 4, 1, tzinfo=UTC),
            datetime(2025, 3, 4, 14, 59, tzinfo=UTC),  # 23:59 on 4 March in Seoul
            False,
        ),
        # Days without "at", and "at" without an offset, name a day too.
        (
            {"until": "appointment.scheduled_at", "offset": {"amount": -2, "unit": "days"}},
            datetime(2025, 3, 4, 5, tzinfo=UTC),
            datetime(2025, 3, 4, 15, 1, tzinfo=UTC),  # 00:01 on 5 March in Seoul
            True,
        ),
        (
            {"until": "appointment.scheduled_at", "at": "08:00"},
            datetime(2025, 3, 3, 23, tzinfo=UTC),
            datetime(2025, 3, 5, 0, tzinfo=UTC),
            True,
        ),
        # Hours before a field, and waits of an amount, name no day: max_lateness alone judges them.
        (
            {"until": "appointment.scheduled_at", "offset": {"amount": -2, "unit": "hours"}},
            datetime(2025, 3, 4, 1, tzinfo=UTC),
            datetime(2025, 3, 5, 0, tzinfo=UTC),
            False,
        ),
        (
            {"amount": 1, "unit": "days", "at": "10:00"},
            datetime(2025, 3, 4, 1, tzinfo=UTC),
            datetime(2025, 3, 5, 0, tzinfo=UTC),
            False,
        ),
    ],
)
def test_a_wait_that_names_a_day_is_for_that_day_only(data, release, now, passed) -> None:
    assert day_passed(DelayData.model_validate(data), release, now, SEOUL) is passed
