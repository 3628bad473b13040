"""Diagnostics speak a clinic admin's language and carry where the problem is."""

from __future__ import annotations

import pytest

from careflow.workflow.diagnostics import CODES, Diagnostic, make
from careflow.workflow.schedules import schedule_problem
from careflow.workflow.validation import validate_workflow

from .builders import base, data, edge, node


def test_registry_is_well_formed():
    for code, (severity, description) in CODES.items():
        assert code == code.upper() and " " not in code
        assert severity in ("error", "warning", "info")
        assert description.endswith(".")
    with pytest.raises(KeyError):
        make("NOT_A_CODE", "x")


def test_diagnostic_to_dict_and_report_to_dict():
    d = Diagnostic("error", "DELAY_BAD_UNIT", "msg", node_id="d1", field="data.unit")
    assert d.to_dict() == {
        "severity": "error",
        "code": "DELAY_BAD_UNIT",
        "message": "msg",
        "node_id": "d1",
        "edge_id": None,
        "field": "data.unit",
    }
    workflow = base()
    data(workflow, "d1")["unit"] = "fortnights"
    workflow["nodes"].append(
        {"id": "a2", "type": "action", "data": {"channel": "kakao", "template": "{{ clinic.name }}"}}
    )
    report = validate_workflow(workflow, source="drafts/implant.json")
    out = report.to_dict()
    assert list(out) == ["source", "workflow_id", "ok", "errors", "warnings", "diagnostics"]
    assert out["source"] == "drafts/implant.json" and out["workflow_id"] == "implant-aftercare"
    assert out["ok"] is False and out["errors"] == 1 and out["warnings"] == 1
    assert [d["severity"] for d in out["diagnostics"]] == ["error", "warning", "info"]


def test_pydantic_errors_are_translated():
    workflow = base()
    data(workflow, "d1")["unit"] = "fortnights"
    [error] = validate_workflow(workflow).errors
    assert error.message == (
        "Node d1 (3일 대기): 'unit' must be one of minutes, hours, days, weeks — got 'fortnights'"
    )
    assert (error.node_id, error.field) == ("d1", "data.unit")


def test_typos_get_a_suggestion():
    workflow = base()
    data(workflow, "c1")["all"][0]["field"] = "patient.has_upcoming_appointments"
    workflow["nodes"][3]["type"] = "timewindow"
    messages = " ".join(d.message for d in validate_workflow(workflow).errors)
    assert "did you mean 'patient.has_upcoming_appointment'?" in messages.lower()
    assert "did you mean 'timeWindow'?" in messages


def test_every_error_of_a_workflow_is_reported_not_only_the_first():
    workflow = base()
    data(workflow, "d1")["unit"] = "fortnights"
    data(workflow, "w1")["start"] = "9am"
    data(workflow, "a1")["channel"] = "fax"
    workflow["edges"][0]["target"] = "nowhere"
    report = validate_workflow(workflow)
    assert {(d.code, d.node_id or d.edge_id) for d in report.errors} == {
        ("DELAY_BAD_UNIT", "d1"),
        ("WINDOW_BAD_TIME", "w1"),
        ("ACTION_UNKNOWN_CHANNEL", "a1"),
        ("EDGE_UNKNOWN_TARGET", "e1"),
    }


@pytest.mark.parametrize(
    "schedule",
    ["@hourly", "@daily", "@weekly", "@monthly", "0 9 * * 1-5", "*/30 8-20 * * *", "0 9 * MAR THU,FRI"],
)
def test_periodic_schedules_are_accepted(schedule):
    assert schedule_problem(schedule) is None


@pytest.mark.parametrize(
    "schedule", ["@once", "@reboot", None, "", "0 0 9 * * *", "61 * * * *", "every day", 5, "0 0 31 2 *"]
)
def test_other_schedules_are_refused(schedule):
    assert schedule_problem(schedule)


