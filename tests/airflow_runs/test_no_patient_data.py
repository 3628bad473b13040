"""Real Airflow task runs (dag.test) leave no patient name, phone number or message body behind.

The workflow runs through Airflow's task runner with task logging on; then the task output, every
XCom value and every log file are searched for each patient's name and phone number and for each
message body the provider received.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from careflow.demo.data import generate, load
from careflow.providers.fake_server import FakeProviderServer
from careflow.store.db import get_engine
from careflow.store.migrations import upgrade
from support import careflow_env, failure_output, phone_spellings, publish_for_airflow

pytestmark = pytest.mark.airflow


WORKFLOW = {
    "id": "booking-thanks",
    "name": "예약 감사 문자",
    "clinic_id": "gangnam-01",
    "timezone": "Asia/Seoul",
    "nodes": [
        {
            "id": "booked",
            "type": "trigger",
            "data": {"label": "예약", "event": "appointment_created", "schedule": "@daily"},
        },
        {
            "id": "thanks",
            "type": "action",
            "data": {
                "label": "감사 문자",
                "channel": "lms",
                "template": "{{ patient.name }}님, {{ clinic.name }} 예약 감사합니다. 문의 {{ clinic.phone }} / {{ patient.phone }}",
            },
        },
    ],
    "edges": [{"id": "e1", "source": "booked", "target": "thanks"}],
}


def test_task_logs_and_xcom_hold_ids_only(airflow_home: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'careflow.db'}"
    engine = get_engine(url)
    upgrade(engine)
    data = generate(date(2026, 3, 2), patients=120)
    load(engine, data)
    workflows = publish_for_airflow(WORKFLOW, engine, tmp_path)

    with FakeProviderServer() as provider:
        env = careflow_env(
            airflow_home, workflows, url, tmp_path, provider, AIRFLOW__LOGGING__LOGGING_LEVEL="INFO"
        )
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "careflow",
                "simulate",
                "--workflow",
                "booking-thanks",
                "--start",
                "2026-03-04",
                "--days",
                "1",
                "--airflow-runner",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        bodies = [m["body"] for m in provider.messages()]
    assert run.returncode == 0, failure_output(run)
    assert bodies, (
        f"the run sent nothing: the scan would prove nothing\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
    )
    # The task runner really ran the node tasks (their count lines are in the output).
    assert "careflow booking-thanks/thanks" in run.stdout + run.stderr

    haystacks = [run.stdout, run.stderr]
    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        haystacks += [str(row[0]) for row in conn.execute("select value from xcom")]
    haystacks += [p.read_text(errors="replace") for p in (airflow_home / "logs").rglob("*") if p.is_file()]
    text = "\n".join(haystacks)

    names = {p["name"] for p in data["patients"]}
    phones = {p["phone"] for p in data["patients"] if p["phone"]}
    leaks = [n for n in names if n in text]
    leaks += [p for p in phones if any(s in text for s in phone_spellings(p))]
    leaks += [b[:40] for b in bodies if b in text]
    assert not leaks, f"patient data found in task output, XCom or logs: {leaks[:5]}"
