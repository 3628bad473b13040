"""The compiled graph: nodes in topological order with their successors per handle.

Engine-neutral (no Airflow import): the DAG factory renders it into tasks, the engine walks it to
move executions from node to node.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from careflow.workflow.models import (
    ActionNode,
    AnyNode,
    ConditionNode,
    DelayNode,
    TimeWindowNode,
    TriggerNode,
    Workflow,
    WorkflowSettings,
)


@dataclass(frozen=True)
class CompiledNode:
    """One node: its configuration and where executions go next."""

    id: str
    type: str
    label: str
    config: Any  # the node's pydantic ``data`` model
    #: (handle, target) pairs; handle is "true"/"false" for conditions, None otherwise.
    successors: tuple[tuple[str | None, str], ...]
    predecessors: tuple[str, ...]

    def targets(self, handle: str | None = None) -> tuple[str, ...]:
        """Successor node ids, for one handle of a condition or all of them."""
        if handle is None:
            return tuple(dict.fromkeys(t for _, t in self.successors))
        return tuple(dict.fromkeys(t for h, t in self.successors if h == handle))

    @property
    def display_name(self) -> str:
        """The label shown in the Airflow UI (the node id when the label is empty)."""
        return self.label or self.id


@dataclass(frozen=True)
class CompiledWorkflow:
    """A published workflow ready to render and run."""

    workflow_id: str
    version: int
    content_hash: str
    name: str
    clinic_id: str
    status: str
    timezone: str
    settings: WorkflowSettings
    nodes: dict[str, CompiledNode]
    order: tuple[str, ...]
    trigger_id: str
    workflow: Workflow = field(repr=False)

    @property
    def dag_id(self) -> str:
        """``careflow__<workflow id>`` (docs/contracts.md §3)."""
        return dag_id_for(self.workflow_id)

    @property
    def trigger(self) -> CompiledNode:
        """The trigger node."""
        return self.nodes[self.trigger_id]

    @property
    def schedule(self) -> str:
        """The trigger's schedule (cron or preset)."""
        return self.trigger.config.schedule

    def node(self, node_id: str) -> CompiledNode:
        """A node by id."""
        return self.nodes[node_id]

    def action_ids(self) -> list[str]:
        """Ids of every action node, in topological order."""
        return [n for n in self.order if self.nodes[n].type == "action"]

    def outline(self) -> str:
        """A readable outline of the graph for the DAG's documentation (markdown list)."""
        lines = []
        for node_id in self.order:
            node = self.nodes[node_id]
            nexts = ", ".join(f"{t} ({h})" if h else t for h, t in node.successors) or "end"
            lines.append(f"- **{node.display_name}** (`{node_id}`, {node.type}: {describe(node)}) → {nexts}")
        return "\n".join(lines)


def dag_id_for(workflow_id: str) -> str:
    """The DAG id of a workflow."""
    return f"careflow__{workflow_id}"


def describe(node: CompiledNode) -> str:
    """A one-line, human description of what a node does."""
    c = node.config
    if node.type == "trigger":
        types = ", ".join(c.filters.appointment_types or []) or "any type"
        return f"on {c.event} ({types}), {c.schedule}"
    if node.type == "delay":
        if c.until:
            off = f" {c.offset.amount:+d} {c.offset.unit}" if c.offset else ""
            at = f" at {c.at}" if c.at else ""
            return f"wait until {c.until}{off}{at}"
        return f"wait {c.amount} {c.unit}" + (f" at {c.at}" if c.at and c.unit in ("days", "weeks") else "")
    if node.type == "condition":
        return (
            f"{'all' if c.all is not None else 'any'} of {len(c.all if c.all is not None else c.any)} rule(s)"
        )
    if node.type == "timeWindow":
        return f"{','.join(c.days)} {c.start}-{c.end}"
    if node.type == "action":
        return f"send {c.channel} ({c.purpose})"
    return node.type


def _handle(node: AnyNode, raw: str | None) -> str | None:
    if isinstance(node, ConditionNode):
        return raw
    return None


def compile_workflow(workflow: Workflow, *, version: int = 0, content_hash: str = "") -> CompiledWorkflow:
    """Compile a *validated* workflow (validation guarantees one trigger, no cycle, known ends)."""
    by_id: dict[str, AnyNode] = {n.id: n for n in workflow.nodes}
    succ: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    pred: dict[str, list[str]] = defaultdict(list)
    for edge in workflow.edges:
        pair = (_handle(by_id[edge.source], edge.sourceHandle), edge.target)
        if pair not in succ[edge.source]:
            succ[edge.source].append(pair)
            pred[edge.target].append(edge.source)
    order = _topological_order([n.id for n in workflow.nodes], succ)
    nodes = {
        n.id: CompiledNode(
            id=n.id,
            type=n.type,
            label=n.data.label,
            config=n.data,
            successors=tuple(succ.get(n.id, ())),
            predecessors=tuple(dict.fromkeys(pred.get(n.id, ()))),
        )
        for n in workflow.nodes
    }
    trigger_id = next(n.id for n in workflow.nodes if isinstance(n, TriggerNode))
    return CompiledWorkflow(
        workflow_id=workflow.id,
        version=version,
        content_hash=content_hash,
        name=workflow.name,
        clinic_id=workflow.clinic_id,
        status=workflow.status,
        timezone=workflow.timezone,
        settings=workflow.settings,
        nodes=nodes,
        order=tuple(order),
        trigger_id=trigger_id,
        workflow=workflow,
    )


def _topological_order(ids: list[str], succ: dict[str, list[tuple[str | None, str]]]) -> list[str]:
    indegree = dict.fromkeys(ids, 0)
    for source in ids:
        for target in {t for _, t in succ.get(source, ())}:
            indegree[target] += 1
    queue = deque(i for i in ids if indegree[i] == 0)
    order: list[str] = []
    while queue:
        node = queue.popleft()
        order.append(node)
        for target in dict.fromkeys(t for _, t in succ.get(node, ())):
            indegree[target] -= 1
            if indegree[target] == 0:
                queue.append(target)
    if len(order) != len(ids):
        raise ValueError("the workflow graph has a cycle; validate it before compiling")
    return order


__all__ = [
    "ActionNode",
    "CompiledNode",
    "CompiledWorkflow",
    "ConditionNode",
    "DelayNode",
    "TimeWindowNode",
    "compile_workflow",
    "dag_id_for",
]
