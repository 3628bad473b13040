"""The schedules a trigger may run on.

Workflows are periodic: ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` or a five-field cron
expression (minute hour day-of-month month day-of-week). ``@once``, ``None``, six-field
(seconds) crons and croniter's random (``R``) and hashed (``H``) fields are refused.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache

PRESETS: dict[str, timedelta] = {
    "@hourly": timedelta(hours=1),
    "@daily": timedelta(days=1),
    "@weekly": timedelta(weeks=1),
    "@monthly": timedelta(days=31),
}

# croniter's extensions: a field R, R(0-30), R/15… is drawn at random each time the cron is read,
# so every parse of the DAG file would give another schedule; H… needs a hash id Airflow never passes.
_RANDOM_OR_HASHED = re.compile(r"[HR](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE | re.ASCII)


def schedule_problem(schedule: object) -> str | None:
    """Why ``schedule`` is refused, or None when careflow can run it."""
    if not isinstance(schedule, str):
        return "must be text such as '@daily' or a cron expression like '0 9 * * *'"
    text = schedule.strip()
    if text in PRESETS:
        return None
    if text.startswith("@"):
        return (
            f"{schedule!r} is not a schedule careflow runs: use @hourly, @daily, @weekly, @monthly "
            "or a five-field cron expression (workflows run periodically)"
        )
    if len(text.split()) != 5:
        return f"{schedule[:60]!r} is not a five-field cron expression (minute hour day month weekday)"
    if any(_RANDOM_OR_HASHED.fullmatch(part) for field in text.split() for part in field.split(",")):
        return (
            f"{schedule[:60]!r} uses R (a random time) or H (a hashed time), but a workflow runs at "
            "the times you set; write them out, e.g. '0 9 * * *'"
        )
    from croniter import croniter

    try:
        valid = croniter.is_valid(text)
    except Exception:  # croniter raises on some garbage instead of answering False
        valid = False
    if not valid:
        return f"{schedule[:60]!r} is not a valid cron expression (minute hour day month weekday)"
    try:  # valid fields can still name a day that never comes (31 February)
        croniter(text, datetime(2026, 1, 1)).get_next(datetime)
    except Exception:
        return f"{schedule[:60]!r} never runs: no date matches it"
    return None


@lru_cache(maxsize=256)
def longest_gap(schedule: str) -> timedelta | None:
    """The longest time between two runs of a valid schedule (None when it is not valid)."""
    if schedule_problem(schedule) is not None:
        return None
    text = schedule.strip()
    if text in PRESETS:
        return PRESETS[text]
    from croniter import croniter

    runs = croniter(text, datetime(2026, 1, 1))
    previous = runs.get_next(datetime)
    gap = timedelta(0)
    # A year of runs covers every weekday/month pattern; cap the work for every-minute crons.
    for _ in range(400):
        current = runs.get_next(datetime)
        gap = max(gap, current - previous)
        previous = current
        if current.year > 2026:
            break
    return gap
