"""Condition rules: every operator, type handling, missing facts, nested groups."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from careflow.engine.rules import evaluate, evaluate_rule, lookup
from careflow.workflow.models import ConditionData, Rule, RuleGroup

FACTS = {
    "patient": {
        "age": 35,
        "name": "김민지",
        "email": None,
        "birth_date": date(1990, 5, 17),
        "has_upcoming_appointment": False,
        "upcoming_appointment_count": 0,
        "attributes": {"vip": True, "tags": ["implant", "senior"], "score": 4.5, "level": "gold"},
    },
    "appointment": {
        "type": "implant_surgery",
        "scheduled_at": datetime(2026, 3, 14, 1, 30, tzinfo=timezone.utc),
        "days_since_completed": 3,
        "attributes": {"balance": Decimal("12.50"), "note": "follow-up needed"},
    },
}


def rule(field: str, op: str, value: object = None) -> Rule:
    return Rule(field=field, op=op, value=value)


def holds(field: str, op: str, value: object = None, facts: dict = FACTS) -> bool:
    return evaluate_rule(rule(field, op, value), facts)


def test_lookup_walks_dotted_paths() -> None:
    assert lookup(FACTS, "patient.attributes.vip") == (True, True)
    assert lookup(FACTS, "patient.email") == (True, None)
    assert lookup(FACTS, "patient.attributes.missing") == (False, None)
    assert lookup(FACTS, "patient.age.years") == (False, None)  # age is not a mapping
    assert lookup(FACTS, "nobody.age") == (False, None)


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("patient.age", "eq", 35, True),
        ("patient.age", "eq", 35.0, True),
        ("patient.age", "eq", 36, False),
        ("patient.age", "ne", 36, True),
        ("patient.age", "ne", 35, False),
        ("patient.age", "gt", 34, True),
        ("patient.age", "gt", 35, False),
        ("patient.age", "gte", 35, True),
        ("patient.age", "gte", 36, False),
        ("patient.age", "lt", 36, True),
        ("patient.age", "lt", 35, False),
        ("patient.age", "lte", 35, True),
        ("patient.age", "lte", 34, False),
        ("patient.age", "in", [30, 35, 40], True),
        ("patient.age", "in", [30, 40], False),
        ("patient.age", "in", [], False),
        ("patient.age", "not_in", [30, 40], True),
        ("patient.age", "not_in", [35], False),
        ("patient.age", "not_in", [], True),
        ("patient.age", "exists", True, True),
        ("patient.age", "exists", None, True),
        ("patient.age", "exists", False, False),
        ("appointment.type", "eq", "implant_surgery", True),
        ("appointment.type", "eq", "Implant_Surgery", False),  # case-sensitive
        ("appointment.type", "contains", "implant", True),
        ("appointment.type", "contains", "crown", False),
        ("appointment.type", "gt", "a", True),  # strings order lexicographically
        ("patient.attributes.tags", "contains", "senior", True),
        ("patient.attributes.tags", "contains", "child", False),
        ("patient.attributes.tags", "eq", ["implant", "senior"], True),
        ("patient.attributes.vip", "eq", True, True),
        ("patient.attributes.vip", "ne", False, True),
        ("patient.has_upcoming_appointment", "eq", False, True),
        ("patient.attributes.score", "gt", 4, True),
        ("appointment.attributes.balance", "gte", 12.5, True),
        ("appointment.attributes.balance", "lt", 12.5, False),
        ("appointment.attributes.note", "contains", "follow", True),
    ],
)
def test_operators(field: str, op: str, value: object, expected: bool) -> None:
    assert holds(field, op, value) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", 1, False),
        ("eq", None, False),
        ("gt", 0, False),
        ("gte", 0, False),
        ("lt", 999, False),
        ("lte", 999, False),
        ("in", [None, 1], False),
        ("contains", "x", False),
        ("ne", 1, True),
        ("not_in", [1, 2], True),
        ("exists", True, False),
        ("exists", False, True),
    ],
)
@pytest.mark.parametrize("field", ["patient.attributes.unknown", "patient.email", "nowhere.at.all"])
def test_missing_or_null_fact(field: str, op: str, value: object, expected: bool) -> None:
    """Absent and null facts are missing: only ne, not_in and exists:false hold."""
    assert holds(field, op, value) is expected


@pytest.mark.parametrize(
    ("field", "op", "value"),
    [
        ("patient.age", "eq", "35"),  # no string -> number coercion
        ("patient.age", "ne", "35"),  # a mismatch is not "different" either
        ("patient.age", "gt", "30"),
        ("patient.age", "lt", "40"),
        ("patient.age", "in", ["35"]),
        ("patient.age", "not_in", ["35"]),
        ("patient.age", "contains", 3),
        ("patient.attributes.vip", "eq", 1),  # booleans are not numbers
        ("patient.attributes.vip", "gt", False),  # booleans have no order
        ("patient.has_upcoming_appointment", "eq", "false"),
        ("appointment.type", "gt", 3),
        ("appointment.scheduled_at", "gt", "tomorrow"),
        ("appointment.scheduled_at", "ne", "tomorrow"),
        ("appointment.scheduled_at", "eq", 1773451800),
        ("patient.birth_date", "eq", "1990-05-17T00:00:00"),  # a date is not an instant
        ("patient.age", "in", 35),  # in needs a list
        ("patient.age", "not_in", "35"),
        ("patient.attributes.tags", "eq", "implant"),
        ("patient.age", "exists", "yes"),
    ],
)
def test_type_mismatch_is_false_and_never_raises(field: str, op: str, value: object) -> None:
    assert holds(field, op, value) is False


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "2026-03-14T10:30:00+09:00", True),  # same instant, other offset
        ("eq", "2026-03-14T01:30:00Z", True),
        ("eq", "2026-03-14T01:30:00", True),  # no offset: UTC
        ("eq", "2026-03-14 01:30:00+00:00", True),
        ("ne", "2026-03-14T01:31:00Z", True),
        ("gt", "2026-03-14T10:00:00+09:00", True),
        ("gt", "2026-03-14T11:00:00+09:00", False),
        ("lt", "2026-03-15", True),  # date-only: midnight UTC
        ("gte", "2026-03-14", True),
        ("lte", datetime(2026, 3, 14, 1, 30), True),  # naive: UTC
        ("in", ["2026-03-14T01:30:00Z", "2026-03-15T01:30:00Z"], True),
    ],
)
def test_datetime_fact_against_iso_strings(op: str, value: object, expected: bool) -> None:
    assert holds("appointment.scheduled_at", op, value) is expected


def test_date_fact_against_iso_date() -> None:
    assert holds("patient.birth_date", "eq", "1990-05-17")
    assert holds("patient.birth_date", "lt", "2000-01-01")
    assert holds("patient.birth_date", "gte", date(1990, 5, 17))
    assert not holds("patient.birth_date", "gt", "1990-05-17")


def test_iso_strings_are_not_parsed_when_both_sides_are_strings() -> None:
    facts = {"patient": {"attributes": {"last_visit": "2026-03-14T10:30:00+09:00"}}}
    assert not holds("patient.attributes.last_visit", "eq", "2026-03-14T01:30:00Z", facts)
    assert holds("patient.attributes.last_visit", "eq", "2026-03-14T10:30:00+09:00", facts)


def test_nan_compares_to_nothing() -> None:
    facts = {"patient": {"attributes": {"score": float("nan")}}}
    for op in ("eq", "gt", "gte", "lt", "lte"):
        assert not holds("patient.attributes.score", op, 1, facts)


def test_empty_groups() -> None:
    assert evaluate(RuleGroup(all=[]), FACTS) is True
    assert evaluate(RuleGroup(any=[]), FACTS) is False
    assert evaluate(ConditionData(all=[]), FACTS) is True
    assert evaluate(ConditionData(any=[]), FACTS) is False


def test_nested_groups() -> None:
    # age >= 30 and (vip or has a follow-up booked) and not (type in [crown, bridge])
    condition = ConditionData.model_validate(
        {
            "all": [
                {"field": "patient.age", "op": "gte", "value": 30},
                {
                    "any": [
                        {"field": "patient.attributes.vip", "op": "eq", "value": True},
                        {"field": "patient.has_upcoming_appointment", "op": "eq", "value": True},
                    ]
                },
                {"all": [{"field": "appointment.type", "op": "not_in", "value": ["crown", "bridge"]}]},
            ]
        }
    )
    assert evaluate(condition, FACTS) is True

    not_vip = {**FACTS, "patient": {**FACTS["patient"], "attributes": {"vip": False}}}
    assert evaluate(condition, not_vip) is False

    crown = {**FACTS, "appointment": {**FACTS["appointment"], "type": "crown"}}
    assert evaluate(condition, crown) is False


def test_any_is_true_when_one_rule_holds() -> None:
    group = RuleGroup(any=[rule("patient.age", "lt", 18), rule("appointment.days_since_completed", "eq", 3)])
    assert evaluate(group, FACTS) is True
    assert evaluate(RuleGroup(any=[rule("patient.age", "lt", 18)]), FACTS) is False


def test_design_example_condition() -> None:
    condition = ConditionData.model_validate(
        {"all": [{"field": "patient.has_upcoming_appointment", "op": "eq", "value": False}]}
    )
    assert evaluate(condition, FACTS) is True
    booked = {**FACTS, "patient": {**FACTS["patient"], "has_upcoming_appointment": True}}
    assert evaluate(condition, booked) is False
    assert evaluate(rule("patient.has_upcoming_appointment", "eq", False), FACTS) is True
