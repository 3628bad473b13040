"""careflow's operators as the dag-factory YAML and the hand-written DAG files reference them.

A careflow operator takes the compiled workflow as an object, which YAML cannot spell; these
subclasses take the workflow id instead and fetch the compiled workflow from its published
snapshot, once per workflow and process (what careflow's factory reads too). Nothing else differs.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from careflow.airflow.operators.action import ActionOperator
from careflow.airflow.operators.condition import ConditionOperator
from careflow.airflow.operators.delay import DelayOperator
from careflow.airflow.operators.time_window import TimeWindowSensor
from careflow.airflow.operators.trigger import TriggerOperator
from careflow.airflow.operators.wake import WakeOperator
from careflow.compiler import CompiledWorkflow


@cache
def compiled_for(workflow_id: str) -> CompiledWorkflow:
    """The compiled workflow of a published snapshot in ``$AIRFLOW__CAREFLOW__WORKFLOWS_DIR``."""
    from careflow.snapshots import load_one

    _, compiled = load_one(Path(os.environ["AIRFLOW__CAREFLOW__WORKFLOWS_DIR"]), workflow_id)
    return compiled


class Trigger(TriggerOperator):
    """``TriggerOperator`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


class Condition(ConditionOperator):
    """``ConditionOperator`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


class Delay(DelayOperator):
    """``DelayOperator`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


class TimeWindow(TimeWindowSensor):
    """``TimeWindowSensor`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


class Action(ActionOperator):
    """``ActionOperator`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


class Wake(WakeOperator):
    """``WakeOperator`` by workflow id."""

    def __init__(self, *, workflow_id: str, **kwargs: Any) -> None:
        super().__init__(compiled=compiled_for(workflow_id), **kwargs)


BY_NODE_TYPE = {
    "trigger": "Trigger",
    "condition": "Condition",
    "delay": "Delay",
    "timeWindow": "TimeWindow",
    "action": "Action",
}


def on_task_failure(context: Any) -> None:
    """careflow's task failure callbacks as one callable (dag-factory takes one per event)."""
    from careflow.airflow import alerts

    for callback in alerts.task_callbacks()["on_failure_callback"]:
        callback(context)


def on_task_success(context: Any) -> None:
    """careflow's task success callbacks as one callable (dag-factory takes one per event)."""
    from careflow.airflow import alerts

    for callback in alerts.task_callbacks()["on_success_callback"]:
        callback(context)
