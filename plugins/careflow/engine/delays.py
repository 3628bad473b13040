"""Delays: when an execution parked at a delay node is released.

* Minutes and hours are elapsed time: ``arrived_at + 90 minutes``.
* Days and weeks are calendar time on the patient's wall clock: "3 days" after Monday 14:00 is
  Thursday 14:00 local, even when a daylight-saving change makes that 71 or 73 hours.
* Days and weeks with ``at``: that local time on the local date the delay ends ("1 day at
  10:00" after Monday 14:00 is Tuesday 10:00); with 0 days, the next such time (today's if it is
  still ahead). Minutes and hours have no ``at`` (validation refuses it).
* ``until`` delays start from an appointment field (``appointment.scheduled_at``…) read from the
  facts, add the signed ``offset`` (same rules as above), then, if ``at`` is set, move to that
  local time on the resulting local date. "scheduled_at, -1 day, at 10:00" is 10:00 local on the
  day before the appointment.
* A wall time the clock skips (02:30 on a spring-forward day) is read with the offset in force
  before the change, i.e. an hour later on the new clock (03:30); a repeated wall time is its
  first occurrence. This is Python's ``fold=0`` rule.
* A wait until a field that names a day (an ``at`` time, or an offset in days or weeks: "10:00 on
  the day before the appointment") is for that day only. Found once its day is over on the
  patient's calendar (booked or moved to a time that leaves no such day, or no run reached it
  that day), it is not released late: ``day_passed`` says so and the execution leaves the branch
  (``release_day_passed``). Its message would speak of a day that is gone ("tomorrow" on the day
  itself); ``max_lateness`` alone would let it out up to a day late.
* A missing, null or unreadable field gives None: the caller records the execution as exited
  with a reason instead of guessing a time. So does a release past the calendar's range (a
  placeholder date such as 9999-12-31 plus an offset).

Naive datetimes (argument or fact) are read as UTC; every datetime returned is aware and in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from careflow.engine.rules import lookup
from careflow.workflow.models import DelayData

UTC = timezone.utc


def release_time(
    delay: DelayData, arrived_at: datetime, facts: Mapping[str, Any], tz: ZoneInfo
) -> datetime | None:
    """When an execution that reached ``delay`` at ``arrived_at`` may move on (UTC), or None."""
    try:
        return _release_time(delay, _aware(arrived_at), facts, tz)
    except OverflowError:  # before year 1 or after 9999: no time to wait for
        return None


def _release_time(
    delay: DelayData, arrived_at: datetime, facts: Mapping[str, Any], tz: ZoneInfo
) -> datetime | None:
    duration = delay.duration()
    if duration is not None:
        released = shift(arrived_at, duration.amount, duration.unit, tz)
        if delay.at is None or duration.unit not in ("days", "weeks"):
            return released
        released = at_time(released, delay.at, tz)
        if released < arrived_at:  # 0 days at a time already past today: tomorrow's
            released = at_time(shift(arrived_at, 1, "days", tz), delay.at, tz)
        return released
    if delay.until is None:  # unreachable for validated models
        return None
    found, raw = lookup(facts, delay.until)
    base = to_utc(raw) if found else None
    if base is None:
        return None
    if delay.offset is not None:
        base = shift(base, delay.offset.amount, delay.offset.unit, tz)
    if delay.at is not None:
        base = at_time(base, delay.at, tz)
    return base


def at_time(instant: datetime, at: str, tz: ZoneInfo) -> datetime:
    """``at`` (HH:MM) on the local date of ``instant``, in UTC."""
    hour, minute = (int(part) for part in at.split(":"))
    local_date = _aware(instant).astimezone(tz).date()
    return datetime.combine(local_date, time(hour, minute), tzinfo=tz).astimezone(UTC)


def shift(instant: datetime, amount: int, unit: str, tz: ZoneInfo) -> datetime:
    """``instant`` moved by ``amount`` ``unit``: elapsed for minutes/hours, local calendar for days/weeks."""
    # In UTC first: adding to a datetime that carries a ZoneInfo moves its wall time, not the instant.
    instant = _aware(instant).astimezone(UTC)
    if unit in ("minutes", "hours"):
        return instant + timedelta(**{unit: amount})
    if unit not in ("days", "weeks"):
        raise ValueError(f"unknown duration unit {unit!r}: use minutes, hours, days or weeks")
    days = amount * (7 if unit == "weeks" else 1)
    local = instant.astimezone(tz)
    # Arithmetic on the naive wall time keeps the clock reading; re-attaching tz picks the
    # offset of the target day (fold=0 for skipped or repeated wall times).
    wall = local.replace(tzinfo=None) + timedelta(days=days)
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def day_passed(delay: DelayData, release: datetime, now: datetime, tz: ZoneInfo) -> bool:
    """Whether ``delay`` names a day (see the module) and that day of ``release`` is over at ``now``.

    Both are read on ``tz``, the patient's calendar. A wait of an amount, or until a field plus
    minutes or hours without ``at``, names no day: ``max_lateness`` alone judges how late it is.
    """
    if not delay.names_a_day():
        return False
    return _aware(release).astimezone(tz).date() < _aware(now).astimezone(tz).date()


def to_utc(value: Any) -> datetime | None:
    """An aware UTC datetime from a datetime or ISO string (naive = UTC), or None if unreadable."""
    from careflow.engine.facts_builder import as_utc

    try:
        return as_utc(value)
    except ValueError:
        return None
    return None


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
