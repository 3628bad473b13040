"""Workflows to test with: a valid base and small helpers to break it in one place."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "include" / "workflows"
BROKEN = ROOT / "include" / "broken"
SCHEMA_FILE = ROOT / "include" / "schema" / "workflow.schema.json"
FIXTURES = Path(__file__).parent / "fixtures"

_BASE: dict[str, Any] = {
    "id": "implant-aftercare",
    "name": "임플란트 수술 후 관리",
    "clinic_id": "gangnam-01",
    "status": "active",
    "timezone": "Asia/Seoul",
    "settings": {"max_concurrency": 5, "node_timeout_seconds": 30, "retries": 3},
    "nodes": [
        {
            "id": "t1",
            "type": "trigger",
            "data": {
                "label": "수술 완료",
                "event": "appointment_completed",
                "filters": {"appointment_types": ["implant_surgery"]},
                "schedule": "@daily",
            },
        },
        {"id": "d1", "type": "delay", "data": {"label": "3일 대기", "amount": 3, "unit": "days"}},
        {
            "id": "c1",
            "type": "condition",
            "data": {
                "label": "후속 예약 없음",
                "all": [{"field": "patient.has_upcoming_appointment", "op": "eq", "value": False}],
            },
        },
        {
            "id": "w1",
            "type": "timeWindow",
            "data": {
                "label": "평일 근무시간",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "09:00",
                "end": "18:00",
            },
        },
        {
            "id": "a1",
            "type": "action",
            "data": {
                "label": "리마인드 알림톡",
                "channel": "kakao",
                "template": "{{ patient.name }}님, 수술 후 경과는 어떠신가요? 문의: {{ clinic.phone }}",
            },
        },
    ],
    "edges": [
        {"id": "e1", "source": "t1", "target": "d1"},
        {"id": "e2", "source": "d1", "target": "c1"},
        {"id": "e3", "source": "c1", "target": "w1", "sourceHandle": "true"},
        {"id": "e4", "source": "w1", "target": "a1"},
    ],
}


def base() -> dict[str, Any]:
    """A fresh copy of a valid workflow (trigger → 3 days → condition → window → kakao)."""
    return copy.deepcopy(_BASE)


def node(workflow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The node dict with this id."""
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def data(workflow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """The data dict of the node with this id."""
    return node(workflow, node_id)["data"]


def edge(workflow: dict[str, Any], edge_id: str) -> dict[str, Any]:
    """The edge dict with this id."""
    return next(e for e in workflow["edges"] if e["id"] == edge_id)


def load(path: Path) -> dict[str, Any]:
    """A JSON file as a dict."""
    return json.loads(path.read_text(encoding="utf-8"))


def chain(count: int) -> dict[str, Any]:
    """A workflow of ``count`` nodes: a trigger then delays in a line (valid shape, large)."""
    workflow = base()
    workflow["nodes"] = [node(workflow, "t1")] + [
        {"id": f"n{i}", "type": "delay", "data": {"amount": 1, "unit": "hours"}} for i in range(1, count)
    ]
    names = ["t1"] + [f"n{i}" for i in range(1, count)]
    workflow["edges"] = [
        {"id": f"e{i}", "source": a, "target": b}
        for i, (a, b) in enumerate(zip(names, names[1:], strict=False))
    ]
    return workflow
