"""Checks of one node's ``data``: the pydantic model of its type, in a clinic admin's words.

Each pydantic error becomes a diagnostic with the node id, the field path and a code chosen by
the field (``unit`` of a delay -> ``DELAY_BAD_UNIT``). Checks pydantic cannot make (schedules,
timezones, email subjects, templates) are added here too.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from careflow.workflow.condition_rules import check_rules
from careflow.workflow.diagnostics import CODES, Diagnostic, make
from careflow.workflow.field_errors import describe, field_path, show
from careflow.workflow.models import (
    ActionData,
    ConditionData,
    DelayData,
    TimeWindowData,
    TriggerData,
)
from careflow.workflow.schedules import schedule_problem
from careflow.workflow.storable import problems
from careflow.workflow.timezones import check_timezone
from careflow.workflow.whole_numbers import whole_numbers

DATA_MODELS: dict[str, type[BaseModel]] = {
    "trigger": TriggerData,
    "action": ActionData,
    "condition": ConditionData,
    "delay": DelayData,
    "timeWindow": TimeWindowData,
}

#: Which code a pydantic error gets, by node type and the first part of its field path.
_CODE_BY_FIELD: dict[str, dict[str, str]] = {
    "trigger": {
        "event": "TRIGGER_UNKNOWN_EVENT",
        "filters": "TRIGGER_BAD_FILTER",
        "schedule": "TRIGGER_BAD_SCHEDULE",
    },
    "action": {
        "channel": "ACTION_UNKNOWN_CHANNEL",
        "purpose": "ACTION_BAD_PURPOSE",
        "template": "ACTION_TEMPLATE_MISSING",
    },
    "condition": {"all": "CONDITION_BAD_GROUP", "any": "CONDITION_BAD_GROUP", "": "CONDITION_BAD_GROUP"},
    "delay": {
        "amount": "DELAY_BAD_DURATION",
        "unit": "DELAY_BAD_UNIT",
        "at": "DELAY_BAD_TIME",
        "until": "DELAY_BAD_UNTIL",
        "offset": "DELAY_BAD_OFFSET",
        "": "DELAY_BAD_DURATION",
    },
    "timeWindow": {
        "start": "WINDOW_BAD_TIME",
        "end": "WINDOW_BAD_TIME",
        "days": "WINDOW_BAD_DAY",
        "timezone": "WINDOW_BAD_TIMEZONE",
    },
}


def node_title(node_id: str, data: Any) -> str:
    """``Node d1 (3일 대기)``: how messages name a node."""
    label = data.get("label") if isinstance(data, dict) else None
    if isinstance(label, str) and label.strip():
        return f"Node {node_id} ({label.strip()[:60]})"
    return f"Node {node_id}"


def check_node_data(node_id: str, node_type: str, data: dict[str, Any]) -> tuple[list[Diagnostic], Any]:
    """Problems of one node's data, and its parsed data model (None when it has errors)."""
    model = DATA_MODELS[node_type]
    where = node_title(node_id, data)
    found: list[Diagnostic] = []
    reported: set[str] = set()

    known = set(model.model_fields)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else f"; a {node_type} has {', '.join(sorted(known))}"
            )
            found.append(
                make(
                    "NODE_UNKNOWN_FIELD",
                    f"{where}: {show(str(key))} is not a field of a {node_type} node{hint}",
                    node_id=node_id,
                    field=f"data.{key}",
                )
            )
    clean = whole_numbers(model, {k: v for k, v in data.items() if k in known})

    found.extend(_pre_checks(node_id, node_type, clean, where, reported))
    if node_type == "condition" and any(d.severity == "error" for d in found):
        return found, None  # the rule walk said it all; pydantic's union errors would only repeat it

    try:
        parsed = model.model_validate(clean, strict=True)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(error.get("loc") or ())
            head = str(loc[0]) if loc else ""
            if head in reported:
                continue
            code = _CODE_BY_FIELD[node_type].get(head, "NODE_BAD_FIELD")
            if code == "ACTION_TEMPLATE_MISSING" and error.get("type") == "string_too_long":
                code = "ACTION_TEMPLATE_INVALID"
            found.append(
                make(
                    code,
                    f"{where}: {describe(error)}",
                    node_id=node_id,
                    field=field_path(loc, "data"),
                )
            )
            reported.add(head)
        return found, None

    unstorable = _unstorable(node_id, node_type, parsed, where)
    if unstorable:
        return found + unstorable, None
    found.extend(_post_checks(node_id, node_type, parsed, where))
    if any(d.severity == "error" for d in found):
        return found, None
    return found, parsed


