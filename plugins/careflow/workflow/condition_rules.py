"""Checks of a condition's rules on the raw JSON, so each problem names its rule.

A condition is ``{"all": [...]}`` or ``{"any": [...]}``; an entry is a rule
``{"field", "op", "value"}`` or a nested group. Values are checked against the operator and the
fact's declared type (``gt`` on a true/false fact, ``in`` without a list…), and a value is
accepted only when the engine (:mod:`careflow.engine.rules`) can compare it: a date is read by the
same :mod:`.iso_dates` functions, text is looked for in text only as text, and a value must be
one a published version can keep (:mod:`.storable`).
"""

from __future__ import annotations

import difflib
from typing import Any

from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.facts import FACTS, fact_type, is_known_fact
from careflow.workflow.field_errors import show
from careflow.workflow.iso_dates import parse_date, parse_datetime
from careflow.workflow.models import APPOINTMENT_STATUSES, CONDITION_OPS, TRIGGER_EVENTS
from careflow.workflow.storable import scalar_problem

#: Deepest nesting of rule groups (the condition itself is level 1).
MAX_GROUP_DEPTH = 8

#: Facts whose values come from a closed list.
FACT_CHOICES: dict[str, tuple[str, ...]] = {
    "appointment.status": APPOINTMENT_STATUSES,
    "event.type": TRIGGER_EVENTS,
}

_ORDERING_OPS = ("gt", "gte", "lt", "lte")


def check_rules(data: dict[str, Any], where: str, node_id: str) -> list[Diagnostic]:
    """Every problem of the rules of a condition's ``data`` (``where`` prefixes each message)."""
    found: list[Diagnostic] = []
    # Explicit stack: a hostile document must not exhaust Python's recursion.
    stack: list[tuple[dict[str, Any], str, int]] = [(data, "data", 1)]
    while stack:
        group, path, depth = stack.pop()
        present = [key for key in ("all", "any") if group.get(key) is not None]
        if len(present) != 1:
            what = "both 'all' and 'any'" if present else "neither 'all' nor 'any'"
            found.append(
                make(
                    "CONDITION_BAD_GROUP",
                    f"{where}: a condition needs exactly one list of rules, 'all' (every rule must hold) "
                    f"or 'any' (one is enough); {path} has {what}",
                    node_id=node_id,
                    field=path,
                )
            )
            continue
        key = present[0]
        entries = group[key]
        list_path = f"{path}.{key}"
        if not isinstance(entries, list):
            found.append(
                make(
                    "CONDITION_BAD_GROUP",
                    f"{where}: '{list_path}' must be a list of rules — got {show(entries)}",
                    node_id=node_id,
                    field=list_path,
                )
            )
            continue
        if not entries:
            found.append(
                make(
                    "CONDITION_BAD_GROUP",
                    f"{where}: '{list_path}' has no rules; add at least one rule",
                    node_id=node_id,
                    field=list_path,
                )
            )
            continue
        for index, entry in enumerate(entries):
            entry_path = f"{list_path}[{index}]"
            if isinstance(entry, dict) and "field" not in entry and ("all" in entry or "any" in entry):
                extra = sorted(str(k) for k in entry if k not in ("all", "any"))
                if extra:
                    found.append(
                        make(
                            "CONDITION_BAD_RULE",
                            f"{where}: the group at '{entry_path}' has unknown key(s) {', '.join(extra)}",
                            node_id=node_id,
                            field=entry_path,
                        )
                    )
                elif depth >= MAX_GROUP_DEPTH:
                    found.append(
                        make(
                            "CONDITION_BAD_GROUP",
                            f"{where}: rule groups are nested more than {MAX_GROUP_DEPTH} levels deep at "
                            f"'{entry_path}'; simplify the condition",
                            node_id=node_id,
                            field=entry_path,
                        )
                    )
                else:
                    stack.append((entry, entry_path, depth + 1))
                continue
            found.extend(_check_rule(entry, entry_path, where, node_id))
    return found


