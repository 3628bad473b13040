"""Render compiled workflows into Airflow DAGs (one DAG per active workflow).

Parsing reads snapshot files only: no database, no network. Each DAG is built in its own
``try``: one broken workflow is logged and reported, the others are registered.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, get_parsing_context
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from careflow import settings
from careflow.compiler import CompiledWorkflow
from careflow.compiler.graph import dag_id_for, describe
from careflow.compiler.schedule import cron_of
from careflow.snapshots import Snapshot, SnapshotProblem, load_all, load_one
from careflow.workflow.validation import WAKE_TASK_ID  # a task of every DAG, not a node

log = logging.getLogger(__name__)

DAG_START_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def timetable_for(compiled: CompiledWorkflow) -> CronDataIntervalTimetable:
    """A cron timetable *with* a data interval, in the workflow's timezone.

    Airflow 3 maps ``@daily`` to a CronTriggerTimetable whose data interval is empty; enrollment
    reads the events of [previous run, this run), so careflow uses CronDataIntervalTimetable.
    """
    cron = cron_of(compiled.schedule)
    return CronDataIntervalTimetable(cron, timezone=compiled.timezone)


def doc_md(compiled: CompiledWorkflow, snap: Snapshot | None) -> str:
    """The DAG's documentation: name, version, hash and a readable outline of the graph."""
    published = f"published {snap.published_at}" if snap else ""
    return (
        f"# {html.escape(compiled.name)}\n\n"
        f"careflow workflow `{compiled.workflow_id}` · clinic `{compiled.clinic_id}` · "
        f"version **{compiled.version}** · hash `{compiled.content_hash[:12]}` {published}\n\n"
        f"Timezone {compiled.timezone}; schedule `{compiled.schedule}`; "
        f"provider concurrency {compiled.settings.max_concurrency}.\n\n"
        f"## Graph\n{_escape_md(compiled.outline())}\n"
    )


def _escape_md(text: str) -> str:
    return text.replace("{{", "{ {").replace("}}", "} }")


def node_doc(compiled: CompiledWorkflow, node_id: str) -> str:
    """A task's documentation: what the node does and its full configuration."""
    node = compiled.node(node_id)
    # pydantic's serializer writes the same text as json.dumps(model_dump(), indent=2) at a tenth of the cost
    config = node.config.model_dump_json(indent=2)
    return (
        f"**{html.escape(node.display_name)}** ({node.type}): {html.escape(describe(node))}\n\n"
        f"```json\n{config}\n```\n"
    )


def build_dag(compiled: CompiledWorkflow, snap: Snapshot | None = None) -> DAG:
    """One DAG for one compiled workflow."""
    from careflow.airflow import alerts
    from careflow.airflow.operators import operator_for
    from careflow.airflow.operators.wake import WakeOperator

    s = compiled.settings
    default_args: dict[str, Any] = {
        "owner": s.owner,
        "retries": s.retries,
        "retry_delay": timedelta(seconds=s.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        # Backoff doubles the delay up to half an hour, or the first delay where that is longer.
        "max_retry_delay": timedelta(seconds=max(1800, s.retry_delay_seconds)),
        "execution_timeout": timedelta(seconds=s.task_timeout_seconds),
        **alerts.task_callbacks(),
    }
    dag = DAG(
        dag_id=compiled.dag_id,
        dag_display_name=f"{compiled.name} ({compiled.workflow_id})",
        description=f"careflow workflow {compiled.workflow_id} v{compiled.version}",
        schedule=timetable_for(compiled),
        # catchup is off and enrollment follows careflow's own watermark, so an early fixed start
        # date costs nothing and lets simulations and backfills run on any past day.
        start_date=DAG_START_DATE,
        catchup=False,
        max_active_runs=1,
        max_active_tasks=s.max_concurrency,
        default_args=default_args,
        doc_md=doc_md(compiled, snap),
        tags=["careflow", f"clinic:{compiled.clinic_id}"],
        render_template_as_native_obj=False,
        is_paused_upon_creation=False,
        **alerts.dag_callbacks(compiled),
    )
    tasks = {}
    for node_id in compiled.order:
        node = compiled.node(node_id)
        cls = operator_for(node.type)
        tasks[node_id] = cls(
            task_id=node_id,
            task_display_name=node.display_name,
            compiled=compiled,
            node_id=node_id,
            doc_md=node_doc(compiled, node_id),
            dag=dag,
        )
    for node_id in compiled.order:
        targets = compiled.node(node_id).targets()
        if targets:  # one call per node: Airflow's bookkeeping costs per call, not per edge
            tasks[node_id].set_downstream([tasks[target] for target in targets])
    wake = WakeOperator(
        task_id=WAKE_TASK_ID, task_display_name="다음 대기 (next wait)", compiled=compiled, dag=dag
    )
    wake.set_upstream([tasks[n] for n in compiled.order if not compiled.node(n).successors])
    return dag


def build_dags(workflows_dir: Path | None = None) -> tuple[dict[str, DAG], list[SnapshotProblem]]:
    """Every active workflow's DAG, keyed by dag id, and the snapshots that failed.

    When Airflow runs a single task, ``get_parsing_context()`` names its DAG and only that one is
    built.
    """
    workflows_dir = workflows_dir or settings.workflows_dir()
    parsing = get_parsing_context()
    wanted = parsing.dag_id if parsing.dag_id and parsing.dag_id.startswith("careflow__") else None
    dags: dict[str, DAG] = {}
    problems: list[SnapshotProblem] = []
    if wanted:
        try:
            pairs = [load_one(workflows_dir, wanted[len("careflow__") :])]
        except Exception as exc:
            log.error("careflow: cannot load %s: %s", wanted, exc)
            return dags, [SnapshotProblem(workflows_dir / wanted, str(exc))]
    else:
        pairs, problems = load_all(workflows_dir)
    for snap, compiled in pairs:
        if compiled.status != "active":
            if wanted:
                _not_built(compiled, parsing.task_id)
            continue
        try:
            dags[dag_id_for(compiled.workflow_id)] = build_dag(compiled, snap)
        except Exception as exc:
            problems.append(SnapshotProblem(snap.path, f"{snap.path.name}: DAG build failed: {exc}"))
    for problem in problems:
        log.error("careflow: skipped snapshot %s: %s", problem.path, problem.message)
    if wanted in dags and parsing.task_id and parsing.task_id not in dags[wanted].task_dict:
        [(_, compiled)] = pairs  # the one workflow asked for
        _no_such_node(compiled, parsing.task_id)
    return dags, problems


def _not_built(compiled: CompiledWorkflow, task_id: str | None) -> None:
    """Say why a task of a workflow published since as not active finds no DAG (Airflow only says
    "Dag not found during start up"): a run started before the pause was in flight."""
    log.warning(
        "careflow: workflow %s is %s since version %d, so its DAG is not built: task %s of a run "
        "started before ends here, and its executions wait in careflow's tables until a version "
        "published active takes them on",
        compiled.workflow_id,
        compiled.status,
        compiled.version,
        task_id or "(none named)",
    )


def _no_such_node(compiled: CompiledWorkflow, task_id: str) -> None:
    """Say why a task of a node a new version removed finds no task (Airflow only says "Task not
    found in Dag during start up"): it was waiting when the version was published."""
    log.warning(
        "careflow: version %d of workflow %s has no node %s: its task, waiting since before that "
        "version was published, ends here; the executions at that node exit with "
        "node_removed_in_version_%d when the next run reaches them",
        compiled.version,
        compiled.workflow_id,
        task_id,
        compiled.version,
    )
