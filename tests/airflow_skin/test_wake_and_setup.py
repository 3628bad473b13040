"""The Airflow skin: the wake task defers in the triggerer and starts a wake run; setup makes the pool."""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import DagRunTriggerException, TaskDeferred
from sqlalchemy import insert

from careflow.airflow.factory import build_dag
from careflow.compiler import compile_workflow
from careflow.store import tables
from careflow.workflow.validation import validate_path
from support import EXAMPLES, airflow_env

NOW = datetime(2026, 3, 9, 15, 0, tzinfo=timezone.utc)  # midnight in Seoul: the daily run


def _compiled():  # type: ignore[no-untyped-def]
    workflow = validate_path(EXAMPLES / "day-before-reminder.json").workflow
    assert workflow is not None
    return compile_workflow(workflow, version=1, content_hash="h")


def _park(engine, compiled, due: datetime, execution_id: str = "x1") -> None:  # type: ignore[no-untyped-def]
    node = next(n for n in compiled.order if compiled.node(n).type == "delay")
    with engine.begin() as conn:
        conn.execute(
            insert(tables.executions).values(
                id=execution_id,
                workflow_id=compiled.workflow_id,
                version=1,
                trigger_event_id=f"e-{execution_id}",
                patient_id="p1",
                appointment_id="a1",
                clinic_id=compiled.clinic_id,
                status="waiting",
                enrolled_at=NOW,
                event_at=NOW,
                updated_at=NOW,
            )
        )
        conn.execute(
            insert(tables.steps).values(
                execution_id=execution_id,
                workflow_id=compiled.workflow_id,
                node_id=node,
                status="waiting",
                arrived_at=NOW - timedelta(days=2),
                due_at=due,
                attempts=1,
                version=1,
            )
        )


def _context(conf: dict, began: datetime | None = NOW) -> dict:  # type: ignore[type-arg]
    """A task's context in the daily run, which began at ``NOW`` unless told otherwise."""
    run = SimpleNamespace(conf=conf, run_id="scheduled__x", start_date=began)
    return {"dag_run": run, "run_id": "scheduled__x"}


def test_a_wait_that_ended_while_the_run_went_on_is_woken_for_at_once(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    compiled = _compiled()
    due = NOW + timedelta(seconds=30)  # parked by the delay task at NOW, due before the wake task starts
    _park(engine, compiled, due)
    wake = build_dag(compiled).get_task("careflow_wake")
    later = NOW + timedelta(seconds=60)
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: later)
    with pytest.raises(TaskDeferred) as deferred:
        wake.execute(_context({}))
    assert deferred.value.trigger.moment == due  # in the past: the trigger fires at once
    with pytest.raises(DagRunTriggerException) as started:
        wake.execute_complete(_context({}), event=None, **deferred.value.kwargs)
    assert started.value.dag_run_id == "careflow_wake__20260309T150030"


def test_a_wait_before_the_next_run_is_waited_for_in_the_triggerer(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    compiled = _compiled()
    due = NOW + timedelta(minutes=30)  # this workflow runs hourly: the wait ends before the next run
    _park(engine, compiled, due)
    wake = build_dag(compiled).get_task("careflow_wake")
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: NOW)
    with pytest.raises(TaskDeferred) as deferred:
        wake.execute(_context({}))
    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger)
    assert trigger.moment == due
    # a triggerer that never ends the wait: the scheduler times it out at the next (hourly) run
    assert deferred.value.timeout == timedelta(hours=1)
    with pytest.raises(DagRunTriggerException) as started:
        wake.execute_complete(_context({}), event=None, **deferred.value.kwargs)
    assert started.value.trigger_dag_id == "careflow__day-before-reminder"
    assert started.value.dag_run_id == "careflow_wake__20260309T153000"
    assert started.value.skip_when_already_exists is True


def test_a_wait_the_triggerer_never_ended_fails_the_wake_task_at_once_and_says_why() -> None:
    """The scheduler timed the wait out (``__fail__``, "Trigger timeout"): the task fails without
    retries, so the run ends and the next scheduled run (which moves every wait due) can start."""
    from airflow.sdk.exceptions import AirflowFailException

    wake = build_dag(_compiled()).get_task("careflow_wake")
    with pytest.raises(
        AirflowFailException, match=r"triggerer did not end the wait .*\(is the triggerer running\?\)"
    ):
        wake.resume_execution("__fail__", {"error": "Trigger timeout"}, _context({}))


