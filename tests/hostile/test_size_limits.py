"""A workflow over the size limits is refused before any node is looked at."""

from __future__ import annotations

import gc
import json
import time
from unittest import mock

import pytest

from careflow.workflow import report_cache, validation
from careflow.workflow.models import MAX_EDGES, MAX_NODES
from careflow.workflow.validation import validate_workflow

NODES = [{"id": f"n{i}", "type": "delay", "data": {"amount": 1, "unit": "days"}} for i in range(100_000)]


def _refused_without_node_work(raw):
    # The first validation in a process may import the report cache's client (half a second),
    # which has nothing to do with the size of this input: done before the clock starts.
    report_cache._cache()
    # Timed with the collector off: a full collection (its cost grows with whatever earlier tests
    # left in this process) would be charged to whichever allocation happened to trigger it.
    gc.collect()
    gc.disable()
    try:
        return _refuse(raw)
    finally:
        gc.enable()


def _refuse(raw):
    with (
        mock.patch.object(validation, "check_node_data", side_effect=AssertionError("a node was checked")),
        mock.patch.object(validation, "check_edges", side_effect=AssertionError("an edge was checked")),
        mock.patch.object(
            validation, "_depth_problem", side_effect=AssertionError("the document was walked")
        ),
    ):
        started = time.perf_counter()
        report = validate_workflow(raw)
        elapsed = time.perf_counter() - started
    assert report.codes == ["WF_TOO_LARGE"], report.codes
    return report, elapsed


def test_a_hundred_thousand_nodes_as_a_dict_are_refused_at_once():
    _, elapsed = _refused_without_node_work({"id": "huge", "name": "h", "clinic_id": "c", "nodes": NODES})
    assert elapsed < 0.5, elapsed


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_hundred_thousand_real_nodes_are_refused_before_parsing(as_bytes):
    text = json.dumps({"id": "huge", "name": "h", "clinic_id": "c", "nodes": NODES})  # about 7 MB
    raw = text.encode() if as_bytes else text
    with mock.patch.object(validation.json, "loads", side_effect=AssertionError("the JSON was parsed")):
        report, elapsed = _refused_without_node_work(raw)
    assert "MB" in report.diagnostics[0].message
    assert elapsed < 0.5, elapsed


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_hundred_thousand_bare_nodes_cost_no_more_than_reading_them(as_bytes):
    # Nodes with empty data fit within the byte cap (4.5 MB): the JSON is read, the count refused.
    bare = [{"id": f"n{i}", "type": "delay", "data": {}} for i in range(100_000)]
    text = json.dumps({"id": "huge", "name": "h", "clinic_id": "c", "nodes": bare})
    raw = text.encode() if as_bytes else text
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        json.loads(text)
        reading = time.perf_counter() - started
    finally:
        gc.enable()
    report, elapsed = _refused_without_node_work(raw)
    assert f"{len(bare):,} nodes" in report.diagnostics[0].message
    # Parsing the JSON is the whole cost: no node is checked, so the refusal takes what reading
    # takes (plus hashing the input for the validation cache), whatever the machine's load.
    assert elapsed < 2 * reading + 0.1, (elapsed, reading)


def test_ten_thousand_edges_are_refused_without_node_work():
    edges = [{"id": f"e{i}", "source": "t1", "target": "d1"} for i in range(10_000)]
    report, _ = _refused_without_node_work(
        json.dumps({"id": "x", "name": "x", "clinic_id": "c", "nodes": [], "edges": edges})
    )
    assert f"at most {MAX_EDGES:,}" in report.diagnostics[0].message


def test_one_node_over_the_limit_is_refused():
    report, _ = _refused_without_node_work(json.dumps({"id": "x", "nodes": NODES[: MAX_NODES + 1]}))
    assert f"{MAX_NODES + 1:,} nodes" in report.diagnostics[0].message
