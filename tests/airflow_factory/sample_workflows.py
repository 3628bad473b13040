"""Workflows for the factory tests: the examples plus extra shapes, and snapshots that do not load."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from support import EXAMPLES

#: Extra workflows derived from implant-aftercare: a cron schedule in another timezone with both
#: condition branches wired and its own settings, and a paused one.
BRANCHING = "branching-cron"
PAUSED = "paused-copy"
CORRUPT = "corrupt"
INVALID = "invalid-workflow"


def _implant() -> dict[str, Any]:
    return json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))


def branching_workflow() -> dict[str, Any]:
    """implant-aftercare with a cron schedule in New York, a false branch and custom settings."""
    doc = _implant()
    doc["id"] = BRANCHING
    doc["name"] = "Branching <b>cron</b> workflow"
    doc["timezone"] = "America/New_York"
    doc["settings"] = {
        "retries": 5,
        "retry_delay_seconds": 12,
        "task_timeout_seconds": 120,
        "max_concurrency": 7,
        "owner": "clinic-ops",
    }
    doc["nodes"][0]["data"]["schedule"] = "30 8 * * 1-5"
    doc["nodes"].append(
        {
            "id": "a2",
            "type": "action",
            "data": {"label": "예약 안내 SMS", "channel": "sms", "template": "{{ clinic.name }} 예약 안내"},
        }
    )
    doc["edges"].append({"id": "e5", "source": "c1", "target": "a2", "sourceHandle": "false"})
    return doc


def paused_workflow() -> dict[str, Any]:
    """implant-aftercare, paused."""
    doc = _implant()
    doc["id"] = PAUSED
    doc["status"] = "paused"
    return doc


def write_invalid_snapshot(workflows_dir: Path) -> Path:
    """A snapshot whose envelope is valid (and whose hash matches) but whose workflow is not."""
    doc = _implant()
    doc["id"] = INVALID
    doc["nodes"][1]["type"] = "teleport"
    digest = hashlib.sha256(
        json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    ).hexdigest()
    envelope = {
        "snapshot_format": 1,
        "workflow_id": INVALID,
        "version": 1,
        "content_hash": digest,
        "published_at": "2026-01-01T00:00:00+00:00",
        "start_date": "2026-01-01T00:00:00+00:00",
        "workflow": doc,
    }
    path = workflows_dir / f"{INVALID}.json"
    path.write_text(json.dumps(envelope, ensure_ascii=False), encoding="utf-8")
    return path


def publish_all(target: Path, sources: Path) -> list[dict[str, Any]]:
    """Publish every file of ``sources`` into ``target`` through careflow's publishing (SQLite)."""
    from careflow.publishing import publish_paths
    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    engine = get_engine(f"sqlite:///{target.parent / 'careflow.db'}")
    upgrade(engine)
    results = publish_paths(sorted(sources.glob("*.json")), engine=engine, workflows_dir=target)
    refused = [r.source for r in results if r.action != "published"]
    assert not refused, refused
    return [r.to_dict() for r in results]


def sources_by_id() -> dict[str, dict[str, Any]]:
    """The raw workflow documents the published dir was made from, by workflow id."""
    docs = {
        json.loads(p.read_text(encoding="utf-8"))["id"]: json.loads(p.read_text(encoding="utf-8"))
        for p in EXAMPLES.glob("*.json")
    }
    for doc in (branching_workflow(), paused_workflow()):
        docs[doc["id"]] = copy.deepcopy(doc)
    return docs
