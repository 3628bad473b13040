"""Diagnostics: what validation says about a workflow, Elyra-style.

Every diagnostic has a severity, a stable code from :data:`CODES`, a message a clinic admin
understands, and the node, edge or field it concerns. Errors block publishing; warnings and
infos are optimisation suggestions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]

SEVERITY_RANK: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Diagnostic:
    """One finding of validation, tied to a node, an edge or a field where it can be."""

    severity: Severity
    code: str
    message: str
    node_id: str | None = None
    edge_id: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every key present (None where it does not apply)."""
        return asdict(self)


_E: Severity = "error"
_W: Severity = "warning"
_I: Severity = "info"

#: Every stable diagnostic code: severity and a short description. Codes never change meaning;
#: new ones are added, retired ones are kept documented.
CODES: dict[str, tuple[Severity, str]] = {
    # The document itself.
    "WF_UNREADABLE": (_E, "The file cannot be read (missing, a directory, no permission)."),
    "WF_EMPTY": (_E, "The input is empty."),
    "WF_NOT_JSON": (
        _E,
        "The input is not valid JSON (or not UTF-8 text); the message gives line and column.",
    ),
    "WF_NOT_OBJECT": (_E, "The top level is not a JSON object."),
    "WF_TOO_LARGE": (_E, "Too many bytes, nodes or edges; refused before any other check."),
    "WF_TOO_DEEP": (_E, "JSON nested deeper than careflow accepts."),
    "WF_MISSING_FIELD": (_E, "A required workflow field (id, name, clinic_id, nodes) is missing."),
    "WF_BAD_FIELD": (_E, "A workflow field has the wrong type or an invalid value."),
    "WF_BAD_SCHEMA_VERSION": (_E, "schema_version is not one careflow understands."),
    "WF_BAD_ID": (_E, "The workflow id is not a valid id (letters, digits, '_', '.', '-'; max 64)."),
    "WF_BAD_STATUS": (_E, "status is not one of draft, active, paused, archived."),
    "WF_BAD_TIMEZONE": (_E, "timezone is not a known IANA timezone."),
    "WF_BAD_SETTING": (_E, "A value under settings is out of range or of the wrong type."),
    "WF_INVALID": (_E, "The workflow model refused the document (a check the staged validation missed)."),
    "WF_ID_OF_ANOTHER_CLINIC": (_E, "At publish: the workflow id is already published for another clinic."),
    "WF_ID_CASE_CLASH": (
        _E,
        "At publish: the workflow id differs from a published one's in case alone (their snapshot "
        "files would be one on a filesystem that does not tell case apart).",
    ),
    "WF_ID_IN_SEVERAL_FILES": (
        _E,
        "Another file given to the same validate or publish holds the same workflow id: which of them "
        "would stay published would depend on the files' order. Give one file a workflow.",
    ),
    "WF_TEXT_UNSTORABLE": (
        _E,
        "At publish: the workflow's name or clinic_id holds a character the database's encoding cannot store.",
    ),
    "WF_INTERNAL_ERROR": (
        _E,
        "Validation itself failed; the workflow cannot be published until it is fixed.",
    ),
    "WF_NO_ACTIONS": (_W, "The workflow has no action: it never sends anything."),
    "TRIGGER_EVENT_UNSEEN": (
        _W,
        "At publish: the clinic's appointment_events hold none of the trigger's event, and types "
        "careflow does not know (spelt the clinic's system's way; told, not stored with the version).",
    ),
    "TRIGGER_TYPE_UNSEEN": (
        _W,
        "At publish: none of the clinic's events of the trigger's type is of an appointment of the "
        "types its filter lists (spelt the clinic's system's way; told, not stored with the version).",
    ),
    "TRIGGER_EVENTS_UNMATCHED": (
        _W,
        "At publish: none of the clinic's events of the trigger's type read names an appointment and "
        "a patient the clinic's data holds (its views hand out ids another way), so nobody would be "
        "enrolled (told, not stored with the version).",
    ),
    "TRIGGER_AGE_UNKNOWN": (
        _W,
        "At publish: the trigger filters by age and none of the clinic's patients read has a birth "
        "date careflow can read, so nobody would be enrolled (told, not stored with the version).",
    ),
    "ACTION_RECIPIENT_UNSEEN": (
        _W,
        "At publish: none of the clinic's patients read has a phone number (or an e-mail address) "
        "the action's channel can reach, so each of its messages would be skipped (told, not stored "
        "with the version).",
    ),
    "ACTION_CONSENT_UNSEEN": (
        _W,
        "At publish: none of the clinic's patients read consents to the action's purpose (care or "
        "marketing), so each of its messages would be skipped (told, not stored with the version).",
    ),
    "APPOINTMENT_STATUS_UNKNOWN": (
        _W,
        "At publish: the clinic's appointments hold statuses careflow does not know (spelt the "
        "clinic's system's way; told, not stored with the version).",
    ),
    "APPOINTMENT_TIMES_SHIFTED": (
        _W,
        "At publish: many (over 40 %) of the clinic's appointments fall at night on its clock as "
        "careflow reads their times, and nearly all in the daytime shifted by its UTC offset: wall "
        "times read as UTC (told, not stored with the version).",
    ),
    "WF_CLINIC_UNKNOWN": (
        _W,
        "At publish: the clinics careflow reads hold no clinic with the workflow's clinic_id (told, "
        "not stored with the version: the clinic's data may come later).",
    ),
    "WF_CLINIC_TIMEZONE_UNKNOWN": (
        _W,
        "At publish: the workflow's clinic has a timezone careflow does not know (KST), so the "
        "workflow's stands in for it (told, not stored with the version).",
    ),
    "WF_DRAFT_STOPS_ACTIVE": (
        _W,
        "At publish: a draft published over an active version stops the workflow (only an active "
        "one becomes a DAG; told with the result).",
    ),
    "FIELD_IGNORED": (_I, "Fields careflow does not know (and that are not builder UI fields) are ignored."),
    "DIAGNOSTICS_TRUNCATED": (_I, "Too many findings; only the first ones are listed."),
    # Nodes.
    "NODE_MALFORMED": (_E, "A node entry is not a JSON object."),
    "NODE_MISSING_ID": (_E, "A node has no id."),
    "NODE_BAD_ID": (
        _E,
        "A node id is not a valid id (letters, digits, '_', '.', '-'; max 64), or is careflow_wake.",
    ),
    "NODE_DUPLICATE_ID": (_E, "Two nodes share an id."),
    "NODE_MISSING_TYPE": (_E, "A node has no type."),
    "NODE_UNKNOWN_TYPE": (_E, "A node type is not trigger, action, condition, delay or timeWindow."),
    "NODE_MISSING_DATA": (_E, "A node has no data object."),
    "NODE_UNKNOWN_FIELD": (_E, "A node's data carries a field careflow does not know."),
    "NODE_BAD_FIELD": (_E, "A field of a node's data has the wrong type or an invalid value."),
    "NODE_UNREACHABLE": (_W, "The node cannot be reached from the trigger: it never runs."),
    "NODE_DEAD_END": (
        _W,
        "A trigger, delay, condition or time window leads nowhere: nothing happens after it.",
    ),
    # Trigger.
    "TRIGGER_MISSING": (_E, "The workflow has no trigger node."),
    "TRIGGER_MULTIPLE": (_E, "The workflow has more than one trigger node."),
    "TRIGGER_UNKNOWN_EVENT": (_E, "The trigger's event is not an appointment event careflow knows."),
    "TRIGGER_BAD_SCHEDULE": (
        _E,
        "The schedule is not @hourly, @daily, @weekly, @monthly or a 5-field cron (without random R or hashed H).",
    ),
    "TRIGGER_BAD_FILTER": (
        _E,
        "A trigger filter is invalid (wrong type, empty list, min_age above max_age).",
    ),
    "TRIGGER_HAS_INCOMING": (_E, "An edge leads into the trigger."),
    "LATENESS_BELOW_SCHEDULE": (
        _W,
        "An action's max_lateness is shorter than the time between runs: a send that misses one run expires.",
    ),
    # Edges and the graph.
    "EDGE_MALFORMED": (_E, "An edge entry is not a JSON object."),
    "EDGE_BAD_FIELD": (_E, "An edge lacks id, source or target, or one of its fields is not valid text."),
    "EDGE_DUPLICATE_ID": (_E, "Two edges share an id."),
    "EDGE_UNKNOWN_SOURCE": (_E, "An edge starts at a node that does not exist."),
    "EDGE_UNKNOWN_TARGET": (_E, "An edge ends at a node that does not exist."),
    "EDGE_SELF_LOOP": (_E, "An edge connects a node to itself."),
    "DUPLICATE_EDGE": (_E, "Two edges connect the same nodes from the same handle."),
    "GRAPH_CYCLE": (_E, "The edges form a cycle; workflows must flow one way."),
    # Conditions.
    "CONDITION_BAD_GROUP": (_E, "A condition or rule group needs exactly one non-empty 'all' or 'any' list."),
    "CONDITION_BAD_RULE": (_E, "A rule is not an object with 'field', 'op' and (usually) 'value'."),
    "CONDITION_UNKNOWN_OPERATOR": (
        _E,
        "A rule's op is not eq, ne, gt, gte, lt, lte, in, not_in, exists, contains.",
    ),
    "CONDITION_UNKNOWN_FIELD": (_E, "A rule's field is not a known fact."),
    "CONDITION_BAD_VALUE": (_E, "A rule's value does not fit its operator or its fact."),
    "CONDITION_MISSING_HANDLE": (_E, "An edge leaves a condition without sourceHandle true or false."),
    "CONDITION_BAD_HANDLE": (_E, "An edge leaves a condition on a handle other than true or false."),
    "CONDITION_BRANCH_EMPTY": (_I, "A condition has no edge on its true or its false handle."),
    "CONDITION_REDUNDANT": (
        _W,
        "Both branches of a condition lead to exactly the same steps: the condition changes nothing.",
    ),
    # Delays.
    "DELAY_BAD_DURATION": (_E, "A delay needs amount and unit, or until; amount is a whole number 0-3650."),
    "DELAY_BAD_UNIT": (_E, "A delay's unit is not minutes, hours, days or weeks."),
    "DELAY_BAD_TIME": (
        _E,
        "A delay's 'at' is not a time of day HH:MM, or is set on a wait in minutes or hours.",
    ),
    "DELAY_BAD_UNTIL": (_E, "A delay's 'until' is not an appointment time careflow knows."),
    "DELAY_BAD_OFFSET": (_E, "A delay's offset is not {amount, unit} with a whole amount -3650..3650."),
    "DELAY_ZERO": (_W, "A delay of zero waits for nothing."),
    "DELAYS_MERGEABLE": (
        _W,
        "Two duration delays follow each other with nothing between: one delay would do.",
    ),
    "DELAY_EXCEEDS_RETENTION": (_W, "The waits up to this delay are longer than settings.retention_days."),
    "DELAY_UNTIL_PAST": (
        _W,
        "A delay waits until a time that has passed, or with 'at' may have passed, when the trigger "
        "event enrolls the patient; for a day before it, every patient leaves there.",
    ),
    # Time windows.
    "WINDOW_BAD_TIME": (_E, "A time window's start or end is not a time of day HH:MM."),
    "WINDOW_BAD_DAY": (_E, "A time window's days are not a list of mon..sun."),
    "WINDOW_BAD_TIMEZONE": (_E, "A time window's timezone is not a known IANA timezone."),
    "WINDOW_NEVER_OPENS": (_W, "A time window has no days, or starts when it ends: it never opens."),
    # Actions.
    "ACTION_UNKNOWN_CHANNEL": (_E, "An action's channel is not sms, lms, kakao or email."),
    "ACTION_BAD_PURPOSE": (_E, "An action's purpose is not care or marketing."),
    "ACTION_EMAIL_SUBJECT_MISSING": (_E, "An email action has no subject."),
    "ACTION_SUBJECT_IGNORED": (_W, "A subject is set on a channel that has none (only email has a subject)."),
    "ACTION_TEMPLATE_MISSING": (_E, "An action has no message template."),
    # ACTION_TEMPLATE_*: the template checker's (careflow.templates) TEMPLATE_* codes, renamed.
    "ACTION_TEMPLATE_SYNTAX": (_E, "A message template (or subject) has a template syntax error."),
    "ACTION_TEMPLATE_UNSAFE": (
        _E,
        "A template uses something message templates may not (internals, arithmetic…).",
    ),
    "ACTION_TEMPLATE_UNKNOWN_VARIABLE": (_E, "A template uses a variable that is not a known fact."),
    "ACTION_TEMPLATE_CHANNEL_LIMIT": (
        _E,
        "The rendered message is too long for its channel (SMS: 90 bytes).",
    ),
    "ACTION_TEMPLATE_EMPTY": (_E, "The template renders an empty message."),
    "ACTION_TEMPLATE_INVALID": (
        _E,
        "The template checker refused a template for another reason (code in the message).",
    ),
    "ACTIONS_CHAINED": (
        _W,
        "Two actions follow each other with no wait between: they could run in parallel.",
    ),
    "MARKETING_WITHOUT_WINDOW": (
        _W,
        "A marketing action is not right behind a time window: at night (21:00-08:00) it is held "
        "until 08:00 for patients without night consent.",
    ),
    "MARKETING_WINDOW_AT_NIGHT": (
        _W,
        "A marketing action's time window is open during quiet hours (21:00-08:00), when it is held "
        "until 08:00 for patients without night consent.",
    ),
}


def make(
    code: str,
    message: str,
    *,
    node_id: str | None = None,
    edge_id: str | None = None,
    field: str | None = None,
) -> Diagnostic:
    """A diagnostic whose severity comes from the registry (KeyError on an unregistered code).

    Text from the workflow that UTF-8 cannot write (a lone surrogate in a label or a field name)
    is kept as a ``\\ud83d`` escape, so a report can always be printed, sent and stored.
    """
    severity, _ = CODES[code]
    return Diagnostic(
        severity,
        code,
        _writable(message),
        node_id=_writable(node_id),
        edge_id=_writable(edge_id),
        field=_writable(field),
    )


def _writable(text: Any) -> Any:
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(text, str) else text