def _pre_checks(
    node_id: str, node_type: str, data: dict[str, Any], where: str, reported: set[str]
) -> list[Diagnostic]:
    """Checks on raw data that give better messages than pydantic's (their fields are then skipped)."""
    found: list[Diagnostic] = []
    if node_type == "trigger" and "schedule" in data:
        problem = schedule_problem(data["schedule"])
        if problem:
            found.append(
                make(
                    "TRIGGER_BAD_SCHEDULE",
                    f"{where}: schedule {problem}",
                    node_id=node_id,
                    field="data.schedule",
                )
            )
            reported.add("schedule")
    elif node_type == "timeWindow" and isinstance(data.get("timezone"), str):
        try:
            check_timezone(data["timezone"])
        except ValueError as exc:
            found.append(
                make("WINDOW_BAD_TIMEZONE", f"{where}: {exc}", node_id=node_id, field="data.timezone")
            )
            reported.add("timezone")
    elif node_type == "condition":
        found.extend(check_rules(data, where, node_id))
    return found


def _unstorable(node_id: str, node_type: str, parsed: BaseModel, where: str) -> list[Diagnostic]:
    """Values the model took that no published version can keep (text with a broken character)."""
    found = []
    for loc, reason in problems(parsed.model_dump()):
        head = str(loc[0]) if loc else ""
        if node_type == "condition":
            code = "CONDITION_BAD_VALUE"  # only a rule's value is not checked by its type
        else:
            code = _CODE_BY_FIELD[node_type].get(head, "NODE_BAD_FIELD")
        found.append(
            make(
                code,
                f"{where}: '{field_path(loc)}': {reason}",
                node_id=node_id,
                field=field_path(loc, "data"),
            )
        )
    return found


def _post_checks(node_id: str, node_type: str, parsed: Any, where: str) -> list[Diagnostic]:
    """Checks that need the parsed model."""
    found: list[Diagnostic] = []
    if node_type == "trigger":
        filters = parsed.filters
        if filters.appointment_types is not None and not filters.appointment_types:
            found.append(
                make(
                    "TRIGGER_BAD_FILTER",
                    f"{where}: 'filters.appointment_types' is an empty list, so nobody is enrolled; "
                    "list the types or remove the filter",
                    node_id=node_id,
                    field="data.filters.appointment_types",
                )
            )
        elif filters.appointment_types and not all(t.strip() for t in filters.appointment_types):
            found.append(
                make(
                    "TRIGGER_BAD_FILTER",
                    f"{where}: 'filters.appointment_types' contains an empty type name",
                    node_id=node_id,
                    field="data.filters.appointment_types",
                )
            )
        if filters.min_age is not None and filters.max_age is not None and filters.min_age > filters.max_age:
            found.append(
                make(
                    "TRIGGER_BAD_FILTER",
                    f"{where}: min_age {filters.min_age} is above max_age {filters.max_age}, so nobody "
                    "is enrolled",
                    node_id=node_id,
                    field="data.filters.min_age",
                )
            )
    elif node_type == "delay" and parsed.at is not None and parsed.unit in ("minutes", "hours"):
        found.append(
            make(
                "DELAY_BAD_TIME",
                f"{where}: 'at' sets the time of day a wait in days or weeks (or until an appointment "
                f"time) ends; a wait of {parsed.amount} {parsed.unit} ends {parsed.amount} {parsed.unit} "
                "after the patient arrives: remove 'at', or count in days",
                node_id=node_id,
                field="data.at",
            )
        )
    elif node_type == "action":
        subject = parsed.subject
        if parsed.channel == "email" and (subject is None or not subject.strip()):
            found.append(
                make(
                    "ACTION_EMAIL_SUBJECT_MISSING",
                    f"{where}: an email needs a 'subject'",
                    node_id=node_id,
                    field="data.subject",
                )
            )
        elif parsed.channel != "email" and subject:
            found.append(
                make(
                    "ACTION_SUBJECT_IGNORED",
                    f"{where}: {parsed.channel} messages have no subject; the subject is not sent",
                    node_id=node_id,
                    field="data.subject",
                )
            )
        if not any(d.severity == "error" for d in found):
            found.extend(check_action_templates(node_id, parsed, where))
    return found


