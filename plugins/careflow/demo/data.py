"""Demo clinic data: a few hundred synthetic patients and a month of appointments and events.

Deterministic (seeded): the same call always produces the same clinic. Names and numbers are
synthetic; 555 numbers are reserved for fiction.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine

from careflow.store import tables

CLINIC = {"id": "gangnam-01", "name": "강남 미소 치과", "phone": "02-555-0101", "timezone": "Asia/Seoul"}
SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
GIVEN = [
    "민준",
    "서연",
    "도윤",
    "지우",
    "하준",
    "서윤",
    "은우",
    "지아",
    "시우",
    "하윤",
    "예준",
    "수아",
    "지호",
    "채원",
]
TYPES = [
    ("checkup", 0.35),
    ("scaling", 0.25),
    ("implant_surgery", 0.12),
    ("consultation", 0.18),
    ("orthodontics", 0.10),
]
KST = timezone(timedelta(hours=9))


def _pick_type(rng: random.Random) -> str:
    roll, acc = rng.random(), 0.0
    for name, weight in TYPES:
        acc += weight
        if roll <= acc:
            return name
    return TYPES[-1][0]


def generate(
    start: date, *, patients: int = 300, days: int = 30, seed: int = 7
) -> dict[str, list[dict[str, Any]]]:
    """Rows for the four clinic tables, around ``start`` (a week before it to ``days`` after)."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {
        "clinics": [CLINIC],
        "patients": [],
        "appointments": [],
        "appointment_events": [],
    }
    for i in range(patients):
        pid = f"p{i:04d}"
        has_phone = rng.random() > 0.04
        out["patients"].append(
            {
                "id": pid,
                "clinic_id": CLINIC["id"],
                "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
                "phone": f"010-555{rng.randint(0, 9)}-{rng.randint(0, 9999):04d}" if has_phone else None,
                "email": f"patient{i:04d}@example.com" if rng.random() > 0.3 else None,
                "birth_date": date(rng.randint(1945, 2012), rng.randint(1, 12), rng.randint(1, 28)),
                "timezone": None,
                "consent_messages": rng.random() > 0.05,
                "consent_marketing": rng.random() > 0.6,
                "consent_night_marketing": False,
                "attributes": {"first_visit": i % 7 == 0, "vip": i % 13 == 0},
            }
        )
    day0 = datetime(start.year, start.month, start.day, tzinfo=KST) - timedelta(days=7)
    n = 0
    for patient in out["patients"]:
        for _ in range(rng.choice([1, 1, 1, 2])):
            n += 1
            aid = f"a{n:05d}"
            created = day0 + timedelta(days=rng.uniform(0, days + 7), hours=rng.uniform(9, 18) - 9)
            scheduled = created + timedelta(days=rng.randint(1, 10))
            scheduled = scheduled.replace(
                hour=rng.randint(9, 17), minute=rng.choice([0, 30]), second=0, microsecond=0
            )
            kind = _pick_type(rng)
            roll = rng.random()
            status = "scheduled"
            if roll < 0.08:
                status = "cancelled"
            elif roll < 0.16:
                status = "no_show"
            elif roll < 0.9:
                status = "completed"
            completed = scheduled + timedelta(minutes=rng.randint(30, 120)) if status == "completed" else None
            out["appointments"].append(
                {
                    "id": aid,
                    "patient_id": patient["id"],
                    "clinic_id": CLINIC["id"],
                    "type": kind,
                    "status": status,
                    "scheduled_at": scheduled,
                    "created_at": created,
                    "completed_at": completed,
                    "attributes": {},
                }
            )
            events: list[tuple[str, datetime]] = [("appointment_created", created)]
            if status == "completed":
                events.append(("appointment_completed", completed or scheduled))
            elif status == "no_show":
                events.append(("appointment_no_show", scheduled + timedelta(minutes=30)))
            elif status == "cancelled":
                events.append(("appointment_cancelled", created + (scheduled - created) / 2))
            for j, (etype, at) in enumerate(events):
                out["appointment_events"].append(
                    {
                        "id": f"{aid}-e{j}",
                        "appointment_id": aid,
                        "patient_id": patient["id"],
                        "clinic_id": CLINIC["id"],
                        "type": etype,
                        "occurred_at": at,
                    }
                )
    return out


def load(engine: Engine, data: dict[str, list[dict[str, Any]]], *, replace: bool = True) -> dict[str, int]:
    """Write the rows (replacing the clinic's earlier demo rows)."""
    order = ["clinics", "patients", "appointments", "appointment_events"]
    with engine.begin() as conn:
        if replace:
            for name in reversed(order):
                table = tables.metadata.tables[name]
                conn.execute(delete(table))
        for name in order:
            rows = data.get(name) or []
            if rows:
                conn.execute(tables.metadata.tables[name].insert(), rows)
    return {name: len(data.get(name) or []) for name in order}
