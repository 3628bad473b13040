"""Validate a workflow as the builder exports it, with diagnostics a clinic admin can act on.

The stages, cheapest first, so a hostile or huge input is refused before any real work:

1. read: size cap on the raw bytes, UTF-8, JSON (line and column on failure), depth cap;
2. shape: a JSON object, node and edge counts within :data:`MAX_NODES` / :data:`MAX_EDGES`;
3. workflow fields (id, name, status, timezone, settings);
4. nodes on the raw dicts (ids, types, then each ``data`` by its pydantic model), so every
   diagnostic carries its node id and field path;
5. edges and the graph (endpoints, handles, duplicates, cycles);
6. suggestions (warnings and infos);
7. the pydantic :class:`Workflow`, built only when nothing above is an error, and refused if it
   holds a value no published version can keep (:mod:`.storable`).

:func:`validate_workflow` never raises.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from careflow.workflow import report_cache
from careflow.workflow.diagnostics import SEVERITY_RANK, Diagnostic, make
from careflow.workflow.field_errors import describe, field_path, show
from careflow.workflow.graph_checks import Graph, NodeRef, check_cycles, check_edges
from careflow.workflow.models import (
    ID_PATTERN,
    MAX_EDGES,
    MAX_NODES,
    NODE_TYPES,
    SCHEMA_VERSION,
    UI_NODE_FIELDS,
    UI_WORKFLOW_FIELDS,
    Workflow,
    WorkflowSettings,
)
from careflow.workflow.node_checks import check_node_data, node_title
from careflow.workflow.storable import problems
from careflow.workflow.suggestions import suggest
from careflow.workflow.whole_numbers import whole_numbers

#: Largest input read, in bytes (a 1,000-node workflow with long templates fits well within it).
MAX_BYTES = 5 * 1024 * 1024
#: Deepest JSON nesting accepted (a real export is about 10 deep).
MAX_DEPTH = 64
#: Most JSON values (objects, lists, scalars) walked; guards against shared or cyclic Python objects.
MAX_VALUES = 2_000_000
#: Most diagnostics reported; the rest are summarised.
MAX_DIAGNOSTICS = 200

WORKFLOW_FIELDS = frozenset(Workflow.model_fields)
NODE_FIELDS = frozenset({"id", "type", "data"})


@dataclass
class ValidationReport:
    """What validation found: the diagnostics and, when there is no error, the workflow."""

    source: str
    workflow: Workflow | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    workflow_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when no diagnostic is an error (the workflow can be published)."""
        return not self.errors

    @property
    def errors(self) -> list[Diagnostic]:
        """The error diagnostics."""
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        """The warning diagnostics."""
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def codes(self) -> list[str]:
        """The codes of every diagnostic, in order."""
        return [d.code for d in self.diagnostics]

    def to_dict(self) -> dict[str, Any]:
        """``{"source", "workflow_id", "ok", "errors", "warnings", "diagnostics"}`` (counts, then the list)."""
        return {
            "source": self.source,
            "workflow_id": self.workflow_id,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


#: The task careflow adds to every workflow's DAG; no node may take its id.
WAKE_TASK_ID = "careflow_wake"
RESERVED_NODE_IDS = frozenset({WAKE_TASK_ID})


def workflow_files(paths: list[str]) -> list[str]:
    """``paths`` with each directory replaced by its workflow files (``*.json`` directly in it, not
    hidden, by name). A directory that holds none, or cannot be listed, stays itself, for
    :func:`validate_path` to say so."""
    files: list[str] = []
    for path in paths:
        try:
            with os.scandir(path) as entries:
                found = sorted(
                    str(Path(path) / entry.name)
                    for entry in entries
                    if entry.name.endswith(".json") and not entry.name.startswith(".") and entry.is_file()
                )
        except OSError:  # not a directory (the usual case), or one that cannot be listed
            found = []
        files.extend(found or [path])
    return files


def _directory_problem(source: str) -> str:
    """What :func:`validate_path` says of a directory given where a workflow file was expected."""
    try:
        with os.scandir(source) as entries:
            next(iter(entries), None)
    except OSError as exc:
        return f"The directory {source} cannot be listed: {exc.strerror or type(exc).__name__}"
    return f"The directory {source} holds no workflow file (*.json)"


#: The file name that stands for standard input (``curl …/export | careflow workflows validate -``).
STDIN = "-"


def validate_path(path: str | Path) -> ValidationReport:
    """Validate a workflow file (``-``: standard input); a missing, unreadable or oversized file is
    a diagnostic too."""
    source = str(path)
    if source == STDIN:
        return _validate_stdin()
    try:
        target = Path(path)
        if target.is_dir():
            return _report(source, None, [make("WF_UNREADABLE", _directory_problem(source), field=None)])
        size = target.stat().st_size
        if size > MAX_BYTES:
            return _report(source, None, [_too_many_bytes(size)])
        raw = target.read_bytes()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return _report(
            source, None, [make("WF_UNREADABLE", f"The file {source} cannot be read: {reason}", field=None)]
        )
    return validate_workflow(raw, source)


def _validate_stdin() -> ValidationReport:
    """The workflow on standard input, read up to :data:`MAX_BYTES` (beyond, counted, not kept)."""
    stream = sys.stdin.buffer
    raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        size = len(raw) + sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
        return _report(STDIN, None, [_too_many_bytes(size)])
    return validate_workflow(raw, STDIN)


def validate_paths(paths: Sequence[str | Path]) -> list[ValidationReport]:
    """Validate each file, and refuse every file whose workflow id another of them holds.

    Two files of one workflow given together (two exports of it in one folder) would each be
    published in turn, and the one named last would stay live whichever is newer: each of them
    gets ``WF_ID_IN_SEVERAL_FILES`` naming the others. The same file given twice is one file;
    so is standard input (``-``), read once.
    """
    reports: list[ValidationReport] = []
    piped: ValidationReport | None = None
    for path in paths:
        if str(path) == STDIN:
            piped = piped or validate_path(path)
            reports.append(piped)
        else:
            reports.append(validate_path(path))
    files: dict[str, dict[str, str]] = {}  # workflow id -> {the file itself: its name as given}
    for report in reports:
        if report.workflow_id is not None:
            files.setdefault(report.workflow_id, {}).setdefault(
                os.path.realpath(report.source), report.source
            )
    for i, report in enumerate(reports):
        holding = files.get(report.workflow_id or "", {})
        if len(holding) < 2:
            continue
        itself = os.path.realpath(report.source)
        others = [source for path, source in holding.items() if path != itself]
        named = ", ".join(others[:3]) + (f" (and {len(others) - 3} more)" if len(others) > 3 else "")
        refusal = make(
            "WF_ID_IN_SEVERAL_FILES",
            f"Workflow {report.workflow_id} is also in {named}, given with this file: which one stays "
            "published would depend on the order of the files; give one file a workflow",
            field="id",
        )
        reports[i] = _report(report.source, None, [*report.diagnostics, refusal], report.workflow_id)
    return reports


def validate_workflow(raw: bytes | str | dict, source: str = "<input>") -> ValidationReport:
    """Validate a workflow given as JSON bytes, JSON text or an already parsed dict. Never raises.

    Reports of JSON bytes or text are cached by the input's sha256 (:mod:`.report_cache`).
    """
    key = report_cache.input_key(raw, MAX_BYTES)
    if key is not None:
        cached = _cached_report(key, raw, source)
        if cached is not None:
            return cached
    try:
        report = _validate(raw, source)
    except Exception as exc:  # validation must answer, whatever it is given
        message = f"Validation failed unexpectedly ({type(exc).__name__}); please report this workflow"
        return _report(source, None, [make("WF_INTERNAL_ERROR", message)])
    if key is not None:
        report_cache.store(key, report.workflow_id, report.diagnostics, report.workflow)
    return report


def _cached_report(key: str, raw: Any, source: str) -> ValidationReport | None:
    entry = report_cache.lookup(key)
    if entry is None:
        return None
    workflow_id, diagnostics, digest = entry
    workflow = None
    if digest is not None:
        document, problem = _read(raw)
        workflow = None if problem else report_cache.rebuild_workflow(document, digest)
        if workflow is None:
            return None
    return ValidationReport(source, workflow, diagnostics, workflow_id)


def _validate(raw: Any, source: str) -> ValidationReport:
    document, problem = _read(raw)
    if problem is not None:
        return _report(source, None, [problem])
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else show(document)
        message = f"A workflow must be a JSON object with id, name, nodes and edges — got {kind}"
        return _report(source, None, [make("WF_NOT_OBJECT", message)])

    workflow_id = document.get("id") if isinstance(document.get("id"), str) else None
    size_problem = _size_problem(document)
    if size_problem is not None:
        return _report(source, None, [size_problem], workflow_id)
    depth_problem = _depth_problem(document)
    if depth_problem is not None:
        return _report(source, None, [depth_problem], workflow_id)

    found: list[Diagnostic] = []
    ignored: list[str] = [
        str(k) for k in document if k not in WORKFLOW_FIELDS and k not in UI_WORKFLOW_FIELDS
    ]
    settings = _check_workflow_fields(document, found)

    nodes, broken, node_ignored = _check_nodes(document.get("nodes"), found)
    raw_edges = document.get("edges", [])
    if not isinstance(raw_edges, list):
        found.append(make("WF_BAD_FIELD", f"'edges' must be a list — got {show(raw_edges)}", field="edges"))
        raw_edges = []
    edge_problems, edges, edge_ignored = check_edges(raw_edges, nodes, broken)
    found.extend(edge_problems)

    graph = Graph.build(nodes, edges)
    graph.complete = not broken and len(edges) == len(raw_edges)
    _check_triggers(graph, found, document.get("nodes"))
    found.extend(check_cycles(graph))
    found.extend(suggest(graph, settings))
    found.extend(_ignored_fields(ignored, node_ignored, edge_ignored))

    workflow = None
    if not any(d.severity == "error" for d in found):
        try:
            workflow = Workflow.model_validate(document)
        except ValidationError as exc:
            for error in exc.errors(include_url=False)[:20]:
                loc = tuple(error.get("loc") or ())
                found.append(
                    make(
                        "WF_INVALID",
                        f"Workflow: {describe(error)}",
                        node_id=_node_at(document, loc),
                        field=field_path(loc) or None,
                    )
                )
        if workflow is not None:
            unstorable = _unstorable(workflow, document)
            if unstorable:
                found.extend(unstorable)
                workflow = None
    return _report(source, workflow, found, workflow_id)


def _unstorable(workflow: Workflow, document: dict[str, Any]) -> list[Diagnostic]:
    """Values the model took that no published version can keep; the checks above name them
    where they are written, this is the last word before a workflow is handed to publishing."""
    found = []
    for loc, reason in problems(workflow.model_dump()):
        found.append(
            make(
                "WF_INVALID",
                f"Workflow: '{field_path(loc)}': {reason}",
                node_id=_node_at(document, loc),
                field=field_path(loc) or None,
            )
        )
    return found


def _node_at(document: dict[str, Any], loc: tuple[Any, ...]) -> str | None:
    """The id of the node a pydantic error location such as ``("nodes", 1, ...)`` points at."""
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        item = document["nodes"][loc[1]]
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            return item["id"]
    return None


def _report(
    source: str, workflow: Workflow | None, found: list[Diagnostic], workflow_id: str | None = None
) -> ValidationReport:
    ordered = sorted(found, key=lambda d: SEVERITY_RANK[d.severity])
    if len(ordered) > MAX_DIAGNOSTICS:
        extra = len(ordered) - MAX_DIAGNOSTICS
        ordered = ordered[:MAX_DIAGNOSTICS] + [
            make(
                "DIAGNOSTICS_TRUNCATED",
                f"Only the first {MAX_DIAGNOSTICS} findings are listed ({extra} more); fix these first",
            )
        ]
    return ValidationReport(source, workflow, ordered, workflow_id)


# --- stage 1: read -------------------------------------------------------------------------------


def _too_many_bytes(size: int) -> Diagnostic:
    return make(
        "WF_TOO_LARGE",
        f"The workflow is {size / 1_048_576:.1f} MB; careflow accepts at most {MAX_BYTES // 1_048_576} MB",
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read(raw: Any) -> tuple[Any, Diagnostic | None]:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        if len(data) > MAX_BYTES:
            return None, _too_many_bytes(len(data))
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16's byte-order marks (UTF-32 LE's too)
            return None, make(
                "WF_NOT_JSON",
                "The file is UTF-16 text (it starts with a UTF-16 byte-order mark, as some Windows "
                'editors save "Unicode"); save it as UTF-8',
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, make(
                "WF_NOT_JSON",
                f"The file is not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start}); "
                "export the workflow again as JSON",
            )
    elif isinstance(raw, str):
        if len(raw) > MAX_BYTES or (
            len(raw) * 4 > MAX_BYTES and len(raw.encode("utf-8", "replace")) > MAX_BYTES
        ):
            return None, _too_many_bytes(len(raw.encode("utf-8", "replace")))
        text = raw.removeprefix("\ufeff")
    else:
        return raw, None

    if not text.strip():
        return None, make("WF_EMPTY", "The workflow is empty; expected a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as exc:
        return None, make(
            "WF_NOT_JSON", f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        )
    except RecursionError:
        return None, make(
            "WF_TOO_DEEP", f"The JSON is nested too deeply (careflow accepts {MAX_DEPTH} levels)"
        )
    except ValueError as exc:  # NaN/Infinity, integers with thousands of digits
        reason = str(exc) if "JSON number" in str(exc) else "a number has too many digits"
        return None, make("WF_NOT_JSON", f"The file is not valid JSON: {reason}")


# --- stage 2: shape ------------------------------------------------------------------------------


def _size_problem(document: dict[str, Any]) -> Diagnostic | None:
    for key, limit in (("nodes", MAX_NODES), ("edges", MAX_EDGES)):
        items = document.get(key)
        if isinstance(items, list) and len(items) > limit:
            return make(
                "WF_TOO_LARGE",
                f"The workflow has {len(items):,} {key}; careflow accepts at most {limit:,}. "
                "Split it into smaller workflows",
                field=key,
            )
    return None


def _depth_problem(document: dict[str, Any]) -> Diagnostic | None:
    stack: list[tuple[Any, int]] = [(document, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return make("WF_TOO_LARGE", "The workflow holds too many values; careflow refuses to read it")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH and children:
            return make("WF_TOO_DEEP", f"The JSON is nested too deeply (careflow accepts {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in children)
    return None


# --- stage 3: workflow fields --------------------------------------------------------------------

_WORKFLOW_CODES = {
    "id": "WF_BAD_ID",
    "status": "WF_BAD_STATUS",
    "timezone": "WF_BAD_TIMEZONE",
    "settings": "WF_BAD_SETTING",
}


def _check_workflow_fields(document: dict[str, Any], found: list[Diagnostic]) -> WorkflowSettings:
    """Check everything but nodes and edges; return the settings (defaults when invalid)."""
    for key in ("id", "name", "clinic_id", "nodes"):
        if key not in document or document[key] is None:
            found.append(make("WF_MISSING_FIELD", f"The workflow needs '{key}'", field=key))
    version = document.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        found.append(
            make(
                "WF_BAD_SCHEMA_VERSION",
                f"Workflow: schema_version {show(version)} is not supported; this careflow reads {SCHEMA_VERSION}",
                field="schema_version",
            )
        )
    nodes = document.get("nodes")
    if nodes is not None and not isinstance(nodes, list):
        found.append(make("WF_BAD_FIELD", f"'nodes' must be a list — got {show(nodes)}", field="nodes"))

    head = whole_numbers(
        Workflow,
        {
            k: v
            for k, v in document.items()
            if k in WORKFLOW_FIELDS
            and k not in ("nodes", "edges", "schema_version")
            and not (v is None and k in ("id", "name", "clinic_id"))
        },
    )
    settings = WorkflowSettings.model_validate({})
    try:
        Workflow.model_validate({**head, "nodes": [], "edges": []}, strict=True)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(error.get("loc") or ())
            if error.get("type") == "missing":
                continue  # reported above
            code = _WORKFLOW_CODES.get(str(loc[0]) if loc else "", "WF_BAD_FIELD")
            message = describe(error)
            if code == "WF_BAD_TIMEZONE" and error.get("type") == "value_error":
                message = f"'timezone': {message}"
            found.append(make(code, f"Workflow: {message}", field=field_path(loc)))
    if isinstance(head.get("settings"), dict):
        try:
            settings = WorkflowSettings.model_validate(head["settings"], strict=True)
        except ValidationError:
            pass  # reported above; suggestions use the defaults
    return settings


# --- stage 4: nodes ------------------------------------------------------------------------------


def _check_nodes(raw_nodes: Any, found: list[Diagnostic]) -> tuple[dict[str, NodeRef], set[str], set[str]]:
    """The usable nodes by id, the ids of nodes dropped as invalid, and unknown node keys."""
    nodes: dict[str, NodeRef] = {}
    broken: set[str] = set()
    ignored: set[str] = set()
    if not isinstance(raw_nodes, list):
        return nodes, broken, ignored
    import re

    id_pattern = re.compile(ID_PATTERN)
    for index, raw in enumerate(raw_nodes):
        where = f"nodes[{index}]"
        if not isinstance(raw, dict):
            found.append(
                make(
                    "NODE_MALFORMED",
                    f"Node #{index + 1} must be an object with id, type and data — got {show(raw)}",
                    field=where,
                )
            )
            continue
        ignored.update(str(k) for k in raw if k not in NODE_FIELDS and k not in UI_NODE_FIELDS)
        node_id = raw.get("id")
        if node_id is None or node_id == "":
            found.append(make("NODE_MISSING_ID", f"Node #{index + 1} has no id", field=f"{where}.id"))
            continue
        if not isinstance(node_id, str) or not id_pattern.fullmatch(node_id):
            if isinstance(node_id, str):
                broken.add(node_id)
            found.append(
                make(
                    "NODE_BAD_ID",
                    f"Node #{index + 1}: id {show(node_id)} may only hold letters, digits, '_', '.' and '-' "
                    "(max 64, starting with a letter or digit)",
                    node_id=node_id[:64] if isinstance(node_id, str) else None,
                    field=f"{where}.id",
                )
            )
            continue
        if node_id in RESERVED_NODE_IDS:
            broken.add(node_id)
            found.append(
                make(
                    "NODE_BAD_ID",
                    f"Node #{index + 1}: the id {node_id} is the name of a task careflow adds to every "
                    "workflow's DAG; give the node another id",
                    node_id=node_id,
                    field=f"{where}.id",
                )
            )
            continue
        if node_id in nodes:
            found.append(
                make(
                    "NODE_DUPLICATE_ID",
                    f"Node #{index + 1} reuses the id {node_id} of node #{nodes[node_id].index + 1}; "
                    "every node needs its own id",
                    node_id=node_id,
                    field=f"{where}.id",
                )
            )
            continue
        data = raw.get("data")
        title = node_title(node_id, data)
        node_type = raw.get("type")
        if node_type is None:
            broken.add(node_id)
            found.append(
                make(
                    "NODE_MISSING_TYPE",
                    f"{title} has no type; use one of {', '.join(NODE_TYPES)}",
                    node_id=node_id,
                    field=f"{where}.type",
                )
            )
            continue
        if node_type not in NODE_TYPES:
            broken.add(node_id)
            found.append(
                make(
                    "NODE_UNKNOWN_TYPE",
                    f"{title}: type {show(node_type)} is not one careflow runs; use one of "
                    f"{', '.join(NODE_TYPES)}{_did_you_mean(node_type)}",
                    node_id=node_id,
                    field=f"{where}.type",
                )
            )
            continue
        node = NodeRef(node_id, node_type, index, title)
        nodes[node_id] = node
        if not isinstance(data, dict):
            found.append(
                make(
                    "NODE_MISSING_DATA",
                    f"{title} has no settings: 'data' must be an object — got {show(data)}",
                    node_id=node_id,
                    field=f"{where}.data",
                )
            )
            continue
        problems, node.model = check_node_data(node_id, node_type, data)
        found.extend(problems)
    return nodes, broken, ignored


def _did_you_mean(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    folded = value.replace("_", "").replace("-", "").lower()
    for node_type in NODE_TYPES:
        if node_type.lower() == folded:
            return f"; did you mean '{node_type}'?"
    close = difflib.get_close_matches(value, NODE_TYPES, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_triggers(graph: Graph, found: list[Diagnostic], raw_nodes: Any) -> None:
    triggers = [n for n in graph.nodes.values() if n.type == "trigger"]
    # A trigger dropped for a bad id is already reported; do not also call it missing.
    drawn = isinstance(raw_nodes, list) and any(
        isinstance(n, dict) and n.get("type") == "trigger" for n in raw_nodes
    )
    if not triggers and isinstance(raw_nodes, list) and not drawn:
        found.append(
            make(
                "TRIGGER_MISSING",
                "The workflow has no trigger: add one trigger node that starts it",
                field="nodes",
            )
        )
    for extra in triggers[1:]:
        found.append(
            make(
                "TRIGGER_MULTIPLE",
                f"{extra.title} is a second trigger; a workflow has exactly one (first: {triggers[0].id}). "
                "Make a separate workflow for the other event",
                node_id=extra.id,
            )
        )


def _ignored_fields(top: list[str], node_keys: set[str], edge_keys: set[str]) -> list[Diagnostic]:
    parts = []
    if top:
        parts.append(f"workflow: {', '.join(sorted(top)[:10])}")
    if node_keys:
        parts.append(f"nodes: {', '.join(sorted(node_keys)[:10])}")
    if edge_keys:
        parts.append(f"edges: {', '.join(sorted(edge_keys)[:10])}")
    if not parts:
        return []
    return [
        make("FIELD_IGNORED", f"These fields mean nothing to careflow and are ignored ({'; '.join(parts)})")
    ]