def test_the_breaker_wait_is_timed_out_by_the_scheduler_and_then_sends_anyway(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The action's wait for its breaker ends five minutes after its moment at the latest, with a
    triggerer running or not; timed out, the task sends what is still pending."""
    from careflow.airflow.operators.wake import TRIGGER_GRACE

    dag = build_dag(_compiled())
    action = next(t for t in dag.tasks if type(t).__name__ == "ActionOperator")
    retry_at = datetime.now(timezone.utc) + timedelta(seconds=40)
    with pytest.raises(TaskDeferred) as deferred:
        action._defer_until(retry_at.timestamp(), {})
    assert deferred.value.trigger.moment == retry_at
    assert timedelta(0) < TRIGGER_GRACE < deferred.value.timeout <= TRIGGER_GRACE + timedelta(seconds=40)

    sent: list[object] = []
    told: list[object] = []
    monkeypatch.setattr(type(action), "execute", lambda self, context: sent.append(context) or {"sent": 3})
    monkeypatch.setattr("careflow.airflow.alerts._recent", {})
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")  # "once" decided by this process, not a shared key
    monkeypatch.setattr("careflow.airflow.alerts.send_alert", told.append)
    assert action.resume_execution("__fail__", {"error": "Trigger timeout"}, {"run_id": "r"}) == {"sent": 3}
    assert sent == [{"run_id": "r"}]
    # ... and an operator is told that the triggerer did not wake it, once for the task's run
    [alert] = told
    assert alert.title.startswith("Airflow's triggerer did not end an action task's wait")  # type: ignore[attr-defined]
    assert (alert.workflow_id, alert.node_id, alert.run_id) == (  # type: ignore[attr-defined]
        "day-before-reminder",
        action.careflow_node_id,
        "r",
    )
    assert "not woken 5 minutes after the wait's end" in alert.detail  # type: ignore[attr-defined]
    action.resume_execution("__fail__", {"error": "Trigger timeout"}, {"run_id": "r"})
    assert len(told) == 1
    # a trigger that failed (not timed out) still fails the attempt, as Airflow has it
    with pytest.raises(Exception, match="Trigger failure"):
        action.resume_execution("__fail__", {"error": "Trigger failure"}, {"run_id": "r"})


def test_a_wait_left_overdue_before_the_run_began_does_not_hide_the_later_ones(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    compiled = _compiled()
    # Due before this run began and still parked: its node's task did not move it on (a task
    # upstream of it failed). A wake run for it exists already; the next scheduled run takes it.
    _park(engine, compiled, NOW - timedelta(hours=2), "stuck")
    _park(engine, compiled, NOW + timedelta(minutes=30), "later")
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: NOW)
    wake = build_dag(compiled).get_task("careflow_wake")
    with pytest.raises(TaskDeferred) as deferred:
        wake.execute(_context({}, began=NOW - timedelta(minutes=5)))
    assert deferred.value.trigger.moment == NOW + timedelta(minutes=30)

    _park(engine, compiled, NOW - timedelta(minutes=1), "fell-due")  # since the run began: at once
    with pytest.raises(TaskDeferred) as deferred:
        wake.execute(_context({}, began=NOW - timedelta(minutes=5)))
    assert deferred.value.trigger.moment == NOW - timedelta(minutes=1)


def test_a_run_without_a_start_date_wakes_for_the_waits_ahead(engine, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    compiled = _compiled()
    # Due ten minutes ago and still parked: without the run's start, nothing says it fell due
    # during the run rather than before it. The wait ahead is what gets a wake run.
    _park(engine, compiled, NOW - timedelta(minutes=10), "earlier")
    _park(engine, compiled, NOW + timedelta(minutes=30), "ahead")
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: NOW)
    wake = build_dag(compiled).get_task("careflow_wake")
    with pytest.raises(TaskDeferred) as deferred:
        wake.execute(_context({}, began=None))
    assert deferred.value.trigger.moment == NOW + timedelta(minutes=30)
    assert "has no start date" in caplog.text


def test_a_wait_after_the_next_run_is_left_to_that_run(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    compiled = _compiled()
    _park(engine, compiled, NOW + timedelta(days=3))
    wake = build_dag(compiled).get_task("careflow_wake")
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: NOW)
    result = wake.execute(_context({}))
    assert result["next_wake"] is None
    assert result["parked_until"] == (NOW + timedelta(days=3)).isoformat()


@pytest.mark.parametrize(
    ("conf", "now", "dry_run"),
    [
        # a manual run given a clock or a dry run: production sends, at the real time
        ({"careflow_clock": "2026-03-12T09:00:00+00:00", "careflow_dry_run": True}, NOW, False),
        ({"careflow_clock": "2026-03-12T09:00:00+00:00", "careflow_simulated": False}, NOW, False),
        # careflow simulate's runs
        (
            {
                "careflow_clock": "2026-03-12T09:00:00+00:00",
                "careflow_simulated": True,
                "careflow_dry_run": True,
            },
            datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc),
            True,
        ),
    ],
)
def test_only_a_simulated_run_follows_the_conf_clock_and_dry_run(
    monkeypatch: pytest.MonkeyPatch,
    conf: dict,
    now: datetime,
    dry_run: bool,  # type: ignore[type-arg]
) -> None:
    monkeypatch.setattr("careflow.clock.wall_clock", lambda: NOW)
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", "true")  # as careflow simulate sets it
    dag = build_dag(_compiled())
    for task in dag.tasks:
        if task.task_id == "careflow_wake":
            continue
        ctx = task.run_context({**_context(conf), "data_interval_start": None})
        assert (ctx.now, ctx.dry_run) == (now, dry_run), task.task_id


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_worker_refuses_a_run_whose_conf_claims_to_be_simulated(
    monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    # Anyone who may trigger the DAG can write this conf: on a worker it would move real
    # executions on a made-up clock, or record their messages as sent without sending them.
    from careflow.exceptions import ConfigurationError

    monkeypatch.delenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", raising=False)
    conf = {
        "careflow_clock": "2026-03-12T09:00:00+00:00",
        "careflow_simulated": True,
        "careflow_dry_run": dry_run,
    }
    dag = build_dag(_compiled())
    for task in dag.tasks:
        with pytest.raises(ConfigurationError, match="only `careflow simulate` starts"):
            if task.task_id == "careflow_wake":
                task.execute({**_context(conf), "data_interval_start": None})
            else:
                task.run_context({**_context(conf), "data_interval_start": None})


def test_setup_creates_the_provider_pool(airflow_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from airflow.models.pool import Pool

    from careflow.airflow.setup import setup_airflow

    assert setup_airflow(argparse.Namespace(pool_slots=6)) == 0
    assert Pool.get_pool("careflow_messaging").slots == 6
    assert "careflow_messaging has 6 slot(s)" in capsys.readouterr().out


def test_a_component_starting_a_job_creates_a_missing_pool_and_leaves_an_existing_one(
    airflow_home: Path, tmp_path: Path
) -> None:
    """Airflow never schedules a task of a pool that does not exist: where nobody ran
    ``careflow setup``, the scheduler (any component starting a job) creates it, and says so."""
    from airflow.models.pool import Pool

    from careflow.airflow.setup import DEFAULT_POOL_SLOTS, setup_airflow

    # A process of Airflow's own, with careflow's plugins folder, builds what `airflow scheduler`
    # (the triggerer, the dag processor) builds as it starts.
    starting = [sys.executable, "-c", "from airflow.jobs.job import Job; Job()"]
    env = airflow_env(airflow_home, tmp_path / "workflows")
    if Pool.get_pool("careflow_messaging") is not None:
        Pool.delete_pool("careflow_messaging")
    started = subprocess.run(starting, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    pool = Pool.get_pool("careflow_messaging")
    assert pool is not None and (pool.slots, pool.include_deferred) == (DEFAULT_POOL_SLOTS, False)
    assert "the careflow_messaging pool was missing" in started.stdout + started.stderr

    setup_airflow(argparse.Namespace(pool_slots=9))
    again = subprocess.run(starting, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert Pool.get_pool("careflow_messaging").slots == 9  # a pool resized by careflow setup stays
    assert "was missing" not in again.stdout + again.stderr


def test_a_task_runner_starting_does_not_look_for_the_pool(airflow_home: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from careflow.airflow import pool_guard

    looked: list[bool] = []
    monkeypatch.setattr(pool_guard, "ensure_pool", lambda: looked.append(True))
    pool_guard.pool_guard.on_starting(component=SimpleNamespace())  # the task runner's marker
    assert looked == []
