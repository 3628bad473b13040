"""The shipped examples, real React Flow exports and the published JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from careflow.workflow.jsonschema import SCHEMA_ID, schema_text, workflow_json_schema
from careflow.workflow.models import SCHEMA_VERSION
from careflow.workflow.validation import validate_path

from .builders import BROKEN, EXAMPLES, FIXTURES, SCHEMA_FILE, load

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
