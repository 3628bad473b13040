"""Whatever it is given, validation answers with diagnostics, quickly, and never raises."""

from __future__ import annotations

import json
import time

import pytest

from careflow.workflow.models import MAX_NODES
from careflow.workflow.validation import MAX_BYTES, validate_path, validate_workflow

from .builders import base, chain


def only_code(report) -> str:
    assert not report.ok and report.workflow is None
    assert len(report.diagnostics) == 1, report.codes
    return report.diagnostics[0].code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "WF_EMPTY"),
        ("   \n", "WF_EMPTY"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "WF_NOT_JSON"),
        (bytes(range(256)) * 4, "WF_NOT_JSON"),
        ("not json at all", "WF_NOT_JSON"),
        ('{"id": "x",}', "WF_NOT_JSON"),
        ('{"amount": NaN}', "WF_NOT_JSON"),
        ('{"amount": Infinity}', "WF_NOT_JSON"),
        ("[" + "9" * 5000 + "]", "WF_NOT_JSON"),
        ("[]", "WF_NOT_OBJECT"),
        ('"a string"', "WF_NOT_OBJECT"),
        ("null", "WF_NOT_OBJECT"),
        ("42", "WF_NOT_OBJECT"),
        ([1, 2], "WF_NOT_OBJECT"),
        (None, "WF_NOT_OBJECT"),
        ("[" * 100_000, "WF_TOO_DEEP"),
        ("[" * 100_000 + "]" * 100_000, "WF_TOO_DEEP"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "WF_TOO_DEEP"),
    ],
)
def test_unusable_input_is_one_clear_diagnostic(raw, code):
    assert only_code(validate_workflow(raw)) == code


def test_not_json_says_where():
    report = validate_workflow('{\n  "id": "x",\n  "nodes": [}\n')
    assert "line 3, column 13" in report.diagnostics[0].message


def test_utf8_bom_is_accepted():
    report = validate_workflow(b"\xef\xbb\xbf" + json.dumps(base(), ensure_ascii=False).encode())
    assert report.ok, report.codes


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-16-le"])
def test_utf16_with_its_byte_order_mark_is_named(encoding):
    """Windows editors save "Unicode" as UTF-16 with a byte-order mark: said as such, not as a stray byte."""
    text = json.dumps(base(), ensure_ascii=False)
    raw = text.encode(encoding) if encoding == "utf-16" else "\ufeff".encode(encoding) + text.encode(encoding)
    report = validate_workflow(raw)
    assert only_code(report) == "WF_NOT_JSON"
    assert report.diagnostics[0].message == (
        "The file is UTF-16 text (it starts with a UTF-16 byte-order mark, as some Windows editors save "
        '"Unicode"); save it as UTF-8'
    )


def test_deeply_nested_dict_input_is_refused_without_recursion():
    deep: dict = {}
    cursor = deep
    for _ in range(100_000):
        cursor["x"] = {}
        cursor = cursor["x"]
    workflow = base()
    workflow["nodes"][1]["data"]["label"] = deep
    assert only_code(validate_workflow(workflow)) == "WF_TOO_DEEP"


def test_self_referencing_dict_input_is_refused():
    workflow = base()
    workflow["nodes"][1]["data"]["loop"] = workflow
    assert only_code(validate_workflow(workflow)) == "WF_TOO_DEEP"


def test_deep_but_legal_rule_groups_are_a_condition_diagnostic():
    workflow = base()
    group: dict = {"field": "patient.age", "op": "gte", "value": 1}
    for _ in range(20):
        group = {"any": [group]}
    workflow["nodes"][2]["data"] = {"all": [group]}
    report = validate_workflow(workflow)
    assert "CONDITION_BAD_GROUP" in report.codes
    assert any(d.node_id == "c1" and "nested" in d.message for d in report.errors)


@pytest.mark.parametrize("as_text", [True, False])
def test_one_node_too_many_is_refused_in_well_under_a_second(as_text):
    workflow = chain(MAX_NODES + 1)
    raw = json.dumps(workflow) if as_text else workflow
    started = time.perf_counter()
    report = validate_workflow(raw)
    elapsed = time.perf_counter() - started
    assert only_code(report) == "WF_TOO_LARGE"
    assert "1,001 nodes" in report.diagnostics[0].message
    assert elapsed < 0.5, elapsed


def test_a_hundred_thousand_nodes_are_refused_before_any_node_is_checked():
    # How long the refusal takes depends on the machine; that no node is looked at does not
    # (tests/hostile/test_size_limits.py holds the finer-grained versions of this).
    from unittest import mock

    from careflow.workflow import validation

    nodes = [{"id": f"n{i}", "type": "delay", "data": {}} for i in range(100_000)]
    for raw in (
        {"id": "huge", "name": "huge", "clinic_id": "c", "nodes": nodes},
        json.dumps({"nodes": nodes}),
    ):
        with mock.patch.object(
            validation, "check_node_data", side_effect=AssertionError("a node was checked")
        ):
            report = validate_workflow(raw)
        assert only_code(report) == "WF_TOO_LARGE"


def test_ten_megabytes_are_refused_before_parsing():
    raw = b'{"id": "x", "name": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    started = time.perf_counter()
    report = validate_workflow(raw)
    assert only_code(report) == "WF_TOO_LARGE"
    assert time.perf_counter() - started < 0.2
    assert only_code(validate_workflow(raw.decode())) == "WF_TOO_LARGE"


def test_too_many_edges_are_refused():
    workflow = base()
    workflow["edges"] = [{"id": f"e{i}", "source": "t1", "target": "d1"} for i in range(4001)]
    assert only_code(validate_workflow(workflow)) == "WF_TOO_LARGE"


def test_the_largest_accepted_workflow_validates_in_reasonable_time():
    workflow = chain(MAX_NODES)
    started = time.perf_counter()
    report = validate_workflow(json.dumps(workflow))
    assert report.errors == [], report.codes[:5]
    assert time.perf_counter() - started < 3.0


def test_missing_file_directory_and_oversized_file(tmp_path):
    missing = validate_path(tmp_path / "nope.json")
    assert only_code(missing) == "WF_UNREADABLE" and missing.source.endswith("nope.json")
    assert only_code(validate_path(tmp_path)) == "WF_UNREADABLE"
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_BYTES + 1))
    assert only_code(validate_path(big)) == "WF_TOO_LARGE"
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert only_code(validate_path(empty)) == "WF_EMPTY"


def test_wrong_types_everywhere_are_diagnostics_not_crashes():
    workflow = {
        "id": ["x"],
        "name": {"ko": "이름"},
        "clinic_id": None,
        "status": 1,
        "timezone": 9,
        "settings": "fast",
        "nodes": [
            None,
            1,
            "x",
            [],
            {"id": 5},
            {"id": "a", "type": ["trigger"]},
            {"id": "b", "type": "action", "data": []},
        ],
        "edges": {"e1": "t1"},
    }
    report = validate_workflow(workflow)
    assert not report.ok
    assert {"WF_MISSING_FIELD", "WF_BAD_FIELD", "NODE_MALFORMED", "NODE_BAD_ID", "NODE_UNKNOWN_TYPE"} <= set(
        report.codes
    )
    json.dumps(report.to_dict())
