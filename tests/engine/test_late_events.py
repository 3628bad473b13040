"""Enrollment reads back ``[careflow] enrollment_lookback_minutes``: an event committed late is not lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from .harness import Clinic, action, chain, clinic_view, executions, kst


def _daily(j, day: int) -> None:
    j.run_at(kst(2025, 3, day) + timedelta(seconds=5), interval_start=kst(2025, 3, day - 1))


def test_an_event_committed_after_the_run_read_past_it_is_enrolled_by_the_next(engine, journey):
    j = journey(chain("late", ("a", "action", action())))
    c = Clinic()
    c.completed("ontime", kst(2025, 3, 4, 15))
    c.load(engine)
    _daily(j, 5)
    # The clinic commits an event stamped 23:59:58, after the 00:00:05 run read its window.
    c.completed("late", kst(2025, 3, 4, 23, 59) + timedelta(seconds=58))
    c.load(engine)
    j.run_at(kst(2025, 3, 5, 0, 30), interval_start=kst(2025, 3, 5))  # an hourly run, say
    assert sorted(executions(engine, "late")) == ["late", "ontime"]
    assert set(j.sent) == {"late/a", "ontime/a"}
    j.run_at(kst(2025, 3, 5, 1, 0), interval_start=kst(2025, 3, 5, 0, 30))  # reads it again
    assert len(j.sent) == 2


def test_a_lookback_of_zero_reads_from_the_watermark_only(engine, journey, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ENROLLMENT_LOOKBACK_MINUTES", "0")
    j = journey(chain("no-lookback", ("a", "action", action())))
    c = Clinic()
    c.load(engine)
    _daily(j, 5)
    c.completed("late", kst(2025, 3, 4, 23, 59))
    c.load(engine)
    _daily(j, 6)
    assert executions(engine, "no-lookback") == {}


@pytest.mark.parametrize("value", ["-1", "ten", "10081"])
def test_a_bad_lookback_is_refused_by_name(monkeypatch, value):
    from careflow import settings

    monkeypatch.setenv("AIRFLOW__CAREFLOW__ENROLLMENT_LOOKBACK_MINUTES", value)
    with pytest.raises(ValueError, match=r"enrollment_lookback_minutes must be a whole number"):
        settings.enrollment_lookback()


def test_an_event_listed_twice_by_the_clinics_view_is_one_execution_counted_once(engine, journey):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 15))
    c.completed("p2", kst(2025, 3, 4, 16))
    c.load(engine)
    twice = "SELECT * FROM appointment_events_stored UNION ALL SELECT * FROM appointment_events_stored"
    with clinic_view(engine, "appointment_events", twice):  # as a UNION ALL of two feeds lists them
        j = journey(chain("twice", ("a", "action", action())))
        reports = j.run_at(kst(2025, 3, 5))
    assert reports["t"].enrolled == 2
    assert sorted(executions(engine, "twice")) == ["p1", "p2"]


def test_a_clinic_id_longer_than_careflows_columns_is_found(engine, journey):
    # The clinic's own tables hold ids of any length (docs/contracts.md §2); careflow's bind
    # them as text, never cut to its own column's length.
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("patients", "appointments", "appointment_events"):
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN id TYPE text"))
            for table in ("appointments", "appointment_events"):
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN patient_id TYPE text"))
            conn.execute(text("ALTER TABLE appointment_events ALTER COLUMN appointment_id TYPE text"))
    long_id = "urn:clinic:gangnam-01:patient:" + "0" * 35  # 65 characters
    c = Clinic()
    c.completed("short", kst(2025, 3, 4, 15))
    c.completed(long_id, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("long-ids", ("a", "action", action())))
    j.run_at(kst(2025, 3, 5))
    assert set(j.sent) == {"short/a", f"{long_id}/a"}
