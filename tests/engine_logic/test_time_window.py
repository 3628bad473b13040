"""Time windows: daytime, overnight, never-opening windows, timezones and DST."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careflow.engine.time_window import is_open, never_opens, next_opening
from careflow.workflow.models import WEEKDAYS, TimeWindowData

UTC = timezone.utc
SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")

WEEKDAYS_9_18 = TimeWindowData(days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="18:00")


def window(days: list[str], start: str, end: str) -> TimeWindowData:
    return TimeWindowData(days=days, start=start, end=end)


def local(tz: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=tz, fold=fold)


def test_calendar_used_below() -> None:
    # The dates below rely on these weekdays and on the 2026 US DST dates.
    assert date(2026, 3, 15).weekday() == 6  # Sunday
    assert date(2026, 3, 16).weekday() == 0  # Monday
    assert local(NEW_YORK, 2026, 3, 8, 12).utcoffset() == timedelta(hours=-4)
    assert local(NEW_YORK, 2026, 3, 7, 12).utcoffset() == timedelta(hours=-5)
    assert local(NEW_YORK, 2026, 11, 1, 12).utcoffset() == timedelta(hours=-5)


class TestDaytime:
    @pytest.mark.parametrize(
        ("when", "expected"),
        [
            ((2026, 3, 16, 9, 0), True),  # Monday 09:00: start is inclusive
            ((2026, 3, 16, 8, 59, 59), False),
            ((2026, 3, 16, 17, 59, 59), True),
            ((2026, 3, 16, 18, 0), False),  # end is exclusive
            ((2026, 3, 14, 10, 0), False),  # Saturday
            ((2026, 3, 15, 10, 0), False),  # Sunday
        ],
    )
    def test_is_open(self, when: tuple[int, ...], expected: bool) -> None:
        assert is_open(WEEKDAYS_9_18, local(SEOUL, *when), SEOUL) is expected

    def test_open_now_returns_now_in_utc(self) -> None:
        at = local(SEOUL, 2026, 3, 16, 10, 15, 30)
        opening = next_opening(WEEKDAYS_9_18, at, SEOUL)
        assert opening == at
        assert opening.tzinfo is UTC

    def test_friday_evening_waits_for_monday_morning(self) -> None:
        opening = next_opening(WEEKDAYS_9_18, local(SEOUL, 2026, 3, 13, 18, 0), SEOUL)
        assert opening == datetime(2026, 3, 16, 0, 0, tzinfo=UTC)  # Monday 09:00 KST
        assert opening.tzinfo is UTC

    def test_early_morning_waits_for_same_day(self) -> None:
        opening = next_opening(WEEKDAYS_9_18, local(SEOUL, 2026, 3, 17, 6, 12, 45), SEOUL)
        assert opening == local(SEOUL, 2026, 3, 17, 9, 0)

    def test_naive_datetime_is_utc(self) -> None:
        assert is_open(WEEKDAYS_9_18, datetime(2026, 3, 16, 1, 0), SEOUL)  # 10:00 KST
        assert not is_open(WEEKDAYS_9_18, datetime(2026, 3, 16, 10, 0), SEOUL)  # 19:00 KST


class TestOvernight:
    SUNDAY_NIGHT = window(["sun"], "22:00", "06:00")
    SUN_MON_NIGHTS = window(["sun", "mon"], "22:00", "06:00")

    @pytest.mark.parametrize(
        ("when", "expected"),
        [
            ((2026, 3, 15, 23, 0), True),  # Sunday 23:00
            ((2026, 3, 15, 22, 0), True),
            ((2026, 3, 15, 21, 59), False),
            ((2026, 3, 16, 0, 0), True),  # Monday midnight: still Sunday's window
            ((2026, 3, 16, 5, 0), True),  # Monday 05:00, Monday not listed
            ((2026, 3, 16, 6, 0), False),
            ((2026, 3, 16, 23, 0), False),  # Monday night: Monday not listed
            ((2026, 3, 15, 5, 0), False),  # Sunday small hours belong to Saturday's window
            ((2026, 3, 14, 23, 0), False),  # Saturday night
        ],
    )
    def test_listed_day_is_the_day_the_window_starts(self, when: tuple[int, ...], expected: bool) -> None:
        assert is_open(self.SUNDAY_NIGHT, local(SEOUL, *when), SEOUL) is expected

    def test_monday_morning_after_close_waits_for_monday_night(self) -> None:
        opening = next_opening(self.SUN_MON_NIGHTS, local(SEOUL, 2026, 3, 16, 7, 0), SEOUL)
        assert opening == local(SEOUL, 2026, 3, 16, 22, 0)

    def test_monday_morning_without_monday_waits_a_week(self) -> None:
        opening = next_opening(self.SUNDAY_NIGHT, local(SEOUL, 2026, 3, 16, 7, 0), SEOUL)
        assert opening == local(SEOUL, 2026, 3, 22, 22, 0)

    def test_monday_05_is_open_now(self) -> None:
        at = local(SEOUL, 2026, 3, 16, 5, 0)
        assert next_opening(self.SUNDAY_NIGHT, at, SEOUL) == at

    def test_window_ending_at_midnight(self) -> None:
        evening = window(["fri"], "22:00", "00:00")
        assert is_open(evening, local(SEOUL, 2026, 3, 13, 23, 59), SEOUL)
        assert not is_open(evening, local(SEOUL, 2026, 3, 14, 0, 0), SEOUL)


class TestNeverOpens:
    @pytest.mark.parametrize("w", [window(["mon"], "09:00", "09:00"), window([], "09:00", "18:00")])
    def test_never(self, w: TimeWindowData) -> None:
        assert never_opens(w)
        assert next_opening(w, local(SEOUL, 2026, 3, 16, 9, 0), SEOUL) is None
        for hour in range(24):
            assert not is_open(w, local(SEOUL, 2026, 3, 16, hour, 0), SEOUL)

    def test_ordinary_windows_open(self) -> None:
        assert not never_opens(WEEKDAYS_9_18)
        assert not never_opens(window(["sun"], "23:59", "00:00"))


class TestTimezones:
    def test_same_instant_differs_between_seoul_and_new_york(self) -> None:
        at = datetime(2026, 3, 16, 0, 30, tzinfo=UTC)  # Mon 09:30 KST, Sun 20:30 EDT
        assert is_open(WEEKDAYS_9_18, at, SEOUL)
        assert not is_open(WEEKDAYS_9_18, at, NEW_YORK)
        assert next_opening(WEEKDAYS_9_18, at, SEOUL) == at
        assert next_opening(WEEKDAYS_9_18, at, NEW_YORK) == datetime(2026, 3, 16, 13, 0, tzinfo=UTC)

    def test_weekday_window_follows_dst_change(self) -> None:
        # Friday evening before the change (EST) -> Monday 09:00 after it (EDT) = 13:00 UTC, not 14:00.
        opening = next_opening(WEEKDAYS_9_18, local(NEW_YORK, 2026, 3, 6, 19, 0), NEW_YORK)
        assert opening == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)


class TestDaylightSaving:
    def test_start_in_skipped_hour_opens_when_clock_jumps(self) -> None:
        w = window(["sun"], "02:30", "04:00")
        opening = next_opening(w, local(NEW_YORK, 2026, 3, 7, 12, 0), NEW_YORK)
        assert opening == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT
        assert opening.astimezone(NEW_YORK).hour == 3
        assert not is_open(w, opening - timedelta(seconds=1), NEW_YORK)  # 01:59:59 EST

    def test_window_inside_skipped_hour_waits_a_week(self) -> None:
        w = window(["sun"], "02:00", "02:45")
        opening = next_opening(w, local(NEW_YORK, 2026, 3, 7, 12, 0), NEW_YORK)
        assert opening == local(NEW_YORK, 2026, 3, 15, 2, 0)

    def test_overnight_window_across_spring_forward(self) -> None:
        w = window(["sat"], "22:00", "06:00")
        assert is_open(w, local(NEW_YORK, 2026, 3, 8, 1, 59), NEW_YORK)
        assert is_open(w, datetime(2026, 3, 8, 7, 0, tzinfo=UTC), NEW_YORK)  # 03:00 EDT
        assert not is_open(w, local(NEW_YORK, 2026, 3, 8, 6, 0), NEW_YORK)
        # Open by the wall clock: 22:00 to 06:00 is 7 real hours that night.
        opened = local(NEW_YORK, 2026, 3, 7, 22, 0)
        closed = local(NEW_YORK, 2026, 3, 8, 6, 0)
        # (Subtract in UTC: Python subtracts wall times when both share a tzinfo.)
        assert closed.astimezone(UTC) - opened.astimezone(UTC) == timedelta(hours=7)

    def test_repeated_hour_reopens_the_window(self) -> None:
        w = window(["sun"], "01:00", "01:30")
        first = local(NEW_YORK, 2026, 11, 1, 1, 15)  # EDT
        second = local(NEW_YORK, 2026, 11, 1, 1, 15, fold=1)  # EST, an hour later
        assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
        assert is_open(w, first, NEW_YORK)
        assert is_open(w, second, NEW_YORK)
        between = local(NEW_YORK, 2026, 11, 1, 1, 45)  # EDT, after the first opening closed
        assert not is_open(w, between, NEW_YORK)
        assert next_opening(w, between, NEW_YORK) == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # 01:00 EST

    def test_start_inside_the_repeated_hour_opens_on_its_second_showing(self) -> None:
        w = window(["sun"], "01:15", "01:30")
        between = local(NEW_YORK, 2026, 11, 1, 1, 45)  # EDT
        opening = next_opening(w, between, NEW_YORK)
        # (Compare in UTC: Python never finds a fold=1 time equal to another zone's.)
        assert opening == local(NEW_YORK, 2026, 11, 1, 1, 15, fold=1).astimezone(UTC)  # EST
        assert opening == datetime(2026, 11, 1, 6, 15, tzinfo=UTC)

    def test_zone_that_skipped_a_whole_day(self) -> None:
        apia = ZoneInfo("Pacific/Apia")  # Friday 30 December 2011 never happened in Samoa
        w = window(["fri"], "10:00", "12:00")
        opening = next_opening(w, local(apia, 2011, 12, 29, 12, 0), apia)
        assert opening == local(apia, 2012, 1, 6, 10, 0)


ZONES = [
    "Asia/Seoul",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Santiago",  # DST changes at midnight
    "UTC",
]
# Both US/EU DST changes of 2026 fall in this range.
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 11, 10, tzinfo=UTC)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def windows(draw: st.DrawFn) -> TimeWindowData:
    days = draw(st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True))
    # Coarse times hit DST hours and day edges often; the +offset keeps odd minutes in play.
    start = draw(st.integers(0, 95)) * 15 + draw(st.sampled_from([0, 0, 0, 1, 7]))
    end = draw(st.integers(0, 95)) * 15 + draw(st.sampled_from([0, 0, 0, 1, 7]))
    return window(days, _hhmm(min(start, 1439)), _hhmm(min(end, 1439)))


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    # Near a DST change half of the time: that is where the arithmetic can go wrong.
    near = draw(
        st.sampled_from(
            [
                None,
                datetime(2026, 3, 8, 7, tzinfo=UTC),  # New York spring forward
                datetime(2026, 3, 29, 1, tzinfo=UTC),  # London spring forward
                datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe fall back
                datetime(2026, 4, 5, 3, tzinfo=UTC),  # Santiago fall back
                datetime(2026, 9, 6, 4, tzinfo=UTC),  # Santiago spring forward
                datetime(2026, 10, 3, 15, 30, tzinfo=UTC),  # Lord Howe spring forward
                datetime(2026, 10, 25, 1, tzinfo=UTC),  # London fall back
                datetime(2026, 11, 1, 6, tzinfo=UTC),  # New York fall back
            ]
        )
    )
    if near is None:
        minutes = draw(st.integers(0, int((END - START).total_seconds() // 60)))
        base = START + timedelta(minutes=minutes)
    else:
        base = near + timedelta(minutes=draw(st.integers(-3 * 1440, 3 * 1440)))
    return base + timedelta(seconds=draw(st.sampled_from([0, 0, 0, 1, 59])))


@settings(max_examples=100, deadline=None)
@given(w=windows(), at=instants(), tz_name=st.sampled_from(ZONES))
def test_next_opening_is_the_first_open_minute(w: TimeWindowData, at: datetime, tz_name: str) -> None:
    tz = ZoneInfo(tz_name)
    opening = next_opening(w, at, tz)
    if never_opens(w):
        assert opening is None
        return
    assert opening is not None
    assert opening.tzinfo is UTC
    assert opening >= at
    assert is_open(w, opening, tz)
    assert opening - at <= timedelta(days=8)
    # No earlier open minute between at and the opening.
    probe = at
    while probe < opening:
        assert not is_open(w, probe, tz), probe
        probe += timedelta(minutes=1)
    # And the opening is not a second late: just before it (when after at) is closed.
    if opening > at:
        assert not is_open(w, opening - timedelta(seconds=1), tz)


@settings(max_examples=100, deadline=None)
@given(w=windows(), at=instants(), tz_name=st.sampled_from(ZONES))
def test_is_open_reads_the_local_wall_clock(w: TimeWindowData, at: datetime, tz_name: str) -> None:
    tz = ZoneInfo(tz_name)
    wall = at.astimezone(tz)
    minute = wall.hour * 60 + wall.minute
    start = int(w.start[:2]) * 60 + int(w.start[3:])
    end = int(w.end[:2]) * 60 + int(w.end[3:])
    today = WEEKDAYS[wall.weekday()] in w.days
    yesterday = WEEKDAYS[(wall.weekday() - 1) % 7] in w.days
    if start < end:
        expected = today and start <= minute < end
    elif start > end:
        expected = (today and minute >= start) or (yesterday and minute < end)
    else:
        expected = False
    assert is_open(w, at, tz) is expected
