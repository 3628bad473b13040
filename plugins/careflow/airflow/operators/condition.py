"""The condition node operator."""

from __future__ import annotations

from careflow.airflow.operators.base import CareflowNodeOperator


class ConditionOperator(CareflowNodeOperator):
    """Evaluate the condition's rules on facts read now and route each execution to its branch."""

    ui_color = "#ddd6fe"
    node_type = "condition"
