"""Property-based fuzzing of the validator: no input makes it raise, fail internally or hang.

``tests/workflow/test_fuzz.py`` fuzzes JSON values, bytes and mutated examples without a time
limit. These runs add a deadline per example, hostile strings (bidi overrides, zero-width
characters, NUL bytes, lone surrogates, homoglyphs, template payloads) in every position of a
workflow-shaped document, and byte-level corruption of the examples; and they require a real
answer: ``WF_INTERNAL_ERROR`` (the validator caught its own crash) fails the run too.
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careflow.workflow.diagnostics import CODES
from careflow.workflow.models import NODE_TYPES
from careflow.workflow.validation import ValidationReport, validate_workflow
from support import EXAMPLES

PAYLOADS = [
    p["template"] for p in json.loads((Path(__file__).parent / "corpus" / "templates.json").read_text())
]
EXAMPLE_BYTES = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.json"))]
DEADLINE = timedelta(seconds=3)  # a hang, not a slow machine: validations take milliseconds
FUZZ = settings(max_examples=100, deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow])

TRICKS = [
    "\u202e",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\x00",
    "\ud800",
    "\u0430",
    "\uff10",
    "%s",
    "{{",
    "}}",
    "\\",
]
HOSTILE_TEXT = (
    st.text(max_size=30)
    | st.sampled_from(PAYLOADS)
    | st.builds(lambda a, t, b: a + t + b, st.text(max_size=8), st.sampled_from(TRICKS), st.text(max_size=8))
    | st.sampled_from(["__proto__", "constructor", "prototype", "__class__", "toString", "NaN", "1e999"])
    | st.sampled_from([*NODE_TYPES, "true", "false", "days", "mon", "09:00", "@daily", "Asia/Seoul"])
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | HOSTILE_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=20,
)
IDS = st.sampled_from(["t1", "d1", "c1", "w1", "a1", "x"]) | HOSTILE_TEXT | st.integers() | st.none()
NODE = st.fixed_dictionaries(
    {
        "id": IDS,
        "type": st.sampled_from(NODE_TYPES) | HOSTILE_TEXT,
        "data": st.dictionaries(HOSTILE_TEXT, VALUES, max_size=5) | VALUES,
    }
)
EDGE = st.fixed_dictionaries(
    {"id": IDS, "source": IDS, "target": IDS},
    optional={"sourceHandle": st.sampled_from(["true", "false"]) | VALUES},
)
WORKFLOW = st.fixed_dictionaries(
    {
        "id": IDS,
        "name": HOSTILE_TEXT,
        "clinic_id": HOSTILE_TEXT,
        "nodes": st.lists(NODE, max_size=8),
        "edges": st.lists(EDGE, max_size=10),
    },
    optional={"timezone": HOSTILE_TEXT, "status": HOSTILE_TEXT, "settings": VALUES, "__proto__": VALUES},
)


def answered(report: ValidationReport) -> None:
    assert isinstance(report, ValidationReport)
    assert all(d.code in CODES and d.severity == CODES[d.code][0] for d in report.diagnostics)
    assert "WF_INTERNAL_ERROR" not in report.codes, [d.message for d in report.diagnostics]
    assert report.ok == (report.workflow is not None)
    json.dumps(report.to_dict())


@FUZZ
@given(WORKFLOW)
def test_workflow_shaped_hostile_documents_get_a_report(document: dict[str, Any]):
    answered(validate_workflow(copy.deepcopy(document)))
    answered(validate_workflow(json.dumps(document)))


@FUZZ
@given(st.sampled_from(EXAMPLE_BYTES), st.data())
def test_corrupted_example_bytes_get_a_report(raw: bytes, data):
    corrupted = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(corrupted) - 1))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip":
            corrupted[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            corrupted[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del corrupted[at : at + data.draw(st.integers(1, 8))]
        else:
            del corrupted[at:]
        if not corrupted:
            break
    answered(validate_workflow(bytes(corrupted)))


@FUZZ
@given(st.sampled_from(EXAMPLE_BYTES), st.data())
def test_examples_with_hostile_values_get_a_report(raw: bytes, data):
    document = json.loads(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        node = data.draw(st.sampled_from(document["nodes"]))
        if isinstance(node.get("data"), dict) and node["data"]:
            key = data.draw(st.sampled_from(sorted(node["data"])))
            node["data"][key] = data.draw(VALUES)
        else:
            node[data.draw(st.sampled_from(["id", "type", "data"]))] = data.draw(VALUES)
    answered(validate_workflow(json.dumps(document)))


@settings(max_examples=300, deadline=DEADLINE)
@given(st.binary(max_size=2000))
def test_random_bytes_get_a_report(raw: bytes):
    answered(validate_workflow(raw))
