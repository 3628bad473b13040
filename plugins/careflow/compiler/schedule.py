"""Schedule arithmetic: when a workflow's next scheduled run comes (cron in the workflow's timezone)."""

from __future__ import annotations

from datetime import datetime, timezone

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


def next_run_after(compiled: CompiledWorkflow, moment: datetime) -> datetime:
    """The first scheduled run strictly after ``moment`` (aware UTC)."""
    local = moment.astimezone(zone(compiled.timezone))
    nxt = croniter(cron_of(compiled.schedule), local).get_next(datetime)
    return nxt.astimezone(timezone.utc)


def runs_between(compiled: CompiledWorkflow, start: datetime, end: datetime) -> list[datetime]:
    """Scheduled run times in [start, end), aware UTC."""
    local = start.astimezone(zone(compiled.timezone))
    it = croniter(cron_of(compiled.schedule), local - _epsilon())
    out: list[datetime] = []
    while True:
        moment = it.get_next(datetime).astimezone(timezone.utc)
        if moment >= end:
            return out
        if moment >= start:
            out.append(moment)


def _epsilon():  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(microseconds=1)
