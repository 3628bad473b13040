"""The base of careflow's node operators: one task advances every execution due at its node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from careflow.airflow.links import CareflowNodeLink
from careflow.clock import DRY_RUN_KEY, is_simulated, now_for
from careflow.compiler import CompiledWorkflow
from careflow.compiler.schedule import next_run_after
from careflow.engine.context import NodeReport, RunContext


class CareflowNodeOperator(BaseOperator):
    """Advance every execution of the workflow that is due at one node.

    :param compiled: the compiled workflow (from its published snapshot).
    :param node_id: the node this task runs; it is also the task id.

    User-written templates never reach Airflow's templating: ``template_fields`` is empty and the
    message templates are rendered in careflow's own sandbox.
    """

    template_fields: Sequence[str] = ()
    ui_color = "#e8f0fe"
    operator_extra_links = (CareflowNodeLink(),)
    node_type = ""

    def __init__(self, *, compiled: CompiledWorkflow, node_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workflow_id = compiled.workflow_id
        self.workflow_version = compiled.version
        self.careflow_node_id = node_id
        self._compiled = compiled

    def run_context(self, context: Any) -> RunContext:
        """The run's view: simulated or wall clock, data interval, next scheduled run."""
        from careflow.airflow.observability import emit
        from careflow.engine.actions import worker_name
        from careflow.store.db import get_engine

        conf = dict(context["dag_run"].conf or {})
        now = now_for(conf)
        start = context.get("data_interval_start")
        return RunContext(
            compiled=self._compiled,
            now=now,
            engine=get_engine(),
            run_id=context["run_id"],
            worker=worker_name(),
            next_run_at=next_run_after(self._compiled, now),
            interval_start=start if start is not None and start <= now else None,
            # Only a simulation records without sending: a dry run's "sent" rows would keep the
            # real messages from ever going out.
            dry_run=is_simulated(conf) and bool(conf.get(DRY_RUN_KEY)),
            simulated=is_simulated(conf),
            emit=emit,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        """Process the node and return its counts (ids and numbers only: XCom holds no patient data)."""
        from careflow.engine.nodes import process_node

        ctx = self.run_context(context)
        report = process_node(ctx, self.careflow_node_id)
        self.log_report(report)
        return report.to_xcom()

    def log_report(self, report: NodeReport) -> None:
        """One log line of counts."""
        self.log.info(
            "careflow %s/%s v%s: processed=%d passed=%d waiting=%d skipped=%d failed=%d expired=%d sent=%d "
            "pending=%d enrolled=%d batches=%d queries=%d reasons=%s",
            self.workflow_id,
            self.careflow_node_id,
            self.workflow_version,
            report.processed,
            report.passed,
            report.waiting,
            report.skipped,
            report.failed,
            report.expired,
            report.sent,
            report.pending,
            report.enrolled,
            report.batches,
            report.queries,
            dict(report.reasons),
        )
