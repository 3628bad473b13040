"""What the clinic's data says of a published workflow, as careflow reads it (docs/contracts.md §2).

Where it does not match what the workflow enrolls and decides by (its clinic, the trigger's events
and appointment types spelt the clinic's system's way, no birth dates for an age filter,
appointment statuses or a timezone careflow does not know), the workflow does nothing, or the wrong
thing, without a word. ``careflow workflows publish`` tells these with its result (they are not
stored with the version: the data may be mended), and ``careflow check`` tells them again as the
data is now.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, type_coerce
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import NullType

from careflow.engine.facts_builder import as_date, known_timezone
from careflow.store import tables
from careflow.store.db import database_name
from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.models import APPOINTMENT_STATUSES, TRIGGER_EVENTS, Workflow


@dataclass(frozen=True)
class Reads:
    """What a workflow reads of the clinic's data: its clinic, its trigger's (``trigger_id``) event
    and appointment ``types`` (any when empty), whether it enrolls patients of an age (``ages``),
    and the timezone that stands in for the clinic's (the workflow's)."""

    clinic_id: str
    event: str
    trigger_id: str
    timezone: str
    types: tuple[str, ...] = ()
    ages: bool = False

    @classmethod
    def of(cls, workflow: Workflow) -> Reads:
        trigger = workflow.trigger
        filters = trigger.data.filters
        return cls(
            workflow.clinic_id,
            trigger.data.event,
            trigger.id,
            workflow.timezone,
            tuple(filters.appointment_types or ()),
            filters.min_age is not None or filters.max_age is not None,
        )


def clinic_data_unmatched(engine: Engine, reads: Reads) -> list[Diagnostic]:
    """Warnings where the clinic's data does not match what a workflow ``reads``: no such clinic, no
    event of its trigger's type among event types careflow does not know, none of those events of
    an appointment of its types, or no patient's birth date to tell an age by. Written another way
    than the clinic's data has it, a workflow enrolls nobody, silently. And where the clinic's
    timezone is a name careflow does not know, so that the workflow's stands in for it, or its
    appointments' statuses are spelt otherwise. None where the data cannot be read (the run says
    why)."""
    clinic_id, trigger_id = reads.clinic_id, reads.trigger_id
    try:
        with engine.connect() as conn:
            return [
                told
                for told in (
                    _clinic_unknown(conn, clinic_id, database_name(engine), reads.timezone),
                    _event_unseen(conn, clinic_id, reads.event, trigger_id)
                    or _types_unseen(conn, clinic_id, reads.event, trigger_id, reads.types),
                    _statuses_unknown(conn, clinic_id),
                    _birth_dates_unseen(conn, clinic_id, trigger_id) if reads.ages else None,
                )
                if told is not None
            ]
    except DBAPIError:
        return []


def _some(values: list[Any], shown: int = 5) -> str:
    return ", ".join(map(str, values[:shown])) + (" and more" if len(values) > shown else "")


def _clinic_unknown(conn: Connection, clinic_id: str, database: str, timezone_name: str) -> Diagnostic | None:
    """No clinic ``clinic_id``; or, one read of its row, its timezone a name careflow does not know."""
    c = tables.clinics
    found = conn.execute(select(c.c.timezone).where(c.c.id == clinic_id)).first()
    if found is not None:
        return _clinic_timezone_unknown(clinic_id, found.timezone, timezone_name)
    ids = list(conn.execute(select(c.c.id).order_by(c.c.id).limit(6)).scalars())
    return make(
        "WF_CLINIC_UNKNOWN",
        f"No clinic {clinic_id} in the clinics table of {database} "
        f"({f'it holds {_some(ids)}' if ids else 'it holds none yet'}): the trigger enrolls the events "
        f"of clinic {clinic_id}; check the workflow's clinic_id against the clinic's data",
        field="clinic_id",
    )


def _clinic_timezone_unknown(clinic_id: str, named: Any, timezone_name: str) -> Diagnostic | None:
    if not isinstance(named, str) or not named.strip() or known_timezone(named) is not None:
        return None  # known, or none at all (the workflow's, as documented)
    return make(
        "WF_CLINIC_TIMEZONE_UNKNOWN",
        f"Clinic {clinic_id}'s timezone in the clinics table, {named!r}, is not a timezone careflow "
        f"knows: its patients without a timezone of their own are timed by the workflow's, "
        f"{timezone_name} (their ages, days and windows); write an IANA name such as 'Asia/Seoul' "
        "in the clinic's data",
        field="clinic_id",
    )


def _event_unseen(conn: Connection, clinic_id: str, event: str, trigger_id: str) -> Diagnostic | None:
    # The first read goes through the events' (clinic, type, time) index; the second only where
    # the clinic has none of the trigger's events, which is where its types say why.
    e = tables.appointment_events
    mine = e.c.clinic_id == clinic_id
    if conn.execute(select(e.c.id).where(mine, e.c.type == event).limit(1)).first() is not None:
        return None
    unknown = list(
        conn.execute(
            select(e.c.type)
            .where(mine, e.c.type.not_in(TRIGGER_EVENTS))
            .distinct()
            .order_by(e.c.type)
            .limit(6)
        ).scalars()
    )
    if not unknown:  # none of this kind yet (no no-shows), or no events at all yet
        return None
    return make(
        "TRIGGER_EVENT_UNSEEN",
        f"The clinic's appointment_events hold no {event} event of clinic {clinic_id}, and "
        f"types careflow does not know: {_some(unknown)}. The trigger enrolls {event} events: map the "
        "clinic's types to careflow's in the view careflow reads (docs/contracts.md §2)",
        node_id=trigger_id,
        field="data.event",
    )


def _types_unseen(
    conn: Connection, clinic_id: str, event: str, trigger_id: str, types: tuple[str, ...]
) -> Diagnostic | None:
    # Through the events' (clinic, type, time) index to each event's appointment: only where the
    # clinic has the trigger's events, none of them of an appointment of the types it enrolls.
    if not types:
        return None
    e, a = tables.appointment_events, tables.appointments
    theirs = (
        select(a.c.type)
        .select_from(e.join(a, a.c.id == e.c.appointment_id))
        .where(e.c.clinic_id == clinic_id, e.c.type == event)
    )
    if conn.execute(theirs.where(a.c.type.in_(types)).limit(1)).first() is not None:
        return None
    seen = list(conn.execute(theirs.distinct().order_by(a.c.type).limit(6)).scalars())
    if not seen:  # none of the trigger's events yet (or none joined to its appointment)
        return None
    return make(
        "TRIGGER_TYPE_UNSEEN",
        f"None of the clinic's {event} events of clinic {clinic_id} is of an appointment of type "
        f"{', '.join(types)}: their appointments are of types {_some(seen)}. The trigger enrolls "
        "the appointments of the types it lists alone: spell them as the clinic's data does",
        node_id=trigger_id,
        field="data.filters.appointment_types",
    )


#: The patients of a clinic whose birth dates are looked at, through its patients' clinic index.
BIRTH_DATE_SAMPLE = 1000


def _birth_dates_unseen(conn: Connection, clinic_id: str, trigger_id: str) -> Diagnostic | None:
    p = tables.patients
    # as stored: a view may hand out text, and one readable date is enough
    dates = list(
        conn.execute(
            select(type_coerce(p.c.birth_date, NullType()))
            .where(p.c.clinic_id == clinic_id)
            .limit(BIRTH_DATE_SAMPLE)
        ).scalars()
    )
    if not dates:
        return None  # no patients yet
    for value in dates:
        with suppress(ValueError):
            if as_date(value) is not None:
                return None
    return make(
        "TRIGGER_AGE_UNKNOWN",
        f"The trigger enrolls patients of an age, and none of clinic {clinic_id}'s patients (of the "
        f"first {BIRTH_DATE_SAMPLE:,} read) has a birth date careflow can read: a patient without "
        "one is never enrolled, so nobody would be; give the view careflow reads the clinic's birth "
        "dates (docs/contracts.md §2), or drop the age filter",
        node_id=trigger_id,
        field="data.filters",
    )


#: The appointments of a clinic whose statuses are looked at: the clinic's data has no index on
#: its appointments' clinic, and a status spelt its system's way is in most of them.
STATUS_SAMPLE = 1000


def _statuses_unknown(conn: Connection, clinic_id: str) -> Diagnostic | None:
    a = tables.appointments
    seen = set(
        conn.execute(select(a.c.status).where(a.c.clinic_id == clinic_id).limit(STATUS_SAMPLE)).scalars()
    )
    unknown = sorted(str(status) for status in seen if status not in APPOINTMENT_STATUSES)
    if not unknown:
        return None
    return make(
        "APPOINTMENT_STATUS_UNKNOWN",
        f"The clinic's appointments of clinic {clinic_id} hold statuses careflow does not know: "
        f"{_some(unknown)}. careflow reads {', '.join(APPOINTMENT_STATUSES)}: an upcoming appointment "
        "(patient.has_upcoming_appointment) is a scheduled one, and a condition on appointment.status "
        "compares with these; map the clinic's statuses in the view careflow reads (docs/contracts.md §2)",
        field="clinic_id",
    )
