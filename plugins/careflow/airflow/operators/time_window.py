"""The time-window node: executions inside the window pass, the others wait for its next opening."""

from __future__ import annotations

from careflow.airflow.operators.base import CareflowNodeOperator


class TimeWindowSensor(CareflowNodeOperator):
    """Let executions through while the window is open (in the patient's timezone).

    Executions outside the window are parked until the next opening. An opening before the next
    scheduled run is waited for in the triggerer by the DAG's ``careflow_wake`` task, which then
    starts a wake run: no worker slot is held while waiting, and no other patient's branch is
    held back behind this one.
    """

    ui_color = "#bbf7d0"
    node_type = "timeWindow"
