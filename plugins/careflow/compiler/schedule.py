"""Schedule arithmetic: when a workflow's next scheduled run comes (cron in the workflow's timezone)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

from croniter import croniter

from careflow.compiler.graph import CompiledWorkflow
from careflow.workflow.timezones import zone

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


def cron_of(schedule: str) -> str:
    """The five-field cron expression of a schedule (presets expanded)."""
    return PRESETS.get(schedule, schedule)


#: Longer than any change of a clock (Antarctica/Troll moves two hours): how far before a moment the
#: search for the run after it starts, so that a run moved past a skipped stretch is found.
LOOK_BACK = timedelta(hours=3)


def next_run_after(compiled: CompiledWorkflow, moment: datetime) -> datetime:
    """The first scheduled run strictly after ``moment`` (aware UTC), as Airflow's scheduler makes it.

    The scheduler finds each run from the one before it (``CronMixin._get_next`` of
    ``airflow.timetables._cron``); :func:`_after` takes the same step, so that the wake task and the
    simulator expect the runs the scheduler makes, DST changes included: the cron steps over the
    wall clock; a time the clock skips runs when the clock reaches it after the jump (02:30 on a
    spring-forward night runs at 03:30, even when ``moment`` is 03:00); a time the clock shows twice
    runs at its second showing; a schedule that fires every hour steps by the wall-clock distance.
    """
    expression, tz = cron_of(compiled.schedule), zone(compiled.timezone)
    run = _after(expression, tz, moment - LOOK_BACK)
    while run <= moment:
        run = _after(expression, tz, run)
    return run


def _after(expression: str, tz: tzinfo, current: datetime) -> datetime:
    """Airflow's step from ``current`` to the next time of the cron (aware UTC)."""
    naive = current.astimezone(tz).replace(tzinfo=None)
    cron = croniter(expression, naive)
    scheduled: datetime = cron.get_next(datetime)
    if cron.expanded[1] == ["*"]:
        return (current + (scheduled - naive)).astimezone(timezone.utc)
    return _on_the_wall_clock(scheduled, tz)


def _on_the_wall_clock(naive: datetime, tz: tzinfo) -> datetime:
    """The moment the clock of ``tz`` shows ``naive``: its second showing, or after a skip, the jump."""
    aware = naive.replace(tzinfo=tz, fold=1)
    if aware.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) != naive:
        # The clock skipped this time: the offset before the change places it as far past the jump
        # as it was past the last time shown before it.
        aware = naive.replace(tzinfo=tz, fold=0)
    return aware.astimezone(timezone.utc)


def runs_between(compiled: CompiledWorkflow, start: datetime, end: datetime) -> list[datetime]:
    """Scheduled run times in [start, end), aware UTC."""
    out: list[datetime] = []
    moment = next_run_after(compiled, start - timedelta(microseconds=1))
    while moment < end:
        out.append(moment)
        moment = next_run_after(compiled, moment)
    return out