def _check_rule(rule: Any, path: str, where: str, node_id: str) -> list[Diagnostic]:
    def bad(code: str, message: str, field: str = path) -> list[Diagnostic]:
        return [make(code, f"{where}: {message}", node_id=node_id, field=field)]

    if not isinstance(rule, dict):
        return bad(
            "CONDITION_BAD_RULE",
            f'\'{path}\' must be a rule like {{"field": "patient.age", "op": "gte", "value": 65}} '
            f"— got {show(rule)}",
        )
    extra = sorted(str(k) for k in rule if k not in ("field", "op", "value"))
    if extra:
        return bad("CONDITION_BAD_RULE", f"the rule at '{path}' has unknown key(s) {', '.join(extra)}")
    field, op = rule.get("field"), rule.get("op")
    if not isinstance(field, str) or not field.strip():
        return bad("CONDITION_BAD_RULE", f"the rule at '{path}' needs a 'field' such as 'patient.age'")
    if "op" not in rule:
        return bad("CONDITION_BAD_RULE", f"the rule at '{path}' needs an 'op' such as 'eq'")
    if not isinstance(op, str) or op not in CONDITION_OPS:
        return bad(
            "CONDITION_UNKNOWN_OPERATOR",
            f"'{path}.op' must be one of {', '.join(CONDITION_OPS)} — got {show(op)}",
            f"{path}.op",
        )
    if len(field) > 100 or not is_known_fact(field):
        close = difflib.get_close_matches(field[:100], list(FACTS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return bad(
            "CONDITION_UNKNOWN_FIELD",
            f"'{path}.field' {show(field)} is not a fact careflow knows "
            f"(patient.*, appointment.*, clinic.*, event.*, or patient.attributes.<key>).{hint}",
            f"{path}.field",
        )
    problem = value_problem(field, op, rule.get("value"), "value" in rule)
    if problem:
        return bad("CONDITION_BAD_VALUE", f"'{path}.value': {problem}", f"{path}.value")
    return []


def value_problem(field: str, op: str, value: Any, has_value: bool) -> str | None:
    """Why ``value`` does not fit ``op`` on ``field``, or None."""
    kind = fact_type(field)  # None for free-form attributes
    problem = _unstorable(value)
    if problem:
        return problem
    if op == "exists":
        if value is None or isinstance(value, bool):
            return None
        return f"'exists' takes true, false or no value — got {show(value)}"
    if not has_value:
        return f"'{op}' needs a value to compare {field} with"
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            return (
                f'\'{op}\' needs a non-empty list of values, e.g. ["scaling", "implant"] — got {show(value)}'
            )
        for item in value:
            problem = _scalar_problem(field, kind, item)
            if problem:
                return problem
        return None
    if op in _ORDERING_OPS:
        if kind in ("boolean", "string", "list"):
            return f"'{op}' compares numbers and dates, but {field} is {_KIND_WORDS[kind]}"
        if kind == "number" or kind is None:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                return f"'{op}' needs a number (or a date) — got {show(value)}"
            if kind == "number" and isinstance(value, str):
                return f"{field} is a number: compare it with a number, not text {show(value)}"
            return None
        return _date_problem(field, kind, value)
    if op == "contains":
        if kind in ("number", "boolean", "date", "datetime"):
            return f"'contains' looks inside text or lists, but {field} is {_KIND_WORDS[kind]}"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return f"'contains' needs text (or a number) to look for — got {show(value)}"
        if kind == "string" and not isinstance(value, str):
            # The engine looks for text in text only: 5678 is never found in '010-1234-5678'.
            return (
                f"'contains' looks for text inside {field}: write the value as text, e.g. '{value}' "
                f"— got {show(value)}"
            )
        return None
    # eq / ne
    if value is None:
        return None
    return _scalar_problem(field, kind, value)


_KIND_WORDS = {
    "boolean": "true or false",
    "string": "text",
    "list": "a list",
    "number": "a number",
    "date": "a date",
    "datetime": "a date and time",
}


def _scalar_problem(field: str, kind: str | None, value: Any) -> str | None:
    if kind is None:
        if value is None or isinstance(value, (str, int, float, bool)):
            return None
        return f"compare {field} with text, a number or true/false — got {show(value)}"
    if kind == "boolean":
        return None if isinstance(value, bool) else f"{field} is true or false — got {show(value)}"
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{field} is a number — got {show(value)}"
    if kind in ("date", "datetime"):
        return _date_problem(field, kind, value)
    if not isinstance(value, str):
        return f"{field} is text — got {show(value)}"
    choices = FACT_CHOICES.get(field)
    if choices and value not in choices:
        return f"{field} is one of {', '.join(choices)} — got {show(value)}"
    return None


def _date_problem(field: str, kind: str, value: Any) -> str | None:
    if kind == "date":
        if isinstance(value, str) and parse_date(value) is not None:
            return None
        return (
            f"{field} is a date: compare it with a date written year-month-day, such as '2026-03-14' "
            f"(no time of day) — got {show(value)}"
        )
    if isinstance(value, str) and parse_datetime(value) is not None:
        return None
    return (
        f"{field} is a date and time: compare it with a date such as '2026-03-14' or a date and time "
        f"such as '2026-03-14T09:00+09:00' — got {show(value)}"
    )


def _unstorable(value: Any) -> str | None:
    """Why a value (or an item of a list value) cannot be published, or None."""
    for item in value if isinstance(value, list) else (value,):
        problem = scalar_problem(item)
        if problem:
            return problem
    return None
