"""Whose clock a wait, a window and an age are read on: the patient's own zone wins.

The clinic and the workflow are in Seoul; some patients live in New York, where the clocks went
forward on 9 March 2025 and the calendar day starts fourteen hours after Seoul's.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from .harness import Clinic, action, chain, executions, kst, steps_of

NY = ZoneInfo("America/New_York")
UTC = timezone.utc
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_days_of_a_delay_are_counted_on_the_patients_calendar(engine, journey, fake):
    c = Clinic()
    event = datetime(2025, 3, 7, 14, 0, tzinfo=NY).astimezone(UTC)  # Friday 14:00 in New York
    c.completed("ny", event, timezone="America/New_York")
    c.completed("seoul", event)
    c.load(engine)
    j = journey(chain("delay-tz", ("d", "delay", {"amount": 3, "unit": "days"}), ("a", "action", action())))
    j.run_at(event + timedelta(hours=1))
    steps = steps_of(engine, "delay-tz")
    # Monday 14:00 on the patient's wall clock, across New York's clock change (23 h that Sunday).
    assert _aware(steps[("ny", "d")]["due_at"]).astimezone(NY) == datetime(2025, 3, 10, 14, 0, tzinfo=NY)
    assert _aware(steps[("seoul", "d")]["due_at"]) == event + timedelta(days=3)  # Seoul keeps 24 h days


def test_a_windows_own_timezone_applies_to_a_patient_without_one(engine, journey, fake):
    c = Clinic()
    c.completed("local", kst(2025, 3, 4, 10))  # no timezone of their own
    c.completed("abroad", kst(2025, 3, 4, 10), timezone="Asia/Seoul")
    c.load(engine)
    window = {"days": EVERY_DAY, "start": "09:00", "end": "17:00", "timezone": "America/New_York"}
    j = journey(chain("window-tz", ("w", "timeWindow", window), ("a", "action", action())))
    j.run_at(kst(2025, 3, 4, 11))  # 11:00 in Seoul, 21:00 the evening before in New York
    steps = steps_of(engine, "window-tz")
    assert steps[("local", "w")]["status"] == "waiting"
    assert _aware(steps[("local", "w")]["due_at"]).astimezone(NY) == datetime(2025, 3, 4, 9, 0, tzinfo=NY)
    assert steps[("abroad", "w")]["status"] == "done"  # open on the patient's own clock
    assert set(j.sent) == {"abroad/a"}


def test_the_age_filter_reads_the_patients_calendar_on_the_day_of_the_event(engine, journey, fake):
    c = Clinic()
    # 19 on 5 March; the appointment ends at 08:00 in Seoul that day (23:00 on the 4th in UTC).
    c.completed("birthday", kst(2025, 3, 5, 8), birth_date=date(2006, 3, 5))
    # 19 on 5 March in New York, whose 5 March starts at 14:00 in Seoul: at 08:00 Seoul still 18.
    c.completed("new_york", kst(2025, 3, 5, 8), birth_date=date(2006, 3, 5), timezone="America/New_York")
    c.load(engine)
    j = journey(chain("age-tz", ("a", "action", action()), filters={"min_age": 19}))
    report = j.run_at(kst(2025, 3, 6))["t"]
    assert (report.enrolled, report.reasons["filtered_age"]) == (1, 1)
    assert set(executions(engine, "age-tz")) == {"birthday"}


def test_a_clinic_timezone_careflow_does_not_know_counts_as_none_the_workflows_applies(engine, journey, fake):
    """A clinic's software that writes ``KST`` (not an IANA name) is read as a clinic without a
    timezone: its patients' ages and days are counted on the workflow's calendar, as they are for
    the enrollment's age filter, never on UTC's (nine hours behind Seoul's)."""
    c = Clinic()
    c.rows["clinics"][0]["timezone"] = "KST"
    # 08:00 on 5 March in Seoul is 23:00 on the 4th in UTC: 19 that day in Seoul, 18 in UTC.
    c.completed("birthday", kst(2025, 3, 5, 8), birth_date=date(2006, 3, 5))
    c.load(engine)
    doc = chain(
        "unknown-clinic-zone",
        ("c", "condition", {"all": [{"field": "patient.age", "op": "gte", "value": 19}]}),
        ("adult", "action", action("{{ clinic.timezone }}")),
        ("minor", "action", action()),
        edges=[("t", "c", None), ("c", "adult", "true"), ("c", "minor", "false")],
        filters={"min_age": 19},
        schedule="@hourly",
    )
    j = journey(doc)
    j.run_at(kst(2025, 3, 5, 8, 30))
    assert set(executions(engine, "unknown-clinic-zone")) == {"birthday"}  # the filter: 19 in Seoul
    assert steps_of(engine, "unknown-clinic-zone")[("birthday", "c")]["output"] == {"branch": "true"}
    assert [m["body"] for m in fake.messages()] == ["Asia/Seoul"]
