"""What the end-to-end runs send: small workflows and clinic data relative to the real now.

Every cohort knows, per patient, what careflow must do (send, or record a reason), so a test can
compare the provider's messages with exactly the expected idempotency keys.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from careflow.engine.actions import idempotency_key
from careflow.engine.nodes import execution_id_for
from careflow.store import tables

CLINIC = {"id": "gangnam-01", "name": "강남 미소 치과", "phone": "02-555-0101", "timezone": "Asia/Seoul"}
SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
GIVEN = ["민준", "서연", "도윤", "지우", "하준", "서윤", "은우", "지아", "시우", "하윤", "예준", "수아"]

BOOKING = {
    "id": "e2e-booking",
    "name": "예약 접수 안내",
    "clinic_id": CLINIC["id"],
    "status": "active",
    "timezone": "Asia/Seoul",
    "settings": {"retries": 2, "retry_delay_seconds": 5},
    "nodes": [
        {
            "id": "booked",
            "type": "trigger",
            "data": {"label": "예약 생성", "event": "appointment_created", "schedule": "@daily"},
        },
        {
            "id": "notice",
            "type": "action",
            "data": {
                "label": "접수 안내 문자",
                "channel": "lms",
                "template": "{{ patient.name }}님, {{ clinic.name }} 예약이 접수되었습니다. "
                "받는 번호 {{ patient.phone }}, 문의 {{ clinic.phone }}",
            },
        },
    ],
    "edges": [{"id": "e1", "source": "booked", "target": "notice"}],
}

AFTERCARE = {
    "id": "e2e-aftercare",
    "name": "진료 후 안부",
    "clinic_id": CLINIC["id"],
    "status": "active",
    "timezone": "Asia/Seoul",
    "settings": {"retries": 2, "retry_delay_seconds": 5},
    "nodes": [
        {
            "id": "done",
            "type": "trigger",
            "data": {"label": "진료 완료", "event": "appointment_completed", "schedule": "@daily"},
        },
        {"id": "wait", "type": "delay", "data": {"label": "1분 대기", "amount": 1, "unit": "minutes"}},
        {
            "id": "still_completed",
            "type": "condition",
            "data": {
                "label": "진료 완료 상태",
                "all": [{"field": "appointment.status", "op": "eq", "value": "completed"}],
            },
        },
        {
            "id": "ask",
            "type": "action",
            "data": {
                "label": "안부 알림톡",
                "channel": "kakao",
                "template": "{{ patient.name }}님, 진료 후 불편하신 점은 없으신가요? 문의 {{ clinic.phone }}",
            },
        },
    ],
    "edges": [
        {"id": "e1", "source": "done", "target": "wait"},
        {"id": "e2", "source": "wait", "target": "still_completed"},
        {"id": "e3", "source": "still_completed", "target": "ask", "sourceHandle": "true"},
    ],
}

WORKFLOWS = (BOOKING, AFTERCARE)


def write_workflows(target: Path, docs: tuple[dict[str, Any], ...] = WORKFLOWS) -> list[Path]:
    """The workflow documents as files to publish."""
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in docs:
        path = target / f"{doc['id']}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def dag_id(doc: dict[str, Any]) -> str:
    return f"careflow__{doc['id']}"


@dataclass
class Cohort:
    """Patients enrolled by one trigger event each, and what careflow must do for each of them.

    ``expect`` maps patient id to ``"sent"`` or the ledger status and reason it must record
    (``"skipped:no_consent_messages"``), or ``"none"`` when no message may even be considered.
    """

    workflow: dict[str, Any]
    action: str
    prefix: str
    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"patients": [], "appointments": [], "appointment_events": []}
    )
    expect: dict[str, str] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(11))

    def add(
        self,
        n: int,
        *,
        event: str,
        at: datetime,
        expect: str = "sent",
        status: str = "completed",
        **patient: Any,
    ) -> list[str]:
        """``n`` patients whose appointment had ``event`` at ``at``."""
        ids = []
        for _ in range(n):
            i = len(self.rows["patients"])
            pid = f"{self.prefix}{i:03d}"
            row = {
                "id": pid,
                "clinic_id": CLINIC["id"],
                "name": self.rng.choice(SURNAMES) + self.rng.choice(GIVEN) + self.rng.choice(GIVEN)[0],
                "phone": f"010-{5550 + self.rng.randint(0, 9)}-{self.rng.randint(0, 9999):04d}",
                "email": None,
                "birth_date": date(1970 + i % 40, 1 + i % 12, 1 + i % 28),
                "timezone": None,
                "consent_messages": True,
                "consent_marketing": False,
                "consent_night_marketing": False,
                "attributes": {},
            }
            row.update(patient)
            aid, eid = f"{pid}-a", f"{pid}-e"
            self.rows["patients"].append(row)
            self.rows["appointments"].append(
                {
                    "id": aid,
                    "patient_id": pid,
                    "clinic_id": CLINIC["id"],
                    "type": "checkup",
                    "status": status,
                    "scheduled_at": at + timedelta(days=3) if event == "appointment_created" else at,
                    "created_at": at if event == "appointment_created" else at - timedelta(days=7),
                    "completed_at": at if status == "completed" else None,
                    "attributes": {},
                }
            )
            self.rows["appointment_events"].append(
                {
                    "id": eid,
                    "appointment_id": aid,
                    "patient_id": pid,
                    "clinic_id": CLINIC["id"],
                    "type": event,
                    "occurred_at": at,
                }
            )
            self.expect[pid] = expect
            self.events[pid] = eid
            ids.append(pid)
        return ids

    def load(self, engine: Engine) -> None:
        """Insert the clinic (once) and the cohort's rows."""
        with engine.begin() as conn:
            c = tables.metadata.tables["clinics"]
            if conn.execute(select(c.c.id).where(c.c.id == CLINIC["id"])).first() is None:
                conn.execute(c.insert(), [CLINIC])
            for name in ("patients", "appointments", "appointment_events"):
                conn.execute(tables.metadata.tables[name].insert(), self.rows[name])

    def key(self, pid: str) -> str:
        """The idempotency key careflow must use for this patient's message."""
        return idempotency_key(execution_id_for(self.workflow["id"], self.events[pid]), self.action)

    def expected_keys(self) -> set[str]:
        return {self.key(pid) for pid, what in self.expect.items() if what == "sent"}

    def names(self) -> set[str]:
        return {p["name"] for p in self.rows["patients"]}

    def phones(self) -> set[str]:
        return {p["phone"] for p in self.rows["patients"] if p["phone"]}

    def ledger(self, engine: Engine) -> dict[str, dict[str, Any]]:
        """The cohort's ledger rows by patient id."""
        m = tables.messages
        with engine.connect() as conn:
            rows = conn.execute(select(m).where(m.c.workflow_id == self.workflow["id"])).mappings()
            by_key = {r["idempotency_key"]: dict(r) for r in rows}
        return {pid: by_key[self.key(pid)] for pid in self.expect if self.key(pid) in by_key}


def e164(phone: str) -> str:
    """A Korean mobile number as the provider receives it."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    return "+82" + digits[1:]


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
