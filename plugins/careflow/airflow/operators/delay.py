"""The delay node operator."""

from __future__ import annotations

from careflow.airflow.operators.base import CareflowNodeOperator


class DelayOperator(CareflowNodeOperator):
    """Park each execution until its delay has passed; later runs (or a wake run) release it."""

    ui_color = "#bfdbfe"
    node_type = "delay"
