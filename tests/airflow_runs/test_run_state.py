"""A DAG run's state follows its node tasks: a node that failed fails the run, and the wake still runs.

``careflow_wake`` is the last task of every run. It is a teardown: it runs once every node task is
done, in whatever state, and Airflow leaves it out of the run's state. The workflow below sends
two messages in a row to a provider that refuses careflow's token: the first action fails at once
(a configuration error is not retried), the second cannot run, and the run must say ``failed``,
as an operator watching the DAG's runs expects, while the wake task still does its work.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from careflow.providers.fake_server import FakeProviderServer
from careflow.store import tables
from careflow.store.db import dispose_engines, get_engine
from careflow.store.migrations import upgrade
from engine.harness import Clinic, action, chain, cohort
from support import careflow_env, failure_output, publish_for_airflow

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

PATIENTS = 3


def test_a_failed_node_task_fails_the_run_and_the_wake_task_still_runs(
    airflow_home: Path, tmp_path: Path
) -> None:
    workflow_id = "run-state-refused-token"
    url = f"sqlite:///{tmp_path / 'careflow.db'}"
    engine = get_engine(url)
    upgrade(engine)
    clinic = Clinic()
    cohort(clinic, PATIENTS, datetime.now(timezone.utc) - timedelta(hours=2))
    clinic.load(engine)
    document = chain(
        workflow_id, ("first", "action", action()), ("second", "action", action("다시 안내드립니다"))
    )
    workflows = publish_for_airflow(document, engine, tmp_path)

    with FakeProviderServer() as provider:
        env = careflow_env(
            airflow_home,
            workflows,
            url,
            tmp_path,
            provider,
            token="not-the-provider-s-token",
            connection_extra={"max_concurrency": 5, "timeout": 5},
        )
        run = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", f"careflow__{workflow_id}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        stats = provider.stats()

    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        runs = conn.execute(
            "select state from dag_run where dag_id = ?", (f"careflow__{workflow_id}",)
        ).fetchall()
        states = dict(
            conn.execute(
                "select task_id, state from task_instance where dag_id = ?", (f"careflow__{workflow_id}",)
            ).fetchall()
        )
    detail = failure_output(run)
    assert stats["accepted"] == 0, stats
    assert states == {
        "t": "success",
        "first": "failed",
        "second": "upstream_failed",
        "careflow_wake": "success",
    }, (states, detail)
    assert [state for (state,) in runs] == ["failed"], (runs, detail)

    # Nothing is lost: the enrolled executions wait at the refused action for the next run.
    engine = get_engine(url)
    with engine.connect() as conn:
        s = tables.steps
        waiting = conn.execute(
            select(s.c.node_id, func.count()).where(s.c.workflow_id == workflow_id).group_by(s.c.node_id)
        ).all()
    dispose_engines()
    assert dict(waiting).get("first") == PATIENTS, waiting
