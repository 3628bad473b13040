"""What the clinic's data says of a published workflow, as careflow reads it (docs/contracts.md §2).

Where it does not match what the workflow enrolls and decides by (its clinic, the trigger's events
and appointment types spelt the clinic's system's way, events whose appointment and patient it
does not hold, no birth dates for an age filter, no address its actions' channels can reach nor
consent to their purpose, appointment statuses or a timezone careflow does not know, appointment
times read hours off), the workflow does nothing, or the wrong thing, without a word. ``careflow
workflows publish`` tells these with its result (they are not stored with the version: the data
may be mended), and ``careflow check`` tells them again as the data is now.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, type_coerce
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import NullType

from careflow.engine.consent import check_consent
from careflow.engine.facts_builder import as_date, as_utc, known_timezone
from careflow.engine.recipients import PHONE_CHANNELS, recipient_for
from careflow.store import tables
from careflow.store.db import database_name
from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.models import APPOINTMENT_STATUSES, TRIGGER_EVENTS, ActionNode, Workflow
from careflow.workflow.timezones import zone


@dataclass(frozen=True)
class Reads:
    """What a workflow reads of the clinic's data: its clinic, its trigger's (``trigger_id``) event
    and appointment ``types`` (any when empty), whether it enrolls patients of an age (``ages``),
    the timezone that stands in for the clinic's (the workflow's), and its ``actions``."""

    clinic_id: str
    event: str
    trigger_id: str
    timezone: str
    types: tuple[str, ...] = ()
    ages: bool = False
    #: Each action's node id, channel and purpose.
    actions: tuple[tuple[str, str, str], ...] = ()

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
            tuple(
                (node.id, node.data.channel, node.data.purpose)
                for node in workflow.nodes
                if isinstance(node, ActionNode)
            ),
        )


def clinic_data_unmatched(engine: Engine, reads: Reads) -> list[Diagnostic]:
    """Warnings where the clinic's data does not match what a workflow ``reads``: no such clinic, no
    event of its trigger's type among event types careflow does not know, none of those events of
    an appointment of its types, or of an appointment and a patient it holds, or no patient's birth
    date to tell an age by. Written another way than the clinic's data has it, a workflow enrolls
    nobody, silently. No patient's address an action's channel can reach, nor consent to its
    purpose: its messages would all be skipped. And where the clinic's timezone is a name careflow
    does not know, so that the workflow's stands in for it, its appointments' statuses are spelt
    otherwise, or their times read hours off. None where the data cannot be read (the run says
    why)."""
    clinic_id, trigger_id = reads.clinic_id, reads.trigger_id
    try:
        with engine.connect() as conn:
            clinic = conn.execute(
                select(tables.clinics.c.timezone).where(tables.clinics.c.id == clinic_id)
            ).first()
            # Whose clock the clinic's patients are timed by, but for those with a timezone of their own.
            zone_name = (clinic and known_timezone(clinic.timezone)) or reads.timezone
            patients = _patients(conn, clinic_id) if reads.ages or reads.actions else []
            appointments = _appointments(conn, clinic_id)
            return [
                told
                for told in (
                    _clinic_unknown(conn, clinic_id, clinic, database_name(engine), reads.timezone),
                    _event_unseen(conn, clinic_id, reads.event, trigger_id)
                    or _types_unseen(conn, clinic_id, reads.event, trigger_id, reads.types),
                    _events_unmatched(conn, clinic_id, reads.event, trigger_id),
                    _statuses_unknown(appointments, clinic_id),
                    _times_shifted(appointments, clinic_id, zone_name),
                    _birth_dates_unseen(patients, clinic_id, trigger_id) if reads.ages else None,
                    *_addresses_unseen(patients, clinic_id, reads.actions),
                    *_consent_unseen(patients, clinic_id, reads.actions),
                )
                if told is not None
            ]
    except DBAPIError:
        return []


def _some(values: list[Any], shown: int = 5) -> str:
    return ", ".join(map(str, values[:shown])) + (" and more" if len(values) > shown else "")


def _clinic_unknown(
    conn: Connection, clinic_id: str, found: Row[Any] | None, database: str, timezone_name: str
) -> Diagnostic | None:
    """No clinic ``clinic_id`` (``found`` its row); or its timezone a name careflow does not know."""
    c = tables.clinics
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


#: The trigger's events of a clinic whose appointment and patient are looked for.
EVENT_SAMPLE = 1000


def _events_unmatched(conn: Connection, clinic_id: str, event: str, trigger_id: str) -> Diagnostic | None:
    """Where none of the clinic's events of the trigger's type (of the first :data:`EVENT_SAMPLE`,
    through the events' index) names an appointment and a patient the clinic's data holds: a view
    that hands out its ids another way than the events do. The enrollment's join leaves each out."""
    e, a, p = tables.appointment_events, tables.appointments, tables.patients
    events = (
        select(e.c.appointment_id, e.c.patient_id)
        .where(e.c.clinic_id == clinic_id, e.c.type == event)
        .limit(EVENT_SAMPLE)
        .subquery()
    )
    read, matched, appointments, patients = conn.execute(
        select(
            func.count(),
            func.count(case((and_(a.c.id.is_not(None), p.c.id.is_not(None)), 1))),
            func.count(a.c.id),
            func.count(p.c.id),
        ).select_from(
            events.outerjoin(a, a.c.id == events.c.appointment_id).outerjoin(p, p.c.id == events.c.patient_id)
        )
    ).one()
    if not read or matched:
        return None
    return make(
        "TRIGGER_EVENTS_UNMATCHED",
        f"None of clinic {clinic_id}'s {event} events (of the first {EVENT_SAMPLE:,} read, {read:,}) "
        f"names an appointment and a patient that the clinic's appointments and patients hold: "
        f"{read - appointments:,} name no appointment they hold, {read - patients:,} no patient. The "
        "trigger enrolls none of them: check that the views careflow reads hand out the same ids as "
        "its appointment_events (docs/contracts.md §2)",
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


#: The patients of a clinic whose birth dates and addresses are looked at, through its patients'
#: clinic index.
PATIENT_SAMPLE = 1000


def _patients(conn: Connection, clinic_id: str) -> list[dict[str, Any]]:
    """The birth date, phone, e-mail and consents of the first :data:`PATIENT_SAMPLE` patients of the
    clinic, as stored: a view may hand out text for a date, or a number for a phone."""
    p = tables.patients
    columns = (p.c.birth_date, p.c.phone, p.c.email, p.c.consent_messages, p.c.consent_marketing)
    rows = conn.execute(
        select(*(type_coerce(column, NullType()).label(column.name) for column in columns))
        .where(p.c.clinic_id == clinic_id)
        .limit(PATIENT_SAMPLE)
    )
    return [dict(row._mapping) for row in rows]


def _birth_dates_unseen(patients: list[dict[str, Any]], clinic_id: str, trigger_id: str) -> Diagnostic | None:
    if not patients:
        return None  # no patients yet
    for patient in patients:  # one readable date is enough
        with suppress(ValueError):
            if as_date(patient["birth_date"]) is not None:
                return None
    return make(
        "TRIGGER_AGE_UNKNOWN",
        f"The trigger enrolls patients of an age, and none of clinic {clinic_id}'s patients (of the "
        f"first {PATIENT_SAMPLE:,} read) has a birth date careflow can read: a patient without "
        "one is never enrolled, so nobody would be; give the view careflow reads the clinic's birth "
        "dates (docs/contracts.md §2), or drop the age filter",
        node_id=trigger_id,
        field="data.filters",
    )


def _addresses_unseen(
    patients: list[dict[str, Any]], clinic_id: str, actions: tuple[tuple[str, str, str], ...]
) -> list[Diagnostic]:
    """One warning for the actions on phone channels, one for those on e-mail, where none of the
    patients read has an address careflow can send them to: their messages would all be skipped."""
    if not patients:
        return []  # no patients yet
    told = []
    for field, address, example, addresses, channels in (
        ("phone", "a mobile number", " (+821012345678, 010-1234-5678)", "mobile numbers", PHONE_CHANNELS),
        ("email", "an e-mail address", "", "e-mail addresses", ("email",)),
    ):
        nodes = [(node_id, channel) for node_id, channel, _ in actions if channel in channels]
        if not nodes or any(recipient_for(nodes[0][1], patient) for patient in patients):
            continue
        written = sum(bool(str(patient[field] or "").strip()) for patient in patients)
        told.append(
            make(
                "ACTION_RECIPIENT_UNSEEN",
                f"None of clinic {clinic_id}'s patients (of the first {PATIENT_SAMPLE:,} read) has "
                f"{address} careflow can send to{example}: {written:,} {'has' if written == 1 else 'have'} "
                f"one careflow cannot read, {len(patients) - written:,} none. The messages of "
                f"{_actions(nodes)} would each be skipped (invalid_{field}, no_{field}): give the view "
                f"careflow reads the patients' {addresses} (docs/contracts.md §2)",
                node_id=nodes[0][0],
                field="data.channel",
            )
        )
    return told


def _consent_unseen(
    patients: list[dict[str, Any]], clinic_id: str, actions: tuple[tuple[str, str, str], ...]
) -> list[Diagnostic]:
    """One warning for the care actions, one for the marketing ones, where none of the patients
    read consents to their messages: each would be skipped."""
    if not patients:
        return []  # no patients yet
    told = []
    for purpose, field, default in (
        ("care", "consent_messages", "true"),
        ("marketing", "consent_marketing", "false"),
    ):
        nodes = [(node_id, channel) for node_id, channel, of in actions if of == purpose]
        if not nodes:
            continue
        unreadable = 0
        for patient in patients:
            try:
                if (
                    check_consent(purpose=purpose, channel=nodes[0][1], patient=patient, local_now=_NOON)
                    is None
                ):
                    break
            except ValueError:
                unreadable += 1
        else:
            told.append(
                make(
                    "ACTION_CONSENT_UNSEEN",
                    f"None of clinic {clinic_id}'s patients (of the first {PATIENT_SAMPLE:,} read) "
                    f"consents to {purpose} messages ({field}, {default} where the clinic's data leaves it "
                    f"empty){_unreadable(unreadable, field)}. "
                    f"The messages of {_actions(nodes)} would each be skipped (no_{field}): check the "
                    f"patients' {field} in the view careflow reads (docs/contracts.md §2)",
                    node_id=nodes[0][0],
                    field="data.purpose",
                )
            )
    return told


def _unreadable(count: int, field: str) -> str:
    return f"; {count:,} {'has' if count == 1 else 'have'} a {field} careflow cannot read" if count else ""


#: Outside the quiet hours, which hold marketing back, never skip it.
_NOON = datetime(2000, 1, 1, 12)


def _actions(nodes: list[tuple[str, str]]) -> str:
    named = [f"{node_id} ({channel})" for node_id, channel in nodes]
    return ("action " if len(named) == 1 else "actions ") + _some(named)


#: The appointments of a clinic whose statuses and times are looked at: the clinic's data has no
#: index on its appointments' clinic, and a status spelt its system's way, or a time read hours
#: off, is in most of them.
APPOINTMENT_SAMPLE = 1000


def _appointments(conn: Connection, clinic_id: str) -> list[tuple[Any, Any]]:
    """The status and time of the first :data:`APPOINTMENT_SAMPLE` appointments of the clinic the
    database hands out, the time as stored (a view may hand out text, or a time without a zone)."""
    a = tables.appointments
    rows = conn.execute(
        select(a.c.status, type_coerce(a.c.scheduled_at, NullType()))
        .where(a.c.clinic_id == clinic_id)
        .limit(APPOINTMENT_SAMPLE)
    )
    return [(status, at) for status, at in rows]


def _statuses_unknown(appointments: list[tuple[Any, Any]], clinic_id: str) -> Diagnostic | None:
    unknown = sorted({str(status) for status, _ in appointments if status not in APPOINTMENT_STATUSES})
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


#: A clinic's appointments are in the daytime: from 08:00 to 20:00 on its clock.
DAYTIME = (8, 20)
#: The fewest appointments with a readable time whose hours are weighed.
TIMES_WEIGHED_MIN = 20


def _times_shifted(appointments: list[tuple[Any, Any]], clinic_id: str, zone_name: str) -> Diagnostic | None:
    """Where many of the clinic's appointments fall at night on its clock as careflow reads their
    times, and nearly all in the daytime read the other way round: its wall times read as UTC (a
    column without a zone, or a view's ``AT TIME ZONE`` that made one), or UTC read as its wall
    times. Every wait until an appointment, and each time a message gives, would be hours off."""
    tz = zone(zone_name)
    moments = []
    for _, at in appointments:
        with suppress(ValueError):
            if (moment := as_utc(at)) is not None:
                moments.append(moment)
    if len(moments) < TIMES_WEIGHED_MIN:
        return None
    locals_ = [moment.astimezone(tz) for moment in moments]
    if sum(local.time() == time(0) for local in locals_) * 2 > len(locals_):
        return None  # dates without a time of day, at midnight on the clinic's clock

    def daytime(hours: list[int]) -> float:
        return sum(DAYTIME[0] <= hour < DAYTIME[1] for hour in hours) / len(hours)

    read = daytime([local.hour for local in locals_])
    hours_off = round((locals_[0].utcoffset() or timedelta(0)).total_seconds() / 3600)
    if read >= 0.6 or hours_off == 0:
        return None
    # Wall times read as UTC: the clock they showed is the UTC clock careflow read. UTC read as wall
    # times: the clock careflow read is the UTC one, so the wall clock is as far again ahead.
    wall_as_utc = daytime([moment.hour for moment in moments])
    utc_as_wall = daytime([(local + (local.utcoffset() or timedelta(0))).hour for local in locals_])
    if max(wall_as_utc, utc_as_wall) < 0.9:
        return None
    walls = wall_as_utc >= utc_as_wall
    # What the clinic meant is this many hours from what careflow read.
    meant = -hours_off if walls else hours_off
    how = (
        f"{zone_name} wall times kept without a zone, which careflow reads as UTC (a column of type "
        f"timestamp without time zone, or a view's AT TIME ZONE '{zone_name}' that made one): in the "
        f"view careflow reads, write scheduled_at AT TIME ZONE '{zone_name}' for such a column"
        if walls
        else f"times kept in UTC converted as if they were {zone_name} wall times: in the view careflow "
        "reads, leave a column that holds UTC as it is"
    )
    return make(
        "APPOINTMENT_TIMES_SHIFTED",
        f"Clinic {clinic_id}'s appointments fall outside {DAYTIME[0]:02d}:00-{DAYTIME[1]:02d}:00 "
        f"{zone_name} as careflow reads their times, {1 - read:.0%} of the {len(moments):,} with a time "
        f"(of the first {APPOINTMENT_SAMPLE:,} read); {abs(meant)} hours "
        f"{'earlier' if meant < 0 else 'later'}, {max(wall_as_utc, utc_as_wall):.0%} would be within it. "
        f"They look like {how}. Each wait until an appointment, and each time a message gives, "
        f"would be {abs(hours_off)} hours off (docs/contracts.md §2)",
        field="clinic_id",
    )
