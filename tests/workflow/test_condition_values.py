"""A rule's value is accepted exactly when the engine can compare it, and when it can be published."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest

from careflow.engine.rules import evaluate_rule
from careflow.workflow.models import Rule
from careflow.workflow.validation import validate_workflow

from .builders import base, data

FACTS = {
    "patient": {
        "birth_date": date(1960, 1, 1),
        "phone": "010-1234-5678",
        "age": 40,
        "attributes": {"codes": [5678, 1234]},
    },
    "appointment": {"scheduled_at": datetime(2026, 3, 14, 0, 0, tzinfo=timezone.utc)},
}

# (text, accepted): a date fact takes year-month-day only (spaces around it allowed); a date-and-time
# fact takes that or a date and time (``T`` or a space, seconds, fraction and offset optional).
# Compact, week and ordinal forms, an hour without minutes and impossible days are refused.
DATE_TEXTS = [
    ("1960-01-01", True),
    (" 1960-01-01 ", True),
    ("1960-01-01T00:00:00", False),
    ("1960-01-01 00:00", False),
    ("1960-01-01T00:00:00+09:00", False),
    ("19600101", False),
    ("1960-W01-1", False),
    ("1960-001", False),
    ("1960-01-01T00", False),
    ("1960-02-30", False),
    ("1960-1-1", False),
    ("last week", False),
]
DATETIME_TEXTS = [
    ("2026-03-14", True),
    ("2026-03-14T00:00:00", True),
    ("2026-03-14 09:00", True),
    ("2026-03-14T09:00:00+09:00", True),
    ("2026-03-14T09:00Z", True),
    ("2026-03-14T09:00:00.250", True),
    (" 2026-03-14T09:00 ", True),
    ("20260314", False),
    ("2026-W11-6", False),
    ("2026-073", False),
    ("2026-03-14T09", False),
    ("2026-03-14T0900", False),
    ("2026-02-30T09:00", False),
    ("2026-3-14 09:00", False),
    ("yesterday", False),
]


def _with_rule(field: str, op: str, value: object) -> dict:
    workflow = base()
    data(workflow, "c1")["all"] = [{"field": field, "op": op, "value": value}]
    return workflow


def _engine_reads(field: str, value: str) -> bool:
    """The engine can compare the value with a present fact: one of lt, eq, gt holds."""
    return any(evaluate_rule(Rule(field=field, op=op, value=value), FACTS) for op in ("lt", "eq", "gt"))


@pytest.mark.parametrize(
    ("field", "text", "accepted"),
    [("patient.birth_date", t, ok) for t, ok in DATE_TEXTS]
    + [("appointment.scheduled_at", t, ok) for t, ok in DATETIME_TEXTS],
)
def test_a_date_is_accepted_exactly_when_the_engine_can_compare_it(
    field: str, text: str, accepted: bool
) -> None:
    report = validate_workflow(_with_rule(field, "lt", text))
    assert report.ok == accepted, report.codes
    assert _engine_reads(field, text) == accepted
    if not report.ok:
        [error] = report.errors
        assert (error.code, error.node_id, error.field) == ("CONDITION_BAD_VALUE", "c1", "data.all[0].value")


def test_a_date_fact_is_not_compared_with_a_time_of_day() -> None:
    [error] = validate_workflow(_with_rule("patient.birth_date", "lt", "1960-01-01T00:00:00")).errors
    assert error.code == "CONDITION_BAD_VALUE"
    assert "patient.birth_date is a date" in error.message and "'2026-03-14'" in error.message


def test_dates_in_a_list_are_read_like_a_single_date() -> None:
    report = validate_workflow(_with_rule("patient.birth_date", "in", ["1960-01-01", "19600101"]))
    assert [(d.code, d.node_id) for d in report.errors] == [("CONDITION_BAD_VALUE", "c1")]


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("patient.phone", "5678", True),
        ("patient.phone", 5678, False),
        ("patient.attributes.codes", 5678, True),
    ],
)
def test_contains_looks_for_text_in_text(field: str, value: object, ok: bool) -> None:
    report = validate_workflow(_with_rule(field, "contains", value))
    assert report.ok == ok, report.codes
    assert evaluate_rule(Rule(field=field, op="contains", value=value), FACTS) == ok
    if not ok:
        [error] = report.errors
        assert error.code == "CONDITION_BAD_VALUE" and "write the value as text, e.g. '5678'" in error.message


@pytest.mark.parametrize(
    ("op", "literal"),
    [("lt", "1e999"), ("gt", "-1e999"), ("in", "[30, 1e999]"), ("eq", "1e999")],
)
def test_a_number_too_large_for_json_is_refused(op: str, literal: str) -> None:
    # 1e999 reads as infinity, which JSON writes back as null: the published rule would differ
    raw = json.dumps(_with_rule("patient.age", op, "VALUE")).replace('"VALUE"', literal)
    report = validate_workflow(raw)
    assert report.workflow is None
    [error] = report.errors
    assert (error.code, error.node_id, error.field) == ("CONDITION_BAD_VALUE", "c1", "data.all[0].value")
    assert "cannot be stored" in error.message


def test_not_a_number_given_as_a_dict_is_refused() -> None:
    report = validate_workflow(_with_rule("patient.age", "eq", float("nan")))
    assert [(d.code, d.node_id) for d in report.errors] == [("CONDITION_BAD_VALUE", "c1")]


@pytest.mark.parametrize("value", ["implant\ud83d", ["scaling", "implant\udc00"]])
def test_text_with_half_an_emoji_is_refused_in_a_rule(value: object) -> None:
    op = "in" if isinstance(value, list) else "eq"
    report = validate_workflow(json.dumps(_with_rule("appointment.type", op, value)))
    assert report.workflow is None
    [error] = report.errors
    assert (error.code, error.node_id, error.field) == ("CONDITION_BAD_VALUE", "c1", "data.all[0].value")
    assert "broken character" in error.message
