"""careflow's schedule arithmetic expects the runs Airflow's scheduler makes, DST changes included.

The wake task compares a wait's due time with careflow's ``next_run_after`` and the simulator
steps through ``runs_between``; both must name the runs that the DAG's timetable (the one the
factory gives it) produces, or a wait is left to a run that comes later than expected.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pendulum
import pytest
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.timetables.base import DataInterval, TimeRestriction

from careflow.airflow.factory import timetable_for
from careflow.compiler.schedule import cron_of, next_run_after, runs_between

CASES = [
    # 02:30 does not exist on a spring-forward night: Airflow runs it at 03:30
    ("America/New_York", "30 2 * * *", datetime(2026, 3, 8)),
    ("America/New_York", "15,45 2 * * *", datetime(2026, 3, 8)),
    # 02:00 happens twice at a fall-back: one run, at the second one
    ("Europe/Berlin", "0 2 * * *", datetime(2026, 10, 25)),
    ("Europe/Berlin", "0 * * * *", datetime(2026, 10, 25)),
    ("Europe/Berlin", "*/20 * * * *", datetime(2026, 3, 29)),
    # a half-hour change
    ("Australia/Lord_Howe", "15 2 * * *", datetime(2026, 10, 4)),
    ("Australia/Lord_Howe", "45 1 * * *", datetime(2026, 4, 5)),
    # midnight itself is skipped in Chile
    ("America/Santiago", "@daily", datetime(2026, 9, 6)),
    ("Asia/Seoul", "@daily", datetime(2026, 3, 9)),
    ("America/New_York", "0 3 * * 0", datetime(2026, 11, 1)),
]


def _airflow_runs(tz: str, schedule: str, start: datetime, end: datetime) -> list[datetime]:
    """The run times (``run_after``) Airflow's timetable gives one after another from ``start``."""
    # the DAG's timetable as the scheduler holds it, after serialization
    table = coerce_to_core_timetable(timetable_for(SimpleNamespace(schedule=schedule, timezone=tz)))  # type: ignore[arg-type]
    restriction = TimeRestriction(earliest=pendulum.instance(start), latest=None, catchup=True)
    runs: list[datetime] = []
    last: DataInterval | None = None
    while True:
        info = table.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert info is not None and info.data_interval is not None
        if info.run_after >= end:
            return runs
        runs.append(datetime.fromtimestamp(info.run_after.timestamp(), timezone.utc))  # not pendulum's
        last = info.data_interval


@pytest.mark.parametrize(("tz", "schedule", "day"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_next_run_is_the_one_airflow_makes(tz: str, schedule: str, day: datetime) -> None:
    start = day.replace(tzinfo=timezone.utc) - timedelta(days=2)
    fields = cron_of(schedule).split()
    days = 36 if fields[4] != "*" else 3 if fields[1] == "*" else 6
    runs = _airflow_runs(tz, schedule, start, start + timedelta(days=days))
    assert len(runs) > 3
    compiled = SimpleNamespace(schedule=schedule, timezone=tz)
    assert runs_between(compiled, runs[0], runs[-1] + timedelta(seconds=1)) == runs  # type: ignore[arg-type]
    for run, following in itertools.pairwise(runs):
        moments = [run + (following - run) * k / 7 for k in range(7)]
        expected = [following] * len(moments)
        assert [next_run_after(compiled, m) for m in moments] == expected, (run, following)  # type: ignore[arg-type]