@pytest.mark.parametrize(
    "schedule", ["R 9 * * *", "0 r * * *", "R(0-30) 9 * * *", "0 9 * * R", "H 9 * * *", "H/15 * * * *"]
)
def test_random_and_hashed_cron_fields_are_refused(schedule):
    """croniter draws R anew each time a cron is read (each DAG parse would move the runs); H needs a hash id."""
    workflow = base()
    data(workflow, "t1")["schedule"] = schedule
    [error] = validate_workflow(workflow).errors
    assert (error.code, error.node_id, error.field) == ("TRIGGER_BAD_SCHEDULE", "t1", "data.schedule")
    assert "R (a random time) or H (a hashed time)" in error.message and "'0 9 * * *'" in error.message


def test_a_node_id_with_a_trailing_newline_is_a_bad_id():
    workflow = base()
    node(workflow, "a1")["id"] = "a1\n"  # nodes[4]
    edge(workflow, "e4")["target"] = "a1\n"
    report = validate_workflow(workflow)
    assert ("NODE_BAD_ID", "nodes[4].id") in {(d.code, d.field) for d in report.errors}
    assert "WF_INVALID" not in report.codes


def test_a_schedule_is_stored_the_way_airflow_reads_it():
    for written, stored in ((" @daily ", "@daily"), ("0  9 * * 1-5", "0 9 * * 1-5")):
        workflow = base()
        workflow["nodes"][0]["data"]["schedule"] = written
        report = validate_workflow(workflow)
        assert report.ok and report.workflow is not None, report.to_dict()
        assert report.workflow.trigger.data.schedule == stored


def test_condition_values_are_checked_against_the_fact():
    cases = [
        ("patient.age", "gte", 65, True),
        ("patient.age", "gte", "65", False),
        ("patient.consent_marketing", "eq", True, True),
        ("patient.consent_marketing", "eq", "yes", False),
        ("appointment.type", "in", ["scaling", "implant"], True),
        ("appointment.type", "in", [], False),
        ("appointment.completed_at", "lt", "2026-03-01", True),
        ("appointment.completed_at", "lt", "last week", False),
        ("patient.attributes.vip", "eq", True, True),
        ("patient.email", "exists", True, True),
        ("patient.email", "exists", "yes", False),
        ("patient.name", "contains", "김", True),
        ("patient.age", "contains", 6, False),
    ]
    for fact, op, value, ok in cases:
        workflow = base()
        data(workflow, "c1")["all"] = [{"field": fact, "op": op, "value": value}]
        report = validate_workflow(workflow)
        assert report.ok == ok, (fact, op, value, report.codes)


def test_the_jinja_fallback_checks_syntax_when_the_template_package_is_absent(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "careflow.templates", None)
    workflow = base()
    assert validate_workflow(workflow).ok
    data(workflow, "a1")["template"] = "{% if patient.name %}안녕하세요"
    [error] = validate_workflow(workflow).errors
    assert error.code == "ACTION_TEMPLATE_SYNTAX" and error.node_id == "a1"


def test_a_node_cannot_take_the_id_of_the_wake_task():
    workflow = base()
    workflow["nodes"][1]["id"] = "careflow_wake"
    workflow["edges"] = [
        {**edge, "source": "careflow_wake" if edge["source"] == "d1" else edge["source"]}
        | {"target": "careflow_wake" if edge["target"] == "d1" else edge["target"]}
        for edge in workflow["edges"]
    ]
    report = validate_workflow(workflow)
    assert not report.ok
    assert ("NODE_BAD_ID", "careflow_wake") in {(d.code, d.node_id) for d in report.errors}


def test_at_is_refused_on_a_wait_in_minutes_or_hours_and_kept_on_days():
    workflow = base()
    data(workflow, "d1").update(amount=2, unit="hours", at="10:00")
    [error] = validate_workflow(workflow).errors
    assert (error.code, error.node_id, error.field) == ("DELAY_BAD_TIME", "d1", "data.at")
    assert "remove 'at', or count in days" in error.message
    workflow = base()
    data(workflow, "d1").update(amount=0, unit="days", at="10:00")
    report = validate_workflow(workflow)
    assert report.ok and "DELAY_ZERO" not in {d.code for d in report.diagnostics}
