"""validate_workflow never raises, on arbitrary JSON values and on mutated examples."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careflow.workflow.diagnostics import CODES
from careflow.workflow.validation import ValidationReport, validate_workflow

from .builders import EXAMPLES, FIXTURES, load

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
WORDS = st.sampled_from(
    [
        "id",
        "type",
        "data",
        "nodes",
        "edges",
        "source",
        "target",
        "sourceHandle",
        "all",
        "any",
        "field",
        "op",
        "value",
        "amount",
        "unit",
        "until",
        "offset",
        "at",
        "days",
        "start",
        "end",
        "channel",
        "template",
        "subject",
        "purpose",
        "event",
        "schedule",
        "filters",
        "settings",
        "timezone",
        "trigger",
        "action",
        "condition",
        "delay",
        "timeWindow",
        "true",
        "false",
        "t1",
        "d1",
        "c1",
        "w1",
        "a1",
        "@daily",
        "09:00",
    ]
)
JSONISH = st.recursive(
    SCALARS | WORDS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(WORDS | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
SOURCES = sorted(EXAMPLES.glob("*.json")) + sorted(FIXTURES.glob("reactflow-*.json"))


def check(report: ValidationReport) -> None:
    assert isinstance(report, ValidationReport)
    assert all(d.code in CODES and d.severity == CODES[d.code][0] for d in report.diagnostics)
    # The catch-all answer of a validator that raised: a report, but not one the user can act on.
    assert "WF_INTERNAL_ERROR" not in report.codes, [d.message for d in report.diagnostics]
    assert report.ok == (report.workflow is not None)
    json.dumps(report.to_dict())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
def test_any_json_value_gets_a_report(value):
    check(validate_workflow(value))
    check(validate_workflow(json.dumps(value)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_report(raw):
    check(validate_workflow(raw))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SOURCES), st.data())
def test_mutated_examples_get_a_report(path, draw):
    workflow = copy.deepcopy(load(path))
    for _ in range(draw.draw(st.integers(1, 3))):
        target = draw.draw(st.sampled_from(_paths(workflow)[1:]))
        parent = workflow
        for key in target[:-1]:
            parent = parent[key]
        action = draw.draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parent[target[-1]] = draw.draw(JSONISH)
        elif action == "delete":
            del parent[target[-1]]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[target[-1]]))
        else:
            parent[target[-1]] = [copy.deepcopy(parent[target[-1]])]
        if not isinstance(workflow, dict):
            break
    check(validate_workflow(workflow))
