"""Checks of the edges and of the graph they draw: endpoints, handles, duplicates, cycles.

Works on ids only, so it runs even when some nodes' data is invalid.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.field_errors import show
from careflow.workflow.models import UI_EDGE_FIELDS
from careflow.workflow.storable import scalar_problem

EDGE_FIELDS = frozenset({"id", "source", "target", "sourceHandle", "targetHandle"})
CONDITION_HANDLES = ("true", "false")


@dataclass
class NodeRef:
    """A node with a usable id and type; ``model`` is its parsed data (None when invalid)."""

    id: str
    type: str
    index: int
    title: str
    model: Any = None


@dataclass(frozen=True)
class EdgeRef:
    """An edge between two existing nodes; ``handle`` is ``true``/``false`` on conditions, else None."""

    id: str
    source: str
    target: str
    handle: str | None
    index: int


@dataclass
class Graph:
    """The usable nodes and edges, with adjacency, reachability and (when acyclic) an order."""

    nodes: dict[str, NodeRef]
    edges: list[EdgeRef]
    succ: dict[str, list[EdgeRef]] = field(default_factory=dict)
    pred: dict[str, list[EdgeRef]] = field(default_factory=dict)
    trigger_id: str | None = None
    reachable: set[str] = field(default_factory=set)
    depth: dict[str, int] = field(default_factory=dict)
    order: list[str] | None = None
    #: False when nodes or edges were dropped as invalid: graph-wide suggestions would mislead.
    complete: bool = True

    @classmethod
    def build(cls, nodes: dict[str, NodeRef], edges: list[EdgeRef]) -> Graph:
        """Adjacency, the single trigger (if exactly one), what it reaches, a topological order."""
        graph = cls(nodes, edges)
        graph.succ = {node_id: [] for node_id in nodes}
        graph.pred = {node_id: [] for node_id in nodes}
        for edge in edges:
            graph.succ[edge.source].append(edge)
            graph.pred[edge.target].append(edge)
        triggers = [n.id for n in nodes.values() if n.type == "trigger"]
        graph.trigger_id = triggers[0] if len(triggers) == 1 else None
        if graph.trigger_id is not None:
            depth = {graph.trigger_id: 0}
            queue = deque([graph.trigger_id])
            while queue:
                current = queue.popleft()
                for edge in graph.succ[current]:
                    if edge.target not in depth:
                        depth[edge.target] = depth[current] + 1
                        queue.append(edge.target)
            graph.depth = depth
            graph.reachable = set(depth)
        graph.order = _topological_order(nodes, graph.succ, graph.pred)
        return graph


def check_edges(
    raw_edges: list[Any], nodes: dict[str, NodeRef], broken: set[str] | frozenset[str] = frozenset()
) -> tuple[list[Diagnostic], list[EdgeRef], set[str]]:
    """Problems of the edge list, the edges the graph can use, and unknown edge keys (ignored).

    Edges touching a ``broken`` node (one already reported, e.g. for its type) are left out
    without a diagnostic of their own.
    """
    found: list[Diagnostic] = []
    usable: list[EdgeRef] = []
    ignored: set[str] = set()
    seen_ids: set[str] = set()
    seen_links: dict[tuple[str, str, str | None], str] = {}

    for index, raw in enumerate(raw_edges):
        where = f"edges[{index}]"
        if not isinstance(raw, dict):
            found.append(
                make(
                    "EDGE_MALFORMED",
                    f"Edge #{index + 1} must be an object with id, source and target — got {show(raw)}",
                    field=where,
                )
            )
            continue
        ignored.update(str(k) for k in raw if k not in EDGE_FIELDS and k not in UI_EDGE_FIELDS)
        edge_id = raw.get("id")
        if not isinstance(edge_id, str) or not edge_id or len(edge_id) > 128:
            found.append(
                make(
                    "EDGE_BAD_FIELD",
                    f"Edge #{index + 1} needs an 'id' of 1 to 128 characters — got {show(edge_id)}",
                    field=f"{where}.id",
                )
            )
            continue
        reason = scalar_problem(edge_id)
        if reason:
            found.append(make("EDGE_BAD_FIELD", f"Edge #{index + 1}: 'id': {reason}", field=f"{where}.id"))
            continue
        if edge_id in seen_ids:
            found.append(
                make(
                    "EDGE_DUPLICATE_ID",
                    f"Edge {edge_id}: another edge already has this id; every edge needs its own id",
                    edge_id=edge_id,
                    field=f"{where}.id",
                )
            )
            continue
        seen_ids.add(edge_id)
        problem = _field_problem(raw)
        if problem:
            name, message = problem
            found.append(
                make("EDGE_BAD_FIELD", f"Edge {edge_id}: {message}", edge_id=edge_id, field=f"{where}.{name}")
            )
            continue
        source, target = raw["source"], raw["target"]
        if source in broken or target in broken:
            continue
        if source not in nodes:
            found.append(
                make(
                    "EDGE_UNKNOWN_SOURCE",
                    f"Edge {edge_id} starts at node {show(source)}, which does not exist",
                    edge_id=edge_id,
                    field=f"{where}.source",
                )
            )
            continue
        if target not in nodes:
            found.append(
                make(
                    "EDGE_UNKNOWN_TARGET",
                    f"Edge {edge_id} ends at node {show(target)}, which does not exist",
                    edge_id=edge_id,
                    field=f"{where}.target",
                )
            )
            continue
        if source == target:
            found.append(
                make(
                    "EDGE_SELF_LOOP",
                    f"Edge {edge_id} connects {nodes[source].title} to itself",
                    node_id=source,
                    edge_id=edge_id,
                )
            )
            continue
        if nodes[target].type == "trigger":
            found.append(
                make(
                    "TRIGGER_HAS_INCOMING",
                    f"Edge {edge_id} leads into the trigger {nodes[target].title}; the trigger starts the "
                    "workflow, nothing can lead into it",
                    node_id=target,
                    edge_id=edge_id,
                )
            )
            continue
        handle = raw.get("sourceHandle")
        if nodes[source].type == "condition":
            if handle is None or handle == "":
                found.append(
                    make(
                        "CONDITION_MISSING_HANDLE",
                        f"Edge {edge_id} leaves {nodes[source].title} without saying which branch: connect "
                        "it to the condition's 'true' or 'false' handle",
                        node_id=source,
                        edge_id=edge_id,
                        field=f"{where}.sourceHandle",
                    )
                )
                continue
            if handle not in CONDITION_HANDLES:
                found.append(
                    make(
                        "CONDITION_BAD_HANDLE",
                        f"Edge {edge_id} leaves {nodes[source].title} on handle {show(handle)}; a condition "
                        "has only the handles 'true' and 'false'",
                        node_id=source,
                        edge_id=edge_id,
                        field=f"{where}.sourceHandle",
                    )
                )
                continue
        else:
            handle = None  # other nodes have one output; React Flow may still name it
        link = (source, target, handle)
        if link in seen_links:
            found.append(
                make(
                    "DUPLICATE_EDGE",
                    f"Edge {edge_id} repeats edge {seen_links[link]} ({source} → {target}"
                    f"{f', {handle}' if handle else ''}); delete one of them",
                    node_id=target,
                    edge_id=edge_id,
                )
            )
            continue
        seen_links[link] = edge_id
        usable.append(EdgeRef(edge_id, source, target, handle, index))
    return found, usable, ignored


def _field_problem(raw: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("source", "target"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            return name, f"'{name}' must be the id of a node — got {show(value)}"
    for name in ("sourceHandle", "targetHandle"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            return name, f"'{name}' must be text or null — got {show(value)}"
        reason = scalar_problem(value)
        if reason:
            return name, f"'{name}': {reason}"
    return None


def check_cycles(graph: Graph) -> list[Diagnostic]:
    """One GRAPH_CYCLE per group of nodes that lead back to each other."""
    if graph.order is not None:
        return []
    found = []
    for component in _strongly_connected(graph.nodes, graph.succ):
        if len(component) < 2:
            continue
        members = set(component)
        inside = [e for e in graph.edges if e.source in members and e.target in members]
        # The edge that leads back towards the trigger is the one the admin most likely drew last.
        backwards = [
            e
            for e in inside
            if e.source in graph.depth
            and e.target in graph.depth
            and graph.depth[e.target] <= graph.depth[e.source]
        ]
        closing = backwards[-1] if backwards else inside[0]
        path = _path(graph, closing.target, closing.source, members)
        loop = " → ".join([*path, closing.target][:12])
        found.append(
            make(
                "GRAPH_CYCLE",
                f"Edge {closing.id} closes a loop: {loop}. A workflow must flow one way; remove one edge "
                "of the loop",
                node_id=closing.source,
                edge_id=closing.id,
            )
        )
    return found


def _path(graph: Graph, start: str, goal: str, within: set[str]) -> list[str]:
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if current == goal:
            break
        for edge in graph.succ[current]:
            if edge.target in within and edge.target not in parent:
                parent[edge.target] = current
                queue.append(edge.target)
    path: list[str] = []
    step: str | None = goal
    while step is not None:
        path.append(step)
        step = parent.get(step)
    return list(reversed(path))


def _topological_order(
    nodes: dict[str, NodeRef], succ: dict[str, list[EdgeRef]], pred: dict[str, list[EdgeRef]]
) -> list[str] | None:
    indegree = {node_id: len(pred[node_id]) for node_id in nodes}
    queue = deque(node_id for node_id in nodes if indegree[node_id] == 0)
    order = []
    while queue:
        current = queue.popleft()
        order.append(current)
        for edge in succ[current]:
            indegree[edge.target] -= 1
            if indegree[edge.target] == 0:
                queue.append(edge.target)
    return order if len(order) == len(nodes) else None


def _strongly_connected(nodes: dict[str, NodeRef], succ: dict[str, list[EdgeRef]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index_of:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            edges = succ[node]
            for i in range(position, len(edges)):
                target = edges[i].target
                if target not in index_of:
                    work.append((node, i + 1))
                    work.append((target, 0))
                    recurse = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index_of[target])
            if recurse:
                continue
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components
