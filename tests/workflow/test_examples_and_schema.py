"""The shipped examples, real React Flow exports and the published JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from careflow.compiler.hashing import content_hash
from careflow.workflow.jsonschema import SCHEMA_ID, schema_text, workflow_json_schema
from careflow.workflow.models import SCHEMA_VERSION
from careflow.workflow.validation import validate_path, validate_workflow

from .builders import BROKEN, EXAMPLES, FIXTURES, SCHEMA_FILE, base, data, edge, load, node

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
EXPORT_FILES = sorted(FIXTURES.glob("reactflow-*.json"))
REQUIRED_EXAMPLES = {
    "day-before-reminder.json",
    "implant-aftercare.json",
    "no-show-recovery.json",
    "scaling-recall-6m.json",
    "new-patient-welcome.json",
}


def test_the_required_examples_ship():
    assert {p.name for p in EXAMPLE_FILES} >= REQUIRED_EXAMPLES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_valid_without_warnings(path):
    report = validate_path(path)
    assert report.ok, [d.to_dict() for d in report.errors]
    assert report.warnings == [], [d.message for d in report.warnings]
    assert report.workflow is not None and report.workflow.id == path.stem == report.workflow_id
    assert {d.code for d in report.diagnostics} <= {"CONDITION_BRANCH_EMPTY"}


@pytest.mark.parametrize("path", EXPORT_FILES, ids=lambda p: p.name)
def test_react_flow_export_is_valid_and_its_ui_fields_are_ignored_silently(path):
    raw = load(path)
    report = validate_path(path)
    assert report.ok, [d.to_dict() for d in report.errors]
    assert report.diagnostics == [], report.codes
    assert "viewport" in raw and report.workflow is not None
    assert [n.id for n in report.workflow.nodes] == [n["id"] for n in raw["nodes"]]


def test_both_react_flow_versions_are_covered():
    v11, v12 = (load(FIXTURES / f"reactflow-{v}-export.json") for v in ("v11", "v12"))
    assert {"positionAbsolute", "width", "height", "selected", "dragging"} <= set(v11["nodes"][0])
    assert {"type", "markerEnd", "animated", "style"} <= set(v11["edges"][0])
    assert "measured" in v12["nodes"][0] and {"type", "markerEnd"} <= set(v12["edges"][0])


def test_committed_schema_is_current():
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema_text(), (
        "include/schema/workflow.schema.json is stale; regenerate it with:\n"
        "    careflow schema > include/schema/workflow.schema.json"
    )


def test_schema_is_versioned_and_a_valid_draft_2020_12_schema():
    schema = workflow_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SCHEMA_ID == "https://careflow.dev/schema/workflow/1.0.json"
    assert schema["version"] == SCHEMA_VERSION and schema["title"]
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


@pytest.fixture(scope="module")
def schema_validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", EXAMPLE_FILES + EXPORT_FILES, ids=lambda p: p.name)
def test_examples_and_exports_pass_the_json_schema(schema_validator, path):
    errors = [e.message for e in schema_validator.iter_errors(load(path))]
    assert errors == []


@pytest.mark.parametrize(
    "name",
    [
        "delay-bad-unit.json",
        "action-unknown-channel.json",
        "window-bad-day.json",
        "window-bad-time.json",
        "trigger-unknown-event.json",
        "node-unknown-field.json",
        "node-unknown-type.json",
        "condition-unknown-operator.json",
        "delay-amount-as-text.json",
    ],
)
def test_the_schema_refuses_shape_errors_like_the_validator(schema_validator, name):
    """A builder that checks drafts against the schema catches the same shape mistakes."""
    assert not validate_path(BROKEN / name).ok
    assert list(schema_validator.iter_errors(load(BROKEN / name)))


def _data_of(node_id):
    def with_fields(**fields):
        def change(workflow):
            node(workflow, node_id)["data"] = fields

        return change

    return with_fields


_delay, _condition, _action = _data_of("d1"), _data_of("c1"), _data_of("a1")


def _wake_id(workflow):
    node(workflow, "a1")["id"] = "careflow_wake"
    edge(workflow, "e4")["target"] = "careflow_wake"


RULE = {"field": "patient.age", "op": "gte", "value": 65}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_condition(label="x"), "CONDITION_BAD_GROUP"),
        (_condition(all=[RULE], any=[RULE]), "CONDITION_BAD_GROUP"),
        (_condition(all=[RULE], any=[]), "CONDITION_BAD_GROUP"),
        (_condition(all=[]), "CONDITION_BAD_GROUP"),
        (_condition(any=None, all=None), "CONDITION_BAD_GROUP"),
        (_condition(all=[RULE, {"any": []}]), "CONDITION_BAD_GROUP"),
        (_action(channel="email", template="hi"), "ACTION_EMAIL_SUBJECT_MISSING"),
        (_action(channel="email", template="hi", subject="  "), "ACTION_EMAIL_SUBJECT_MISSING"),
        (_wake_id, "NODE_BAD_ID"),
        (_delay(label="x"), "DELAY_BAD_DURATION"),
        (_delay(amount=3), "DELAY_BAD_DURATION"),
        (_delay(unit="days"), "DELAY_BAD_DURATION"),
        (_delay(amount=3, unit="days", until="appointment.scheduled_at"), "DELAY_BAD_DURATION"),
        (_delay(amount=3, unit="days", offset={"amount": -1, "unit": "days"}), "DELAY_BAD_DURATION"),
    ],
)
def test_the_schema_refuses_what_the_validator_refuses_for_its_shape(schema_validator, change, code):
    """A draft the builder's schema check passes is not refused by publishing for its shape."""
    workflow = base()
    change(workflow)
    assert code in validate_workflow(workflow).codes
    assert list(schema_validator.iter_errors(workflow))