def check_action_templates(node_id: str, action: ActionData, where: str) -> list[Diagnostic]:
    """The template (and subject) checked by careflow.templates, or by a Jinja2 parse until it exists."""
    subject = action.subject if action.channel == "email" else None
    try:
        from careflow.templates import check_template
    except ImportError:
        return _syntax_only(node_id, action.template, subject, where)
    try:
        problems = check_template(action.template, channel=action.channel, subject=subject)
    except Exception as exc:  # the checker must not take validation down with it
        return [
            make(
                "ACTION_TEMPLATE_INVALID",
                f"{where}: the template could not be checked ({type(exc).__name__})",
                node_id=node_id,
                field="data.template",
            )
        ]
    found = []
    for problem in problems or ():
        raw_code = str(getattr(problem, "code", "") or "")
        code = template_code(raw_code)
        message = str(getattr(problem, "message", "") or "the template is refused")
        if code == "ACTION_TEMPLATE_INVALID" and raw_code:
            message = f"{message} ({raw_code})"
        field = getattr(problem, "field", None) or "template"
        field = field if str(field).startswith("data.") else f"data.{field}"
        found.append(make(code, f"{where}: {message}", node_id=node_id, field=field))
    return found


#: Template checker codes whose meaning an existing diagnostic code already carries.
_TEMPLATE_ALIASES = {"TEMPLATE_SUBJECT_REQUIRED": "ACTION_EMAIL_SUBJECT_MISSING"}


def template_code(code: str) -> str:
    """The registered diagnostic code for a code of the template checker (TEMPLATE_X -> ACTION_TEMPLATE_X)."""
    if code in _TEMPLATE_ALIASES:
        return _TEMPLATE_ALIASES[code]
    suffix = code.upper().removeprefix("ACTION_").removeprefix("TEMPLATE_")
    candidate = f"ACTION_TEMPLATE_{suffix}"
    return candidate if suffix and candidate in CODES else "ACTION_TEMPLATE_INVALID"


def _syntax_only(node_id: str, template: str, subject: str | None, where: str) -> list[Diagnostic]:
    import jinja2

    found = []
    for field, source in (("template", template), ("subject", subject)):
        if not source:
            continue
        try:
            jinja2.Environment().parse(source)
        except jinja2.TemplateSyntaxError as exc:
            found.append(
                make(
                    "ACTION_TEMPLATE_SYNTAX",
                    f"{where}: the {field} has a template error on line {exc.lineno}: {exc.message}",
                    node_id=node_id,
                    field=f"data.{field}",
                )
            )
        except Exception as exc:  # e.g. a template nested so deep the parser gives up
            found.append(
                make(
                    "ACTION_TEMPLATE_SYNTAX",
                    f"{where}: the {field} cannot be read as a template ({type(exc).__name__})",
                    node_id=node_id,
                    field=f"data.{field}",
                )
            )
    return found
