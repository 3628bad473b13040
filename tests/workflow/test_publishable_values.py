"""A workflow validation accepts can be published: no text UTF-8 cannot write, no infinite number."""

from __future__ import annotations

import json

import pytest

from careflow.compiler.hashing import content_hash
from careflow.workflow import node_checks
from careflow.workflow.validation import validate_workflow

from .builders import base, data, edge

# A lone surrogate, as a builder writes half of an emoji cut off by a length limit.
HALF = "\ud83d"


def _appointment_types(workflow: dict) -> None:
    data(workflow, "t1")["filters"]["appointment_types"] = [f"implant{HALF}"]


def _appointment_types_with(text: str):
    def break_it(workflow: dict) -> None:
        data(workflow, "t1")["filters"]["appointment_types"] = [f"implant{text}"]

    return break_it


def _target_handle(workflow: dict) -> None:
    edge(workflow, "e1")["targetHandle"] = f"in{HALF}"


def _source_handle(workflow: dict) -> None:
    edge(workflow, "e4")["sourceHandle"] = f"out{HALF}"


def _edge_id(workflow: dict) -> None:
    edge(workflow, "e4")["id"] = f"e4{HALF}"


@pytest.mark.parametrize(
    ("break_it", "code", "where", "field"),
    [
        (_appointment_types, "TRIGGER_BAD_FILTER", "t1", "data.filters.appointment_types[0]"),
        (_target_handle, "EDGE_BAD_FIELD", "e1", "edges[0].targetHandle"),
        (_source_handle, "EDGE_BAD_FIELD", "e4", "edges[3].sourceHandle"),
        (_edge_id, "EDGE_BAD_FIELD", None, "edges[3].id"),
    ],
)
def test_text_with_half_an_emoji_is_refused_where_it_is_written(break_it, code, where, field) -> None:
    workflow = base()
    break_it(workflow)
    report = validate_workflow(json.dumps(workflow))
    assert report.workflow is None
    [error] = report.errors
    assert (error.code, error.node_id or error.edge_id, error.field) == (code, where, field)
    assert "broken character" in error.message


def test_a_value_a_node_check_lets_through_is_still_refused_before_publishing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_checks, "problems", lambda _data: iter(()))
    workflow = base()
    _appointment_types(workflow)
    report = validate_workflow(workflow)
    assert report.workflow is None
    [error] = report.errors
    assert (error.code, error.node_id) == ("WF_INVALID", "t1")
    assert error.field == "nodes[0].data.filters.appointment_types[0]"


def test_every_accepted_workflow_has_a_content_hash() -> None:
    workflow = base()
    data(workflow, "t1")["filters"]["appointment_types"] = ["implant 🦷"]
    report = validate_workflow(json.dumps(workflow))
    assert report.ok and report.workflow is not None
    assert len(content_hash(report.workflow)) == 64


def test_a_broken_label_is_said_in_words_and_every_report_can_be_written_as_utf8() -> None:
    workflow = base()
    data(workflow, "d1")["label"] = f"3일 대기 {HALF}"
    workflow[f"note{HALF}"] = "an unknown field, ignored"
    report = validate_workflow(json.dumps(workflow))
    [error] = report.errors
    assert (error.code, error.node_id) == ("NODE_BAD_FIELD", "d1")
    assert "'label' holds a broken character" in error.message
    text = json.dumps(report.to_dict(), ensure_ascii=False)
    assert text.encode("utf-8")
    assert "note\\\\ud83d" in text  # the ignored field is named, escaped


# A NUL, as text pasted from another program carries it: Postgres stores it in no text or JSON
# column, careflow's or Airflow's (a label becomes a task's display name).
NUL = "\x00"


@pytest.mark.parametrize(
    ("break_it", "code", "where", "field"),
    [
        (lambda w: data(w, "d1").update(label=f"3일 대기{NUL}"), "NODE_BAD_FIELD", "d1", "data.label"),
        (lambda w: w.update(name=f"관리{NUL}"), "WF_INVALID", None, "name"),
        (lambda w: w.update(clinic_id=f"gangnam-01{NUL}"), "WF_INVALID", None, "clinic_id"),
        (lambda w: w["settings"].update(owner=f"desk{NUL}"), "WF_INVALID", None, "settings.owner"),
        (_appointment_types_with(NUL), "TRIGGER_BAD_FILTER", "t1", "data.filters.appointment_types[0]"),
        (
            lambda w: data(w, "a1").update(template=f"내원 감사{NUL}"),
            "ACTION_TEMPLATE_MISSING",
            "a1",
            "data.template",
        ),
    ],
    ids=["label", "name", "clinic_id", "owner", "filter", "template"],
)
def test_text_with_a_nul_is_refused_where_it_is_written(break_it, code, where, field) -> None:
    workflow = base()
    break_it(workflow)
    report = validate_workflow(json.dumps(workflow))
    assert report.workflow is None
    [error] = report.errors
    assert (error.code, error.node_id, error.field) == (code, where, field)
    assert "NUL character" in error.message


@pytest.mark.parametrize(
    "name", ["localtime", "Factory", "posixrules", "posix/Asia/Seoul", "right/Asia/Seoul"]
)
def test_a_timezone_that_names_no_place_is_refused(name: str) -> None:
    """Each opens on Linux, as the machine's own zone or a copy of the database, and would time
    messages by whichever machine runs them; a window's zone and the workflow's are both checked."""
    workflow = base()
    workflow["timezone"] = name
    [error] = validate_workflow(json.dumps(workflow)).errors
    assert (error.code, error.field) == ("WF_BAD_TIMEZONE", "timezone")
    assert "names no place" in error.message
    workflow = base()
    data(workflow, "w1")["timezone"] = name
    [error] = validate_workflow(json.dumps(workflow)).errors
    assert (error.code, error.node_id, error.field) == ("WINDOW_BAD_TIMEZONE", "w1", "data.timezone")


def test_a_patients_timezone_that_names_no_place_falls_back_to_the_clinics() -> None:
    from zoneinfo import ZoneInfo

    from careflow.workflow.timezones import zone_or

    seoul = ZoneInfo("Asia/Seoul")
    assert zone_or("localtime", seoul) is seoul
    assert zone_or("right/Europe/London", seoul) is seoul
    assert zone_or("Europe/London", seoul) == ZoneInfo("Europe/London")
    # blanks around a name, as a clinic's export may leave them, are dropped (as the facts do)
    assert zone_or(" Europe/London\n", seoul) == ZoneInfo("Europe/London")
    assert zone_or("  ", seoul) is seoul
