"""The published JSON Schema of a stored workflow, generated from the pydantic models.

The builder checks drafts against it; ``careflow schema`` prints it and
``include/schema/workflow.schema.json`` is the committed copy. The schema covers the shape,
with the rules across fields that the models check in Python (:data:`SHAPE_RULES`) and the
reserved node ids; values checked by a lookup (timezones, cron expressions, facts, templates) and
the graph rules (one trigger, no cycles, condition handles…) are :mod:`careflow.workflow.validation`'s.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from careflow.workflow.models import SCHEMA_VERSION, Workflow
from careflow.workflow.validation import RESERVED_NODE_IDS

SCHEMA_ID = f"https://careflow.dev/schema/workflow/{SCHEMA_VERSION}.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _one_rule_list(key: str, other: str) -> dict[str, Any]:
    non_empty = {"type": "array", "minItems": 1}
    return {"required": [key], "properties": {key: non_empty, other: {"type": "null"}}}


#: Rules of a definition's fields taken together (pydantic's schema has each field alone), by
#: ``$defs`` name; each is added to the definition's ``allOf``. Null counts as absent, as in Python.
SHAPE_RULES: dict[str, list[dict[str, Any]]] = {
    "ConditionData": [
        {
            "description": "Exactly one non-empty list of rules: 'all' (every rule must hold) or 'any'.",
            "oneOf": [_one_rule_list("all", "any"), _one_rule_list("any", "all")],
        }
    ],
    "RuleGroup": [
        {
            "description": "Exactly one non-empty list of rules: 'all' or 'any'.",
            "oneOf": [_one_rule_list("all", "any"), _one_rule_list("any", "all")],
        }
    ],
    "ActionData": [
        {
            "description": "An email needs a subject that is not blank.",
            "if": {"required": ["channel"], "properties": {"channel": {"const": "email"}}},
            "then": {
                "required": ["subject"],
                "properties": {"subject": {"type": "string", "pattern": "\\S"}},
            },
        }
    ],
    "DelayData": [
        {
            "description": "A delay is a duration (amount and unit) or 'until' an appointment time (with an "
            "optional offset), not both.",
            "oneOf": [
                {
                    "required": ["amount", "unit"],
                    "properties": {
                        "amount": {"type": "integer"},
                        "unit": {"type": "string"},
                        "until": {"type": "null"},
                        "offset": {"type": "null"},
                    },
                },
                {
                    "required": ["until"],
                    "properties": {
                        "until": {"type": "string"},
                        "amount": {"type": "null"},
                        "unit": {"type": "null"},
                    },
                },
            ],
        }
    ],
}


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a workflow, with ``$id``, title and version."""
    schema = Workflow.model_json_schema()
    definitions = schema["$defs"]
    for name, rules in SHAPE_RULES.items():
        definitions[name].setdefault("allOf", []).extend(copy.deepcopy(rules))
    for name, definition in definitions.items():
        if name.endswith("Node"):  # the ids of the tasks careflow adds to every workflow's DAG
            definition["properties"]["id"]["not"] = {"enum": sorted(RESERVED_NODE_IDS)}
    schema["$schema"] = DIALECT
    schema["$id"] = SCHEMA_ID
    schema["title"] = "careflow workflow"
    schema["version"] = SCHEMA_VERSION
    schema["description"] = (
        "A patient-messaging workflow as the visual builder exports it (React Flow toObject() plus "
        "careflow's fields). UI-only fields such as position, measured or viewport are allowed and ignored."
    )
    return schema


def schema_text() -> str:
    """The schema as committed: indented, keys sorted, non-ASCII kept, trailing newline."""
    return json.dumps(workflow_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
