"""The published JSON Schema of a stored workflow, generated from the pydantic models.

The builder checks drafts against it; ``careflow schema`` prints it and
``include/schema/workflow.schema.json`` is the committed copy. The schema covers the shape;
the graph rules (one trigger, no cycles, condition handles…) are :mod:`careflow.workflow.validation`'s.
"""

from __future__ import annotations

import json
from typing import Any

from careflow.workflow.models import SCHEMA_VERSION, Workflow

SCHEMA_ID = f"https://careflow.dev/schema/workflow/{SCHEMA_VERSION}.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a workflow, with ``$id``, title and version."""
    schema = Workflow.model_json_schema()
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