@pytest.mark.parametrize(
    "change",
    [
        _condition(any=[RULE]),
        _condition(all=[RULE], any=None),
        _condition(all=[{"any": [RULE]}]),
        _action(channel="email", template="hi", subject="안내"),
        _action(channel="sms", template="hi", subject=None),
        _delay(until="appointment.scheduled_at", offset={"amount": -1, "unit": "days"}),
        _delay(amount=3, unit="days", until=None, offset=None),
    ],
)
def test_the_schema_accepts_what_the_validator_accepts(schema_validator, change):
    workflow = base()
    change(workflow)
    report = validate_workflow(workflow)
    assert report.ok, report.codes
    assert [e.message for e in schema_validator.iter_errors(workflow)] == []


def _whole(workflow, value):
    data(workflow, "d1")["amount"] = value
    data(workflow, "t1")["filters"]["min_age"] = value + 60
    workflow["settings"]["retries"] = value
    workflow["settings"]["max_lateness"] = {"amount": value * 8, "unit": "hours"}


def test_a_whole_number_written_with_a_decimal_point_is_a_whole_number(schema_validator):
    written, plain = base(), base()
    _whole(written, 3.0)
    _whole(plain, 3)
    assert list(schema_validator.iter_errors(written)) == []
    report = validate_workflow(json.dumps(written))
    assert report.ok and report.workflow is not None, report.codes
    settings, delay = report.workflow.settings, report.workflow.node("d1").data
    assert (settings.retries, settings.max_lateness.amount, delay.amount) == (3, 24, 3)
    assert type(settings.retries) is int and type(delay.amount) is int
    assert report.workflow.trigger.data.filters.min_age == 63
    assert content_hash(report.workflow) == content_hash(validate_workflow(plain).workflow)


def test_a_fraction_is_refused_where_a_whole_number_is_expected(schema_validator):
    workflow = base()
    _whole(workflow, 3.5)
    assert list(schema_validator.iter_errors(workflow))
    report = validate_workflow(workflow)
    assert {(d.code, d.field) for d in report.errors} == {
        ("DELAY_BAD_DURATION", "data.amount"),
        ("TRIGGER_BAD_FILTER", "data.filters.min_age"),
        ("WF_BAD_SETTING", "settings.retries"),
    }
    assert all("must be a whole number — got" in d.message for d in report.errors)
