"""The facts conditions and templates may use, and a sample context to check templates against.

A fact is a dotted name (``patient.age``). ``patient.attributes.<key>`` and
``appointment.attributes.<key>`` reach the clinic's free-form JSON attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fact:
    """One fact: its type (for operator checks) and whether it is personal data."""

    name: str
    type: str  # "string", "number", "boolean", "datetime", "date", "list"
    description: str
    personal: bool = False


FACTS: dict[str, Fact] = {
    f.name: f
    for f in (
        Fact("patient.id", "string", "Patient id"),
        Fact("patient.name", "string", "Patient name", personal=True),
        Fact("patient.phone", "string", "Mobile number", personal=True),
        Fact("patient.email", "string", "Email address", personal=True),
        Fact("patient.birth_date", "date", "Birth date", personal=True),
        Fact("patient.age", "number", "Age in whole years today (derived)"),
        Fact("patient.timezone", "string", "Patient timezone (the clinic's when unset)"),
        Fact("patient.own_timezone", "string", "The patient's own timezone (empty when unset)"),
        Fact("patient.consent_messages", "boolean", "Consents to care messages"),
        Fact("patient.consent_marketing", "boolean", "Consents to marketing messages"),
        Fact("patient.consent_night_marketing", "boolean", "Consents to marketing at night"),
        Fact(
            "patient.has_upcoming_appointment",
            "boolean",
            "Has a scheduled appointment in the future (derived)",
        ),
        Fact(
            "patient.upcoming_appointment_count", "number", "Scheduled appointments in the future (derived)"
        ),
        Fact("appointment.id", "string", "Appointment id"),
        Fact("appointment.type", "string", "Appointment type, e.g. implant_surgery"),
        Fact("appointment.status", "string", "scheduled, completed, cancelled or no_show"),
        Fact("appointment.scheduled_at", "datetime", "When the appointment is (or was) scheduled"),
        Fact("appointment.created_at", "datetime", "When the appointment was booked"),
        Fact("appointment.completed_at", "datetime", "When the appointment was completed"),
        Fact("appointment.days_since_completed", "number", "Whole days since completion (derived)"),
        Fact("clinic.id", "string", "Clinic id"),
        Fact("clinic.name", "string", "Clinic name"),
        Fact("clinic.phone", "string", "Clinic phone number"),
        Fact("clinic.timezone", "string", "Clinic timezone"),
        Fact("event.type", "string", "The trigger event type"),
        Fact("event.occurred_at", "datetime", "When the trigger event occurred"),
    )
}

ATTRIBUTE_PREFIXES = ("patient.attributes.", "appointment.attributes.")


def is_known_fact(name: str) -> bool:
    """True when ``name`` is a fact conditions and templates may use."""
    if name in FACTS:
        return True
    for prefix in ATTRIBUTE_PREFIXES:
        key = name[len(prefix) :] if name.startswith(prefix) else ""
        if key and all(part.isidentifier() for part in key.split(".")):
            return True
    return False


def fact_type(name: str) -> str | None:
    """The declared type of a fact (None for free-form attributes)."""
    fact = FACTS.get(name)
    return fact.type if fact else None


def sample_context() -> dict[str, Any]:
    """A complete, realistic context: templates are rendered against it at publish time."""
    from datetime import date, datetime, timezone

    when = datetime(2026, 3, 14, 1, 30, tzinfo=timezone.utc)
    return {
        "patient": {
            "id": "p-0001",
            "name": "김민지",
            "phone": "010-1234-5678",
            "email": "minji@example.com",
            "birth_date": date(1990, 5, 17),
            "age": 35,
            "timezone": "Asia/Seoul",
            "own_timezone": None,
            "consent_messages": True,
            "consent_marketing": True,
            "consent_night_marketing": False,
            "has_upcoming_appointment": False,
            "upcoming_appointment_count": 0,
            "attributes": {},
        },
        "appointment": {
            "id": "a-0001",
            "type": "implant_surgery",
            "status": "completed",
            "scheduled_at": when,
            "created_at": when,
            "completed_at": when,
            "days_since_completed": 3,
            "attributes": {},
        },
        "clinic": {"id": "gangnam-01", "name": "강남 치과", "phone": "02-555-0101", "timezone": "Asia/Seoul"},
        "event": {"type": "appointment_completed", "occurred_at": when},
    }
