"""Condition evaluation: rules ``{"field", "op", "value"}`` nested under ``all`` / ``any``.

Semantics a clinic admin can rely on:

* A fact is **missing** when its path is absent from the facts or its value is null. A missing
  fact makes every operator false except ``exists`` (false) / ``exists: false`` (true), ``ne``
  (true) and ``not_in`` (true): "is not 30" holds for a patient whose age is unknown.
* No implicit conversion between strings and numbers or booleans: ``age eq "30"`` is never true.
  A string is read as an ISO date or datetime only when it is compared with a date or datetime
  fact (``appointment.scheduled_at gt "2026-03-14T09:00:00+09:00"``). A datetime string without
  an offset, or a date-only string compared with a datetime, is read as UTC (midnight).
* Values that cannot be compared (a number with a string, a datetime with an unparseable
  string, a boolean with a number, ordering booleans) make the rule false, for ``ne`` and
  ``not_in`` too; evaluation never raises.
* ``eq``/``ne``/``in``/``not_in`` compare strings case-sensitively; ``contains`` is substring
  for a string fact and membership for a list fact. ``in``/``not_in`` need a list value.
* ``exists`` with value ``true`` (or no value) holds when the fact is present; with ``false``
  when it is missing; any other value makes the rule false.
* An empty ``all`` is true, an empty ``any`` is false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from careflow.workflow.iso_dates import parse_date, parse_datetime
from careflow.workflow.models import ConditionData, Rule, RuleGroup

_NUMBER = (int, float, Decimal)


def lookup(facts: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """Walk nested mappings along a dotted path: ``(True, value)`` or ``(False, None)``."""
    current: Any = facts
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


def evaluate(group: ConditionData | RuleGroup | Rule, facts: Mapping[str, Any]) -> bool:
    """True when the condition (or group, or single rule) holds for these facts."""
    if isinstance(group, Rule):
        return evaluate_rule(group, facts)
    if group.all is not None:
        return all(evaluate(item, facts) for item in group.all)
    if group.any is not None:
        return any(evaluate(item, facts) for item in group.any)
    return False  # unreachable for validated models: they carry exactly one combinator


def evaluate_rule(rule: Rule, facts: Mapping[str, Any]) -> bool:
    """True when one rule holds for these facts; never raises."""
    found, actual = lookup(facts, rule.field)
    present = found and actual is not None
    op, expected = rule.op, rule.value

    if op == "exists":
        if expected is None or expected is True:
            return present
        if expected is False:
            return not present
        return False

    if op in ("in", "not_in"):
        if not _is_list(expected):
            return False
        if not present:
            return op == "not_in"
        results = [_equals(actual, item) for item in expected]
        if op == "in":
            return any(r is True for r in results)
        return all(r is False for r in results)

    if not present:
        return op == "ne"

    if op == "eq":
        return _equals(actual, expected) is True
    if op == "ne":
        return _equals(actual, expected) is False
    if op == "contains":
        return _contains(actual, expected)

    order = _compare(actual, expected)
    if order is None:
        return False
    return {"gt": order > 0, "gte": order >= 0, "lt": order < 0, "lte": order <= 0}.get(op, False)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _as_utc(value: datetime) -> datetime:
    # Naive datetimes in facts and rules mean UTC, as everywhere in careflow.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        # Validation reads rule values with the same function: a value it accepts compares here.
        return parse_datetime(value)
    return None


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return None  # a date fact is not compared with an instant: which day would it be?
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return parse_date(value)
    return None


def _coerce_pair(actual: Any, expected: Any) -> tuple[Any, Any] | None:
    """Both values in one comparable type, or None when they cannot be compared."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        if isinstance(actual, bool) and isinstance(expected, bool):
            return actual, expected
        return None
    if _is_number(actual) and _is_number(expected):
        return actual, expected  # int, float and Decimal (from Postgres NUMERIC) compare exactly
    # datetime is a subclass of date: test it first.
    if isinstance(actual, datetime) or isinstance(expected, datetime):
        if isinstance(actual, (datetime, str, date)) and isinstance(expected, (datetime, str, date)):
            left, right = _as_datetime(actual), _as_datetime(expected)
            if left is not None and right is not None:
                return left, right
        return None
    if isinstance(actual, date) or isinstance(expected, date):
        left_d, right_d = _as_date(actual), _as_date(expected)
        if left_d is not None and right_d is not None:
            return left_d, right_d
        return None
    if isinstance(actual, str) and isinstance(expected, str):
        return actual, expected
    return None


def _equals(actual: Any, expected: Any) -> bool | None:
    """True/False, or None when the two values cannot be compared."""
    if expected is None:
        return actual is None
    if _is_list(actual) or _is_list(expected):
        if not (_is_list(actual) and _is_list(expected)):
            return None
        if len(actual) != len(expected):
            return False
        pairs = [_equals(a, b) for a, b in zip(actual, expected, strict=True)]
        if any(p is None for p in pairs):
            return None
        return all(pairs)
    if isinstance(actual, Mapping) or isinstance(expected, Mapping):
        if isinstance(actual, Mapping) and isinstance(expected, Mapping):
            return dict(actual) == dict(expected)
        return None
    pair = _coerce_pair(actual, expected)
    if pair is None:
        return None
    try:
        return bool(pair[0] == pair[1])
    except (TypeError, ValueError, ArithmeticError):
        return None


def _compare(actual: Any, expected: Any) -> int | None:
    """-1/0/1, or None when the values have no order (booleans, lists, mixed types)."""
    if expected is None or isinstance(actual, bool) or isinstance(expected, bool):
        return None
    pair = _coerce_pair(actual, expected)
    if pair is None:
        return None
    left, right = pair
    try:
        if left < right:
            return -1
        if left > right:
            return 1
        if left == right:
            return 0
    except (TypeError, ValueError, ArithmeticError):
        return None
    return None  # NaN: neither smaller, larger nor equal


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if _is_list(actual):
        return any(_equals(item, expected) is True for item in actual)
    return False
