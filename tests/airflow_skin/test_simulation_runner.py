"""``careflow simulate``'s in-process runner treats a failed task as Airflow's scheduler does."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from careflow.airflow.factory import build_dag
from careflow.compiler import compile_workflow
from careflow.simulation import _run_tasks_in_order
from careflow.workflow.validation import WAKE_TASK_ID, validate_path
from support import EXAMPLES

MOMENT = datetime(2026, 3, 9, 15, 0, tzinfo=timezone.utc)


def _dag_with_recorded_tasks(failing: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    workflow = validate_path(EXAMPLES / "implant-aftercare.json").workflow
    assert workflow is not None
    compiled = compile_workflow(workflow, version=1, content_hash="h")
    dag = build_dag(compiled)
    ran: list[str] = []
    for task in dag.tasks:

        def execute(context, task_id=task.task_id):  # type: ignore[no-untyped-def]
            ran.append(task_id)
            if task_id == failing:
                raise RuntimeError(f"{task_id} broke")

        monkeypatch.setattr(task, "execute", execute)
    return dag, [*compiled.order, WAKE_TASK_ID], ran


def test_a_failed_task_holds_back_the_tasks_after_it_and_the_wake_task_still_runs(monkeypatch) -> None:
    dag, order, ran = _dag_with_recorded_tasks("d1", monkeypatch)
    assert order == ["t1", "d1", "c1", "w1", "a1", WAKE_TASK_ID]
    state = _run_tasks_in_order(dag, MOMENT, {}, "scheduled", order)
    retries = dag.get_task("d1").retries
    # d1 is tried once and retried; c1, w1 and a1 are upstream_failed; the wake runs
    assert ran == ["t1", *["d1"] * (retries + 1), WAKE_TASK_ID]
    assert state == "failed"


def test_a_run_without_failures_runs_every_task_once(monkeypatch) -> None:
    dag, order, ran = _dag_with_recorded_tasks("none", monkeypatch)
    assert _run_tasks_in_order(dag, MOMENT, {}, "scheduled", order) == "success"
    assert ran == order


def test_a_failed_task_is_told_in_one_line_and_careflows_database_in_careflows_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database error's message runs over several lines (its statement, a link): the simulation
    says what failed in one, and names careflow's database where it is the problem."""
    from careflow.store.db import dispose_engines, get_engine

    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'careflow.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    dag, order, _ = _dag_with_recorded_tasks("none", monkeypatch)

    def unopenable(context):  # type: ignore[no-untyped-def]
        get_engine().connect()

    monkeypatch.setattr(dag.get_task("t1"), "execute", unopenable)
    try:
        assert _run_tasks_in_order(dag, MOMENT, {}, "scheduled", order) == "failed"
    finally:
        dispose_engines()
    (line,) = capsys.readouterr().err.splitlines()
    retries = dag.get_task("t1").retries
    assert line == (
        f"careflow simulate: {dag.dag_id}.t1 failed at {MOMENT.isoformat()} after {retries + 1} attempt(s): "
        f"cannot open or write careflow's database {url} (from CAREFLOW_DB_URL): unable to open database "
        f"file: its directory {tmp_path / 'no-such-dir'} does not exist: create it, or correct the URL"
    )
