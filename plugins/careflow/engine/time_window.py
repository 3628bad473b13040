"""Time windows: the days and local hours in which messages may go out.

A window is read off the local wall clock: it is open whenever a clock in the patient's (or
clinic's) timezone shows a listed day and a time in ``[start, end)``.

* ``start < end`` (09:00–18:00): open from ``start`` to ``end`` on each listed day; ``end`` is
  exclusive, so 18:00:00 is closed.
* ``start > end`` is an overnight window (22:00–06:00): the listed day is the day the window
  **starts**. Listing ``sun`` opens Sunday 22:00 until Monday 06:00; Monday 05:00 is open
  because Sunday is listed, whether or not Monday is.
* ``start == end``, or no day listed, never opens (the validator warns about it). A 24-hour
  window is written 00:00–23:59 (or ``start > end`` overnight windows on every day).
* Daylight saving time follows the wall clock. On the spring-forward day a start time the clock
  skips (02:30 in America/New_York) opens the window when the clock jumps (03:00 EDT), and a
  window lying wholly inside the skipped hour does not open that day. On the fall-back day the
  repeated hour is in the window both times it is shown.

Naive datetimes are read as UTC; every datetime returned is aware and in UTC.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from careflow.workflow.models import WEEKDAYS, TimeWindowData

UTC = timezone.utc
_DAY_INDEX = {name: index for index, name in enumerate(WEEKDAYS)}  # Monday = 0, like date.weekday()
# A window that opens at all opens within a week; the margin covers zones that skip a whole
# day (Pacific/Apia skipped 30 December 2011), after which a weekly window opens a week later.
_SEARCH_WEEKS = 6
_OFFSET_PROBE = timedelta(hours=6)  # shorter than any gap between two transitions of one zone


def never_opens(window: TimeWindowData) -> bool:
    """True when the window can never be open: no day listed, or ``start == end``."""
    return not window.days or window.start == window.end


def is_open(window: TimeWindowData, at: datetime, tz: ZoneInfo) -> bool:
    """True when the window is open at the instant ``at``, read on the wall clock of ``tz``."""
    local = _aware(at).astimezone(tz)
    return _open_at_wall(window, local.weekday(), local.hour * 60 + local.minute)


def next_opening(window: TimeWindowData, at: datetime, tz: ZoneInfo) -> datetime | None:
    """The first instant at or after ``at`` when the window is open (UTC), or None if it never opens.

    Returns ``at`` itself (in UTC) when the window is open now.
    """
    at = _aware(at).astimezone(UTC)
    if never_opens(window):
        return None
    if is_open(window, at, tz):
        return at
    start = _parse(window.start)
    days = {_DAY_INDEX[d] for d in window.days}
    first_day = at.astimezone(tz).date()
    for week in range(_SEARCH_WEEKS):
        # Whole seconds, so that bisection lands exactly on a transition instant.
        span_start = at.replace(microsecond=0) + timedelta(weeks=week)
        # Past the last local day of this week's candidates, so that a transition opening the
        # window before one of them is always among the candidates too.
        span_end = span_start + timedelta(days=9)
        candidates = list(_transitions(span_start, span_end, tz))
        for offset in range(week * 7, week * 7 + 8):
            day = first_day + timedelta(days=offset)
            if day.weekday() in days:
                candidates.extend(_wall_instants(day, start, tz))
        opening = [c for c in candidates if c >= at and is_open(window, c, tz)]
        if opening:
            return min(opening)
    return None


def _open_at_wall(window: TimeWindowData, weekday: int, minute: int) -> bool:
    days, start, end = _spec(tuple(window.days), window.start, window.end)
    if start < end:
        return weekday in days and start <= minute < end
    if start > end:
        # Overnight: the evening belongs to today's window, the small hours to yesterday's.
        return (weekday in days and minute >= start) or ((weekday - 1) % 7 in days and minute < end)
    return False


@lru_cache(maxsize=1024)
def _spec(days: tuple[str, ...], start: str, end: str) -> tuple[frozenset[int], int, int]:
    # Cached: sensors and the engine ask the same window about many instants.
    return frozenset(_DAY_INDEX[d] for d in days), _minutes(start), _minutes(end)


def _wall_instants(day: date, at: time, tz: ZoneInfo) -> list[datetime]:
    """The instants at which the wall clock of ``tz`` shows ``day`` ``at`` (both folds)."""
    local = datetime.combine(day, at, tzinfo=tz)
    # In a repeated hour the two folds are two instants; in a skipped hour neither shows
    # ``at`` (is_open filters them out and the transition instant is the opening instead).
    return [local.replace(fold=fold).astimezone(UTC) for fold in (0, 1)]


def _transitions(lo: datetime, hi: datetime, tz: ZoneInfo) -> list[datetime]:
    """Instants in ``[lo, hi]`` at which the UTC offset of ``tz`` changes (the wall clock jumps)."""
    found = []
    probe = lo
    while probe < hi:
        nxt = min(probe + _OFFSET_PROBE, hi)
        if _offset(probe, tz) != _offset(nxt, tz):
            found.append(_first_change(probe, nxt, tz))
        probe = nxt
    return found


def _first_change(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """The first second in ``(lo, hi]`` whose offset differs from ``lo``'s (bisection)."""
    before = _offset(lo, tz)
    low, high = 0, int((hi - lo).total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if _offset(lo + timedelta(seconds=mid), tz) == before:
            low = mid
        else:
            high = mid
    return lo + timedelta(seconds=high)


def _offset(instant: datetime, tz: ZoneInfo) -> timedelta | None:
    return instant.astimezone(tz).utcoffset()


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _parse(hhmm: str) -> time:
    hour, minute = hhmm.split(":")
    return time(int(hour), int(minute))


def _minutes(hhmm: str) -> int:
    hour, minute = hhmm.split(":")
    return int(hour) * 60 + int(minute)
