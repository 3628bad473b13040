"""What the careflow view shows, read from careflow's tables and the published snapshots.

Plain SQLAlchemy Core and the compiled graph, no Airflow import. Every answer carries ids,
statuses, reasons and times only: never a patient's name, phone number or message body.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from careflow.compiler import CompiledWorkflow
from careflow.compiler.graph import describe
from careflow.store import tables

STEP_PROBLEMS = ("failed", "skipped")
MESSAGE_PROBLEMS = ("failed", "expired", "skipped", "unknown")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _output(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def load_compiled(workflows_dir: Path, workflow_id: str) -> CompiledWorkflow | None:
    """The published graph of a workflow, or None when it has no loadable snapshot."""
    from careflow.exceptions import CareflowError
    from careflow.snapshots import load_one

    try:
        return load_one(workflows_dir, workflow_id)[1]
    except (CareflowError, OSError, ValueError):
        return None


def graph(compiled: CompiledWorkflow) -> dict[str, Any]:
    """Nodes placed in topological columns (longest path from the trigger) and the edges by handle."""
    column: dict[str, int] = {}
    for node_id in compiled.order:
        preds = compiled.nodes[node_id].predecessors
        column[node_id] = max((column[p] + 1 for p in preds if p in column), default=0)
    rows: dict[int, int] = defaultdict(int)
    nodes = []
    for node_id in compiled.order:
        node = compiled.nodes[node_id]
        col = column[node_id]
        nodes.append(
            {
                "id": node_id,
                "type": node.type,
                "label": node.display_name,
                "describe": describe(node),
                "column": col,
                "row": rows[col],
            }
        )
        rows[col] += 1
    edges = [
        {"source": node_id, "target": target, "handle": handle}
        for node_id in compiled.order
        for handle, target in compiled.nodes[node_id].successors
    ]
    return {
        "workflow_id": compiled.workflow_id,
        "name": compiled.name,
        "version": compiled.version,
        "status": compiled.status,
        "dag_id": compiled.dag_id,
        "nodes": nodes,
        "edges": edges,
    }


def runs(engine: Engine, workflow_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The runs that touched the workflow's steps, latest first, with how many steps each touched."""
    s = tables.steps
    last = func.max(func.coalesce(s.c.finished_at, s.c.arrived_at))
    query = (
        select(
            s.c.run_id,
            func.count().label("steps"),
            func.min(s.c.arrived_at).label("first_at"),
            last.label("last_at"),
        )
        .where(s.c.workflow_id == workflow_id, s.c.run_id.is_not(None))
        .group_by(s.c.run_id)
        .order_by(last.desc(), s.c.run_id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [
            {
                "run_id": r.run_id,
                "steps": r.steps,
                "first_at": _iso(r.first_at),
                "last_at": _iso(r.last_at),
            }
            for r in conn.execute(query)
        ]


def node_counts(engine: Engine, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
    """Steps per node and status (of one run, or of every run), and the ledger per action node and status.

    A step belongs to the run that last moved it; a message to the run of its action step.
    """
    s, m = tables.steps, tables.messages
    step_query = (
        select(s.c.node_id, s.c.status, func.count().label("n"))
        .where(s.c.workflow_id == workflow_id)
        .group_by(s.c.node_id, s.c.status)
    )
    message_query = (
        select(m.c.node_id, m.c.status, func.count().label("n"))
        .where(m.c.workflow_id == workflow_id)
        .group_by(m.c.node_id, m.c.status)
    )
    if run_id is not None:
        step_query = step_query.where(s.c.run_id == run_id)
        message_query = message_query.join(
            s, (s.c.execution_id == m.c.execution_id) & (s.c.node_id == m.c.node_id)
        ).where(s.c.run_id == run_id, s.c.workflow_id == workflow_id)
    steps: dict[str, dict[str, int]] = defaultdict(dict)
    messages: dict[str, dict[str, int]] = defaultdict(dict)
    with engine.connect() as conn:
        for r in conn.execute(step_query):
            steps[r.node_id][r.status] = r.n
        for r in conn.execute(message_query):
            messages[r.node_id][r.status] = r.n
    return {"workflow_id": workflow_id, "run_id": run_id, "steps": dict(steps), "messages": dict(messages)}


def failures(
    engine: Engine,
    *,
    workflow_id: str | None = None,
    node_id: str | None = None,
    run_id: str | None = None,
    limit: int = 100,
    workflow_ids: Collection[str] | None = None,
) -> dict[str, Any]:
    """Failed or skipped steps and failed, expired, skipped or unknown messages, with their reasons.

    ``reasons`` counts them per (kind, workflow, node, status, reason); ``steps`` and ``messages``
    list the latest ``limit`` of each. Filters: workflow, node, run (the run that moved the step),
    and the workflows ``workflow_ids`` (those a user may read).
    """
    s, x, m = tables.steps, tables.executions, tables.messages
    step_when = func.coalesce(s.c.finished_at, s.c.arrived_at)
    step_rows = (
        select(
            s.c.workflow_id,
            s.c.node_id,
            s.c.execution_id,
            x.c.patient_id,
            s.c.status,
            s.c.error.label("reason"),
            s.c.run_id,
            s.c.version,
            step_when.label("at"),
        )
        .join(x, x.c.id == s.c.execution_id)
        .where(s.c.status.in_(STEP_PROBLEMS))
    )
    message_rows = select(
        m.c.workflow_id,
        m.c.node_id,
        m.c.execution_id,
        m.c.patient_id,
        m.c.status,
        m.c.reason,
        m.c.channel,
        m.c.outcome,
        m.c.updated_at.label("at"),
    ).where(m.c.status.in_(MESSAGE_PROBLEMS))
    step_reasons = (
        select(s.c.workflow_id, s.c.node_id, s.c.status, s.c.error.label("reason"), func.count().label("n"))
        .where(s.c.status.in_(STEP_PROBLEMS))
        .group_by(s.c.workflow_id, s.c.node_id, s.c.status, s.c.error)
    )
    message_reasons = (
        select(m.c.workflow_id, m.c.node_id, m.c.status, m.c.reason, func.count().label("n"))
        .where(m.c.status.in_(MESSAGE_PROBLEMS))
        .group_by(m.c.workflow_id, m.c.node_id, m.c.status, m.c.reason)
    )
    for column_s, column_m, value in (
        (s.c.workflow_id, m.c.workflow_id, workflow_id),
        (s.c.node_id, m.c.node_id, node_id),
    ):
        if value is not None:
            step_rows, step_reasons = (
                step_rows.where(column_s == value),
                step_reasons.where(column_s == value),
            )
            message_rows = message_rows.where(column_m == value)
            message_reasons = message_reasons.where(column_m == value)
    if workflow_ids is not None:
        among = sorted(workflow_ids)
        step_rows, step_reasons = (
            step_rows.where(s.c.workflow_id.in_(among)),
            step_reasons.where(s.c.workflow_id.in_(among)),
        )
        message_rows = message_rows.where(m.c.workflow_id.in_(among))
        message_reasons = message_reasons.where(m.c.workflow_id.in_(among))
    if run_id is not None:
        on_step = (s.c.execution_id == m.c.execution_id) & (s.c.node_id == m.c.node_id)
        step_rows, step_reasons = (
            step_rows.where(s.c.run_id == run_id),
            step_reasons.where(s.c.run_id == run_id),
        )
        message_rows = message_rows.join(s, on_step).where(s.c.run_id == run_id)
        message_reasons = message_reasons.join(s, on_step).where(s.c.run_id == run_id)
    with engine.connect() as conn:
        recent_steps = conn.execute(step_rows.order_by(step_when.desc(), s.c.id.desc()).limit(limit)).all()
        recent_messages = conn.execute(
            message_rows.order_by(m.c.updated_at.desc(), m.c.idempotency_key).limit(limit)
        ).all()
        reasons = [("step", r) for r in conn.execute(step_reasons)]
        reasons += [("message", r) for r in conn.execute(message_reasons)]
    return {
        "reasons": sorted(
            (
                {
                    "kind": kind,
                    "workflow_id": r.workflow_id,
                    "node_id": r.node_id,
                    "status": r.status,
                    "reason": r.reason,
                    "count": r.n,
                }
                for kind, r in reasons
            ),
            key=lambda item: (-item["count"], item["workflow_id"], item["node_id"], item["kind"]),
        ),
        "steps": [
            {
                "workflow_id": r.workflow_id,
                "node_id": r.node_id,
                "execution_id": r.execution_id,
                "patient_id": r.patient_id,
                "status": r.status,
                "reason": r.reason,
                "run_id": r.run_id,
                "version": r.version,
                "at": _iso(r.at),
            }
            for r in recent_steps
        ],
        "messages": [
            {
                "workflow_id": r.workflow_id,
                "node_id": r.node_id,
                "execution_id": r.execution_id,
                "patient_id": r.patient_id,
                "status": r.status,
                "reason": r.reason,
                "channel": r.channel,
                "outcome": r.outcome,
                "at": _iso(r.at),
            }
            for r in recent_messages
        ],
    }


def node_steps(
    engine: Engine, workflow_id: str, node_id: str, *, run_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The latest steps at one node (of one run or of every run): who is where, and why."""
    s, x = tables.steps, tables.executions
    when = func.coalesce(s.c.finished_at, s.c.arrived_at)
    query = (
        select(s, x.c.patient_id)
        .join(x, x.c.id == s.c.execution_id)
        .where(s.c.workflow_id == workflow_id, s.c.node_id == node_id)
        .order_by(when.desc(), s.c.id.desc())
        .limit(limit)
    )
    if run_id is not None:
        query = query.where(s.c.run_id == run_id)
    with engine.connect() as conn:
        return [_step(r) for r in conn.execute(query).mappings()]


def _step(r: Any) -> dict[str, Any]:
    output = _output(r["output"])
    return {
        "execution_id": r["execution_id"],
        "patient_id": r.get("patient_id"),
        "node_id": r["node_id"],
        "status": r["status"],
        "branch": output.get("branch"),
        "reason": r["error"],
        "arrived_at": _iso(r["arrived_at"]),
        "due_at": _iso(r["due_at"]),
        "finished_at": _iso(r["finished_at"]),
        "attempts": r["attempts"],
        "version": r["version"],
        "run_id": r["run_id"],
    }


def patient_executions(
    engine: Engine, patient_id: str, limit: int = 100, *, workflow_ids: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """A patient's executions, latest first (ids, workflow, status, exit reason); only of ``workflow_ids``, if given."""
    x = tables.executions
    query = (
        select(x).where(x.c.patient_id == patient_id).order_by(x.c.enrolled_at.desc(), x.c.id).limit(limit)
    )
    if workflow_ids is not None:
        query = query.where(x.c.workflow_id.in_(sorted(workflow_ids)))
    with engine.connect() as conn:
        return [_execution(r) for r in conn.execute(query).mappings()]


def _execution(r: Any) -> dict[str, Any]:
    return {
        "execution_id": r["id"],
        "workflow_id": r["workflow_id"],
        "version": r["version"],
        "patient_id": r["patient_id"],
        "appointment_id": r["appointment_id"],
        "trigger_event_id": r["trigger_event_id"],
        "status": r["status"],
        "exit_reason": r["exit_reason"],
        "enrolled_at": _iso(r["enrolled_at"]),
        "event_at": _iso(r["event_at"]),
        "finished_at": _iso(r["finished_at"]),
    }


def trace(
    engine: Engine, execution_id: str, graph_of: Callable[[str], CompiledWorkflow | None]
) -> dict[str, Any] | None:
    """One execution: its steps in order, its messages, and per action node why it was or was not sent.

    ``graph_of(workflow_id)`` gives the workflow's published graph (labels, the paths to each
    action); without one the trace still lists the steps and messages.
    """
    x, s, m = tables.executions, tables.steps, tables.messages
    with engine.connect() as conn:
        row = conn.execute(select(x).where(x.c.id == execution_id)).mappings().first()
        if row is None:
            return None
        step_rows = conn.execute(
            select(s).where(s.c.execution_id == execution_id).order_by(s.c.arrived_at, s.c.id)
        ).mappings()
        steps = [_step(r) for r in step_rows]
        message_rows = conn.execute(
            select(m).where(m.c.execution_id == execution_id).order_by(m.c.due_at, m.c.node_id)
        ).mappings()
        messages = [
            {
                "node_id": r["node_id"],
                "channel": r["channel"],
                "purpose": r["purpose"],
                "status": r["status"],
                "outcome": r["outcome"],
                "reason": r["reason"],
                "attempts": r["attempts"],
                "due_at": _iso(r["due_at"]),
                "sent_at": _iso(r["sent_at"]),
                "updated_at": _iso(r["updated_at"]),
                "version": r["version"],
            }
            for r in message_rows
        ]
        compiled = graph_of(row["workflow_id"])
        wanted = _version_that_ran(row, steps)
        if wanted is not None and (compiled is None or compiled.version != wanted):
            compiled = _published_graph(conn, row["workflow_id"], wanted) or compiled
    labels = {n: c.display_name for n, c in compiled.nodes.items()} if compiled else {}
    for step in steps:
        step.pop("patient_id")  # the execution's, given once below
        step["label"] = labels.get(step["node_id"], step["node_id"])
    return {
        "execution": _execution(row),
        "steps": steps,
        "messages": messages,
        "actions": explain_actions(compiled, _execution(row), steps, messages) if compiled else [],
    }


def _version_that_ran(execution: Any, steps: list[dict[str, Any]]) -> int | None:
    """The version whose graph explains an ended execution: the newest that moved it.

    None for one still on its way: it goes on in the current version (docs/contracts.md §4).
    """
    if execution["status"] in ("running", "waiting"):
        return None
    versions = [st["version"] for st in steps if st.get("version") is not None]
    return max(versions, default=execution["version"])


def _published_graph(conn: Any, workflow_id: str, version: int) -> CompiledWorkflow | None:
    """The graph of one published version, from the document stored with it (None if unreadable)."""
    from pydantic import ValidationError

    from careflow.compiler.graph import compile_workflow
    from careflow.workflow.models import Workflow

    v = tables.workflow_versions
    found = conn.execute(
        select(v.c.document, v.c.content_hash).where(v.c.workflow_id == workflow_id, v.c.version == version)
    ).first()
    if found is None:
        return None
    document = json.loads(found[0]) if isinstance(found[0], str) else found[0]
    try:
        return compile_workflow(Workflow.model_validate(document), version=version, content_hash=found[1])
    except (ValidationError, ValueError, TypeError):
        return None


def explain_actions(
    compiled: CompiledWorkflow,
    execution: dict[str, Any],
    steps: list[dict[str, Any]],
    messages: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """For every action node: sent, or why not ("why did this patient not get the reminder?").

    An action node another version had, where this execution has a step or a message, is
    explained too, from what was recorded.
    """
    by_node = {st["node_id"]: st for st in steps}
    message_by_node = {msg["node_id"]: msg for msg in messages}
    out = []
    for action_id in compiled.action_ids():
        label = compiled.nodes[action_id].display_name
        verdict, why = _verdict(compiled, action_id, execution, by_node, message_by_node.get(action_id))
        out.append({"node_id": action_id, "label": label, "verdict": verdict, "why": why})
    for node_id, message in message_by_node.items():
        if node_id not in compiled.nodes:
            verdict, why = _verdict(compiled, node_id, execution, by_node, message)
            out.append({"node_id": node_id, "label": node_id, "verdict": verdict, "why": why})
    return out


def _ancestors(compiled: CompiledWorkflow, node_id: str) -> set[str]:
    seen: set[str] = set()
    todo = [node_id]
    while todo:
        for pred in compiled.nodes[todo.pop()].predecessors:
            if pred not in seen:
                seen.add(pred)
                todo.append(pred)
    return seen


def _verdict(
    compiled: CompiledWorkflow,
    action_id: str,
    execution: dict[str, Any],
    by_node: dict[str, dict[str, Any]],
    message: dict[str, Any] | None,
) -> tuple[str, str]:
    if message is not None:
        status = message["status"]
        if status == "sent":
            return "sent", f"sent on {message['channel']} at {message['sent_at'] or message['updated_at']}"
        reason = f": {message['reason']}" if message["reason"] else ""
        return status, f"message {status}{reason}"
    step = by_node.get(action_id)
    if step is not None:
        if step["status"] == "skipped":
            return "skipped", f"stopped at {action_id}: {step['reason'] or 'no reason recorded'}"
        if step["status"] == "failed":
            return "failed", f"failed at {action_id}: {step['reason'] or 'no reason recorded'}"
        return "not yet", f"reached {action_id} ({step['status']}), not sent yet"
    ancestors = _ancestors(compiled, action_id)
    reached = [n for n in compiled.order if n in ancestors and n in by_node]
    # The furthest reached node on the way to the action tells where the execution left that path.
    for node_id in reversed(reached):
        step = by_node[node_id]
        node = compiled.nodes[node_id]
        if step["status"] == "skipped":
            return "not reached", f"stopped at {node_id}: {step['reason'] or 'no reason recorded'}"
        if step["status"] == "failed":
            return "not reached", f"failed at {node_id}: {step['reason'] or 'no reason recorded'}"
        if step["status"] == "waiting":
            return "not yet", f"waiting at {node_id} until {step['due_at']}"
        if step["status"] == "pending":
            return "not yet", f"due at {node_id} (arrived {step['arrived_at']})"
        if node.type == "condition" and step["branch"] is not None:
            leads = [t for t in node.targets(step["branch"]) if t == action_id or t in ancestors]
            if not leads:
                other = "false" if step["branch"] == "true" else "true"
                return (
                    "not reached",
                    f"condition {node_id} took the {step['branch']} branch; {action_id} is on the {other} branch",
                )
    if execution["status"] == "exited":
        return "not reached", f"the execution exited: {execution['exit_reason'] or 'no reason recorded'}"
    return "not reached", f"the execution is {execution['status']} and has not reached {action_id}"
