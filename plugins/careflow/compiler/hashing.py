"""Content hash of a workflow: what has meaning, canonically serialised (UI fields excluded)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from careflow.workflow.models import Workflow


def canonical_document(workflow: Workflow) -> dict[str, Any]:
    """The workflow as JSON-able data, without UI-only fields, with defaults filled in."""
    return workflow.model_dump(mode="json", exclude_none=False)


def content_hash(workflow: Workflow) -> str:
    """sha256 of the canonical document; publishing the same content twice gives the same hash."""
    data = json.dumps(canonical_document(workflow), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
