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
