"""``careflow simulate`` says what it ran: its runs of each kind and the executions they enrolled."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from careflow.store import tables
from support import copy_airflow_db, run_careflow

from .test_simulate_and_metrics_errors import SIMULATE

SURGERY = datetime(2026, 3, 2, 3, 0, tzinfo=timezone.utc)


def _one_implant_surgery(careflow_db: str) -> None:
    """One patient whose implant surgery was completed on the first simulated day."""
    engine = create_engine(careflow_db)
    try:
        with engine.begin() as conn:
            conn.execute(insert(tables.clinics).values(id="gangnam-01", name="clinic"))
            conn.execute(insert(tables.patients).values(id="p1", clinic_id="gangnam-01", name="patient"))
            conn.execute(
                insert(tables.appointments).values(
                    id="a1", patient_id="p1", clinic_id="gangnam-01", type="implant_surgery",
                    status="completed", scheduled_at=SURGERY, created_at=SURGERY, completed_at=SURGERY,
                )
            )  # fmt: skip
            conn.execute(
                insert(tables.appointment_events).values(
                    id="e1", appointment_id="a1", patient_id="p1", clinic_id="gangnam-01",
                    type="appointment_completed", occurred_at=SURGERY,
                )
            )  # fmt: skip
    finally:
        engine.dispose()


@pytest.mark.airflow
def test_simulate_counts_its_runs_and_the_executions_they_enrolled(
    published: dict[str, str], airflow_home: Path
) -> None:
    copy_airflow_db(airflow_home, Path(published["AIRFLOW_HOME"]) / "airflow.db")
    _one_implant_surgery(published["CAREFLOW_DB_URL"])
    argv = [*SIMULATE[:-3], "--days", "2", "--dry-run"]

    result = run_careflow(published, *argv, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["start"], summary["end"]) == ("2026-03-02T00:00:00+00:00", "2026-03-04T00:00:00+00:00")
    assert summary["runs"] == [{"workflow_id": "implant-aftercare", "scheduled": 2, "wake": 0, "enrolled": 1}]

    # The same days again: the runs run, and enroll nobody (the patient is enrolled already).
    result = run_careflow(published, *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "\n== runs from 2026-03-02T00:00 to 2026-03-04T00:00 UTC (the simulated clock) ==\n"
        "  implant-aftercare                2 scheduled     0 wake       0 enrolled\n"
    ) in result.stdout
