"""A clinic row careflow cannot read fails that patient's step, never the others'.

On SQLite the values are written into the table itself (it keeps whatever it is given); on
Postgres, whose column types refuse them, they come through a view, as a clinic that maps its
own schema onto careflow's tables would serve them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from careflow.store import tables

from .harness import Clinic, action, chain, clinic_view, cohort, executions, kst, ledger, steps_of

T = kst(2025, 3, 5)
#: valid JSON (Postgres stores it), nested deeper than Python's parsers go
TOO_DEEP = "[" * 3000 + "]" * 3000
SPOILED = [
    ("consent_messages", "maybe"),
    ("birth_date", "last spring"),
    ("attributes", "{not json"),
    ("attributes", TOO_DEEP),
]


@contextmanager
def _unreadable(engine, patient: str, column: str, value: str, *, as_type: str = "text") -> Iterator[None]:  # type: ignore[no-untyped-def]
    """``patients.<column>`` of ``patient`` reads as ``value`` while the block runs (on Postgres, as
    a column of type ``as_type``)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE patients SET {column} = :v WHERE id = :id"), {"v": value, "id": patient}
            )
        yield
        return
    columns = [c.name for c in tables.patients.c]
    shown = ", ".join(
        f"(CASE WHEN id = :id THEN :v ELSE {c}::text END)::{as_type} AS {c}" if c == column else c
        for c in columns
    )
    with engine.connect() as conn:  # a view's definition cannot take parameters: quoted literals
        quoted = {
            k: conn.exec_driver_sql("SELECT quote_literal(%s)", (v,)).scalar()
            for k, v in (("id", patient), ("v", value))
        }
    shown = shown.replace(":id", quoted["id"]).replace(":v", quoted["v"])
    with clinic_view(engine, "patients", f"SELECT {shown} FROM patients_stored"):
        yield


def _cohort(engine, size: int) -> list[str]:  # type: ignore[no-untyped-def]
    """``size`` patients whose implant surgery completed the afternoon before ``T``, loaded."""
    c = Clinic()
    patients = cohort(c, size, kst(2025, 3, 4, 15))
    c.load(engine)
    return patients


@pytest.mark.parametrize(("column", "value"), SPOILED)
def test_an_unreadable_patient_row_fails_that_patient_only(engine, journey, fake, column, value):
    patients = _cohort(engine, 4)
    bad = patients[2]
    j = journey(chain("unreadable", ("a", "action", action())))
    with _unreadable(engine, bad, column, value):
        report = j.run_at(T)["a"]
    assert (report.sent, report.failed) == (3, 1)
    assert report.reasons["clinic_data_unreadable"] == 1
    assert set(j.sent) == {f"{p}/a" for p in patients if p != bad}
    step = steps_of(engine, "unreadable")[(bad, "a")]
    assert (step["status"], step["error"]) == ("failed", "clinic_data_unreadable")
    message = ledger(engine, "unreadable")[bad]
    assert (message["status"], message["reason"]) == ("failed", "clinic_data_unreadable")
    assert executions(engine, "unreadable")[bad]["status"] == "failed"


def test_attributes_nested_too_deeply_in_a_json_column_fail_that_patient_only(engine, journey, fake):
    """A JSON column is read as text and parsed per patient: one that nests too deeply is that
    patient's problem, whatever the column's type in the clinic's view."""
    patients = _cohort(engine, 3)
    bad = patients[1]
    j = journey(chain("unreadable", ("a", "action", action())))
    with _unreadable(engine, bad, "attributes", TOO_DEEP, as_type="json"):
        report = j.run_at(T)["a"]
    assert (report.sent, report.failed) == (2, 1)
    assert ledger(engine, "unreadable")[bad]["reason"] == "clinic_data_unreadable"


def test_an_unreadable_row_exits_that_execution_at_a_condition(engine, journey, fake):
    patients = _cohort(engine, 3)
    bad = patients[0]
    doc = chain(
        "unreadable",
        ("c", "condition", {"all": [{"field": "patient.age", "op": "gte", "value": 18}]}),
        ("a", "action", action()),
        edges=[("t", "c", None), ("c", "a", "true")],
    )
    j = journey(doc)
    with _unreadable(engine, bad, "birth_date", "1980-13-45"):
        reports = j.run_at(T)
    assert reports["c"].reasons["clinic_data_unreadable"] == 1
    assert reports["a"].sent == 2
    assert executions(engine, "unreadable")[bad]["exit_reason"] == "clinic_data_unreadable@c"


def test_an_unreadable_birth_date_does_not_stop_the_enrollment_of_others(engine, journey, fake):
    patients = _cohort(engine, 3)
    bad = patients[1]
    j = journey(chain("unreadable", ("a", "action", action()), filters={"min_age": 18}))
    with _unreadable(engine, bad, "birth_date", "someday"):
        reports = j.run_at(T)
    assert reports["t"].enrolled == 2 and reports["t"].reasons["filtered_age"] == 1
    assert set(executions(engine, "unreadable")) == {p for p in patients if p != bad}
    assert reports["a"].sent == 2


def test_a_sentinel_date_fails_that_patient_only(engine, journey, fake):
    c = Clinic()
    patients = cohort(c, 3, kst(2025, 3, 4, 15))
    c.patient("sentinel")
    at = kst(2025, 3, 4, 15)
    end_of_time = datetime(9999, 12, 31, 23, 0, tzinfo=timezone.utc)  # past year 9999 in Seoul
    c.appointment("sentinel-a", "sentinel", scheduled_at=at - timedelta(hours=1), completed_at=end_of_time)
    c.event("sentinel-e", "sentinel-a", "appointment_completed", at)
    c.load(engine)
    j = journey(chain("sentinel", ("a", "action", action())))
    report = j.run_at(T)["a"]
    assert (report.sent, report.failed) == (3, 1)
    assert set(j.sent) == {f"{p}/a" for p in patients}
    message = ledger(engine, "sentinel")["sentinel"]
    assert (message["status"], message["reason"]) == ("failed", "clinic_data_unreadable")
