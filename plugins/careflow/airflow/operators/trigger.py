"""The trigger node operator."""

from __future__ import annotations

from careflow.airflow.operators.base import CareflowNodeOperator


class TriggerOperator(CareflowNodeOperator):
    """Enroll the patients whose appointment events match the trigger, once per event."""

    ui_color = "#fde68a"
    node_type = "trigger"
