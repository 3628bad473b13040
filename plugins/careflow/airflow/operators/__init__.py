"""One operator per node type; ``operator_for`` is the registry the DAG factory renders with."""

from __future__ import annotations

from careflow.airflow.operators.action import ActionOperator
from careflow.airflow.operators.base import CareflowNodeOperator
from careflow.airflow.operators.condition import ConditionOperator
from careflow.airflow.operators.delay import DelayOperator
from careflow.airflow.operators.time_window import TimeWindowSensor
from careflow.airflow.operators.trigger import TriggerOperator

NODE_OPERATORS: dict[str, type[CareflowNodeOperator]] = {
    "trigger": TriggerOperator,
    "condition": ConditionOperator,
    "delay": DelayOperator,
    "timeWindow": TimeWindowSensor,
    "action": ActionOperator,
}


def operator_for(node_type: str) -> type[CareflowNodeOperator]:
    """The operator class that renders a node type."""
    return NODE_OPERATORS[node_type]


__all__ = ["NODE_OPERATORS", "CareflowNodeOperator", "operator_for"]
