"""What each node type does to the executions due at it, one batch at a time.

Every processor takes the run's context and a node id, walks the due steps in batches (a fixed
number of queries per batch), records each step's outcome and creates the successor steps.
Nothing here imports Airflow: the operators call :func:`process_node`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, type_coerce, update
from sqlalchemy.types import NullType

from careflow import settings
from careflow.clock import enrolling_run_id
from careflow.compiler import CompiledNode
from careflow.engine import steps as st
from careflow.engine.context import NodeReport, RunContext
from careflow.engine.facts_builder import UnreadableFacts, age_on, as_date
from careflow.store import tables
from careflow.store.db import what_failed
from careflow.store.migrations import check_ready
from careflow.workflow.timezones import zone, zone_or

log = logging.getLogger(__name__)


def execution_id_for(workflow_id: str, event_id: str) -> str:
    """Deterministic execution id: one execution per (workflow, trigger event)."""
    return hashlib.sha256(f"{workflow_id}\x00{event_id}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------- trigger: enrollment


def enroll(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Enroll the matching appointment events since the last enrollment, idempotently.

    The window is [watermark - lookback, now): a skipped or late run loses nothing, an event
    committed after a run read past its time is read by the next one (up to
    ``[careflow] enrollment_lookback_minutes`` late), and nothing is enrolled twice (the unique
    (workflow, trigger event) key decides).
    """
    report = NodeReport(node.id, node.type)
    config = node.config
    e, a, p, w = tables.appointment_events, tables.appointments, tables.patients, tables.enrollment_watermarks
    engine = ctx.engine
    # A clinic view whose ids are not text fails here, named, not in the middle of the reads.
    report.queries += check_ready(engine)
    with st.batch_transaction(ctx, report) as conn:
        older = _older_versions(conn, ctx, report)
        _exit_removed_nodes(conn, ctx, report, older)
        _purge_past_retention(conn, ctx, report)
        stopped = _stopped_workflows(conn, ctx, report)
        mark = conn.execute(select(w.c.enrolled_until).where(w.c.workflow_id == ctx.workflow_id)).scalar()
        report.queries += 3
    _purge_stopped_workflows(ctx, report, stopped)
    start = tables.UTCDateTime().process_result_value(mark, engine.dialect) if mark else None
    if start is None:
        start = ctx.interval_start or (ctx.now - timedelta(days=1))
    else:
        start -= settings.enrollment_lookback()
    if ctx.interval_start is not None:
        start = min(start, ctx.interval_start)
    # An event older than the retention could be one whose execution was purged: never again. A
    # version with a shorter retention may have purged it: the shortest of all versions counts.
    start = max(start, _enrollment_floor(ctx, older))
    if mark is None:
        # The first enrollment marks where it starts before it enrolls anything: should it fail
        # for good, the next run starts from there instead of from its own interval, and the
        # events of this one are not lost.
        with st.batch_transaction(ctx, report) as conn:
            st.insert_ignore(
                conn, w, [{"workflow_id": ctx.workflow_id, "enrolled_until": start}], ["workflow_id"]
            )
            report.queries += 1
    end = ctx.now
    filters = config.filters
    default_tz = zone(ctx.compiled.timezone)
    if filters.min_age is not None or filters.max_age is not None:
        # A patient without a timezone of their own has the clinic's: ages go by its calendar.
        with ctx.engine.connect() as conn:
            clinic_tz = conn.execute(
                select(tables.clinics.c.timezone).where(tables.clinics.c.id == ctx.compiled.clinic_id)
            ).scalar()
        report.queries += 1
        default_tz = zone_or(clinic_tz, default_tz)
    # Pages follow the instant each event denotes, not the text (on SQLite) the clinic wrote it
    # as: the events of the same second as a page's last one are on the next page, not skipped.
    occurred = st.clinic_time(engine, e.c.occurred_at)
    window = (occurred >= st.careflow_time(engine, start), occurred < st.careflow_time(engine, end))
    columns = [
        e.c.id,
        e.c.appointment_id,
        e.c.patient_id,
        e.c.clinic_id,
        e.c.occurred_at,
        # as stored: a birth date that is not a date must not fail the enrollment of others
        type_coerce(p.c.birth_date, NullType()).label("birth_date"),
        type_coerce(p.c.timezone, NullType()).label("timezone"),
    ]
    page_key = "occurred_at"
    if engine.dialect.name != "postgresql":
        page_key = "occurred_instant"
        columns.append(occurred.label(page_key))
    last_at: Any = None
    last_id = ""
    batch = ctx.compiled.settings.batch_size
    targets = node.targets()
    while True:
        query = (
            select(*columns)
            .join(a, a.c.id == e.c.appointment_id)
            .join(p, p.c.id == e.c.patient_id)
            .where(
                e.c.clinic_id == ctx.compiled.clinic_id,
                e.c.type == config.event,
                *window,
            )
            .order_by(occurred, e.c.id)
            .limit(batch)
        )
        if filters.appointment_types:
            query = query.where(a.c.type.in_(filters.appointment_types))
        if last_at is not None:
            query = query.where(or_(occurred > last_at, and_(occurred == last_at, e.c.id > last_id)))
        with st.batch_transaction(ctx, report) as conn:
            rows = list(conn.execute(query).mappings())
            report.queries += 1
            if not rows:
                break
            report.batches += 1
            last_at, last_id = rows[-1][page_key], rows[-1]["id"]
            eligible = [r for r in rows if _age_ok(r, filters, default_tz)]
            report.reasons["filtered_age"] += len(rows) - len(eligible)
            executions = [
                {
                    "id": execution_id_for(ctx.workflow_id, r["id"]),
                    "workflow_id": ctx.workflow_id,
                    "version": ctx.compiled.version,
                    "trigger_event_id": r["id"],
                    "patient_id": r["patient_id"],
                    "appointment_id": r["appointment_id"],
                    "clinic_id": r["clinic_id"],
                    "status": "running",
                    "enrolled_at": ctx.now,
                    "event_at": r["occurred_at"],
                    "updated_at": ctx.now,
                    "run_id": enrolling_run_id(ctx.run_id, ctx.simulated),
                }
                for r in eligible
            ]
            # A view that lists an event twice (a UNION ALL) gives one execution, counted once.
            executions = list({ex["id"]: ex for ex in executions}.values())
            ids = [ex["id"] for ex in executions]
            existing = set(
                conn.execute(select(tables.executions.c.id).where(tables.executions.c.id.in_(ids))).scalars()
            )
            fresh = [ex for ex in executions if ex["id"] not in existing]
            # Another enrollment of the same events may have committed since the read above:
            # only the rows this one inserted are its own (counted, given their first steps).
            inserted = st.insert_ignore(
                conn, tables.executions, fresh, ["workflow_id", "trigger_event_id"], returning="id"
            )
            fresh = [ex for ex in fresh if ex["id"] in inserted]
            arrivals = [(ex["id"], node.id, ex["event_at"]) for ex in fresh]
            arrivals += [(ex["id"], t, ex["event_at"]) for ex in fresh for t in targets]
            st.create_steps(conn, ctx, arrivals)
            conn.execute(
                update(tables.steps)
                .where(
                    tables.steps.c.workflow_id == ctx.workflow_id,
                    tables.steps.c.node_id == node.id,
                    tables.steps.c.execution_id.in_([ex["id"] for ex in fresh]),
                )
                .values(status="done", finished_at=ctx.now, started_at=ctx.now, attempts=1)
            )
            if not targets:
                st.settle_executions(conn, ctx, [ex["id"] for ex in fresh])
            report.queries += 4
            if fresh:  # sent once this page commits: a page rolled back is counted by the retry
                ctx.event("executions_enrolled", node_id=node.id, count=len(fresh))
            report.enrolled += len(fresh)
            report.reasons["already_enrolled"] += len(executions) - len(fresh)
            report.processed += len(rows)
        if len(rows) < batch:
            break
    with st.batch_transaction(ctx, report) as conn:
        _count_unmatched_events(conn, ctx, node, window, report)
        # The interval's moves are followed once, with the watermark that passes them.
        _follow_moved_appointments(conn, ctx, start, end, report)
        st.insert_ignore(conn, w, [{"workflow_id": ctx.workflow_id, "enrolled_until": end}], ["workflow_id"])
        conn.execute(
            update(w)
            .where(w.c.workflow_id == ctx.workflow_id, w.c.enrolled_until < end)
            .values(enrolled_until=end)
        )
        report.queries += 2
    report.passed = report.enrolled
    return report


#: The reason an event of the window is not enrolled because the clinic's data holds no row of its
#: appointment or its patient (a view that hands out its ids another way than the events do).
UNMATCHED_EVENT = "event_without_its_appointment_or_patient"


def _count_unmatched_events(
    conn: Any, ctx: RunContext, node: CompiledNode, window: Any, report: NodeReport
) -> None:
    """Count, and say in the task's log, the trigger's events of the run's window that name an
    appointment or a patient the clinic's data does not hold: the enrollment's join leaves them
    out, and nothing else would tell (one read, through the events' (clinic, type, time) index)."""
    e, a, p = tables.appointment_events, tables.appointments, tables.patients
    unmatched = conn.execute(
        select(func.count())
        .select_from(e.outerjoin(a, a.c.id == e.c.appointment_id).outerjoin(p, p.c.id == e.c.patient_id))
        .where(
            e.c.clinic_id == ctx.compiled.clinic_id,
            e.c.type == node.config.event,
            *window,
            or_(a.c.id.is_(None), p.c.id.is_(None)),
        )
    ).scalar_one()
    report.queries += 1
    if unmatched:
        report.reasons[UNMATCHED_EVENT] += unmatched
        ctx.event("events_unmatched", node_id=node.id, count=unmatched)  # once the transaction commits
        log.warning(
            "careflow: workflow %s: %d %s event(s) of this run's window name an appointment or a "
            "patient that the clinic's appointments or patients do not hold: not enrolled. Check that "
            "the clinic's views hand out the same ids as its appointment_events (docs/contracts.md §2)",
            ctx.workflow_id,
            unmatched,
            node.config.event,
        )


def _follow_moved_appointments(
    conn: Any, ctx: RunContext, start: datetime, end: datetime, report: NodeReport
) -> None:
    """Re-read the waits until an appointment's time whose appointment was rescheduled in [start, end).

    A wait until an appointment field is read again when it falls due, which follows a move to a
    later time. A move to an earlier time is followed here: on the clinic's
    ``appointment_rescheduled`` event, the waits of that appointment take the time read now, so
    the reminder goes out before the new date, not at the old one (expired by then). The node's
    task of this run moves on what is due; the wake task waits for the rest. A field that cannot
    be read now keeps the time it had.
    """
    from careflow.engine.delays import release_time
    from careflow.engine.facts_builder import UnreadableFacts

    waits = {n.id: n.config for n in ctx.compiled.nodes.values() if n.type == "delay" and n.config.until}
    if not waits:
        return
    rows = st.moved_waits(conn, ctx, sorted(waits), start, end)
    report.queries += 1
    if not rows:
        return
    facts = st.load_facts(conn, ctx, rows, report)
    default_tz = zone(ctx.compiled.timezone)
    moves = []
    for row in rows:
        fact = facts.get(row["execution_id"])
        if fact is None or isinstance(fact, UnreadableFacts):
            continue
        release = release_time(
            waits[row["node_id"]], row["arrived_at"], fact, _patient_zone(fact, default_tz)
        )
        if release is not None and release != row["due_at"]:
            moves.append({"id": row["id"], "due_at": release})
    st.move_due_times(conn, moves)
    report.queries += 1 if moves else 0
    report.reasons["wait_moved"] += len(moves)


def _age_ok(row: Any, filters: Any, default_tz: Any) -> bool:
    """Whether the patient's age on the day of the event, on their own calendar, passes the filters."""
    if filters.min_age is None and filters.max_age is None:
        return True
    try:
        birth_date = as_date(row["birth_date"])
    except ValueError:  # unreadable: no age to compare, like a missing birth date
        return False
    if birth_date is None:
        return False
    tz = zone_or(row["timezone"], default_tz)
    age = age_on(birth_date, row["occurred_at"].astimezone(tz).date())
    if filters.min_age is not None and age < filters.min_age:
        return False
    return not (filters.max_age is not None and age > filters.max_age)


#: Executions purged per run at most: a first run after a long pause takes several runs, not one
#: long transaction.
PURGE_BATCH = 5000


def _retention_cutoff(now: datetime, retention_days: int) -> datetime:
    """How far back a retention of ``retention_days`` reaches from ``now``."""
    return now - timedelta(days=retention_days)


@dataclass(frozen=True)
class _PublishedVersion:
    """What enrollment needs of an older version of the workflow, as published."""

    version: int
    node_types: tuple[tuple[str, Any], ...]  # (node id, type) of each node
    retention_days: int | None  # None: the document gives no usable number of days


def _published_version(version: int, document: Any) -> _PublishedVersion:
    """The node types and retention of a published version's document."""
    from careflow.workflow.models import WorkflowSettings

    if not isinstance(document, dict):
        return _PublishedVersion(version, (), None)
    default = WorkflowSettings.model_fields["retention_days"].default
    value = (document.get("settings") or {}).get("retention_days", default)
    node_types = tuple(
        (raw["id"], raw.get("type"))
        for raw in document.get("nodes") or ()
        if isinstance(raw, dict) and isinstance(raw.get("id"), str)
    )
    return _PublishedVersion(version, node_types, value if isinstance(value, int) and value > 0 else None)


#: Older versions already read in this process, by (workflow, version, content hash). A version
#: row is never updated nor deleted, so what was read of it holds; the hash is in the key because a
#: number alone could name other content elsewhere (a rebuilt database, another database). The
#: least recently used entry goes first past the cap.
_SEEN_VERSIONS_MAX = 4096
_seen_versions: OrderedDict[tuple[str, int, str], _PublishedVersion] = OrderedDict()
_seen_lock = threading.Lock()


def _older_versions(conn: Any, ctx: RunContext, report: NodeReport) -> list[_PublishedVersion]:
    """The workflow's versions before the one running; the document only of those not read before."""
    v = tables.workflow_versions
    listed = conn.execute(
        select(v.c.version, v.c.content_hash).where(
            v.c.workflow_id == ctx.workflow_id, v.c.version < ctx.compiled.version
        )
    ).all()
    found = _read_versions(conn, report, ctx.workflow_id, listed)
    return [found[version] for version in sorted(found)]


def _read_versions(
    conn: Any, report: NodeReport, workflow_id: str, listed: Sequence[Any]
) -> dict[int, _PublishedVersion]:
    """The versions ``listed`` (number, content hash) of ``workflow_id``, by number; the document
    only of those not read before in this process."""
    v = tables.workflow_versions
    found: dict[int, _PublishedVersion] = {}
    with _seen_lock:
        for version, digest in listed:
            key = (workflow_id, version, digest)
            if key in _seen_versions:
                _seen_versions.move_to_end(key)
                found[version] = _seen_versions[key]
    unread = [version for version, _ in listed if version not in found]
    if unread:
        rows = conn.execute(
            select(v.c.version, v.c.content_hash, v.c.document).where(
                v.c.workflow_id == workflow_id, st.among(conn, v.c.version, unread)
            )
        ).all()
        report.queries += 1
        read = {
            (version, digest): _published_version(version, document) for version, digest, document in rows
        }
        with _seen_lock:
            for (version, digest), published in read.items():
                _seen_versions[(workflow_id, version, digest)] = published
                found[version] = published
            while len(_seen_versions) > _SEEN_VERSIONS_MAX:
                _seen_versions.popitem(last=False)
    return found


def _enrollment_floor(ctx: RunContext, older: list[_PublishedVersion]) -> datetime:
    """The earliest event an older version's retention leaves unpurged (``ctx.now`` minus the shortest)."""
    days = [ctx.compiled.settings.retention_days]
    days += [published.retention_days for published in older if published.retention_days is not None]
    return _retention_cutoff(ctx.now, min(days))


def _purge_past_retention(conn: Any, ctx: RunContext, report: NodeReport) -> None:
    """Delete executions that ended more than ``retention_days`` ago, with their steps and ledger rows.

    Only ended ones (completed, failed, exited): a running or waiting execution is kept however
    old. Their trigger events are older still, and enrollment never reads that far back, so a
    purged execution is never enrolled (nor its message sent) again.

    On Postgres it takes the workflow's purge lock as another workflow's run purging it does
    (:func:`_purge_stopped_workflows`: a workflow published active again after a pause): where that
    run holds it, the rows are left to it, and the next run purges what is left.
    """
    if not _purge_lock_taken(conn, ctx.workflow_id, report):
        return
    purged = _purge(conn, ctx.workflow_id, _retention_cutoff(ctx.now, ctx.compiled.settings.retention_days))
    report.queries += 1 + (3 if purged else 0)
    if purged:
        report.reasons["purged_past_retention"] += purged
        log.info("careflow %s: purged %d executions ended before the retention", ctx.workflow_id, purged)


def _purge(conn: Any, workflow_id: str, cutoff: datetime) -> int:
    """Delete up to :data:`PURGE_BATCH` executions of ``workflow_id`` that ended before ``cutoff``,
    with their steps and ledger rows; how many."""
    x, s, m = tables.executions, tables.steps, tables.messages
    ids = list(
        conn.execute(
            select(x.c.id)
            .where(
                x.c.workflow_id == workflow_id,
                x.c.status.in_(("completed", "failed", "exited")),
                x.c.finished_at < cutoff,
                # Nor one with a branch still open: earlier careflow releases recorded an execution
                # as exited as soon as one of its branches stopped.
                ~exists().where(s.c.execution_id == x.c.id, s.c.status.in_(st.OPEN_STATES)),
            )
            .limit(PURGE_BATCH)
        ).scalars()
    )
    if ids:
        for table, column in ((s, s.c.execution_id), (m, m.c.execution_id), (x, x.c.id)):
            conn.execute(table.delete().where(st.among(conn, column, ids)))
    return len(ids)


def end_archived(
    conn: Any, workflow_id: str, version: int, now: datetime, report: NodeReport | None = None
) -> int:
    """End the executions still in flight in ``workflow_id``, published ``archived`` in ``version``;
    how many (the statements it ran counted in ``report``, a run's, where one is given).

    Archiving retires a workflow: no run of it moves them on again. Each open step is skipped with
    the reason ``workflow_archived_in_version_<version>`` and its execution exits with that reason and
    the node it was at (failed where a branch of it failed), as an execution does whose node a new
    version removed; ended, it is purged past the retention like any other.
    """
    x, s = tables.executions, tables.steps
    reason = f"workflow_archived_in_version_{version}"
    in_flight = and_(x.c.workflow_id == workflow_id, x.c.status.in_(("running", "waiting")))
    postgres = conn.dialect.name == "postgresql"
    if report is not None:  # the one below, and where anything is in flight the four after it
        report.queries += 1
    if not conn.execute(select(exists().where(in_flight))).scalar():
        return 0  # the common case, one statement
    if report is not None:
        report.queries += 3 + int(postgres)
    if postgres:  # publish and a run's purge take turns (the purge's lock)
        conn.execute(select(func.pg_advisory_xact_lock(_purge_lock_key(workflow_id))))
    at = (
        select(func.min(s.c.node_id))
        .where(s.c.execution_id == x.c.id, s.c.status.in_(st.OPEN_STATES))
        .scalar_subquery()
    )
    conn.execute(
        update(x)
        .where(in_flight, x.c.exit_reason.is_(None))
        .values(exit_reason=func.substr(func.coalesce(reason + ":" + at, reason), 1, 200))
    )
    failed = exists().where(s.c.execution_id == x.c.id, s.c.status == "failed")
    ended = conn.execute(
        update(x)
        .where(in_flight)
        .values(status=case((failed, "failed"), else_="exited"), updated_at=now, finished_at=now)
    ).rowcount
    conn.execute(
        update(s)
        .where(s.c.workflow_id == workflow_id, s.c.status.in_(st.OPEN_STATES))
        .values(status="skipped", error=reason, finished_at=now, version=version)
    )
    return int(ended or 0)


def _stopped_workflows(conn: Any, ctx: RunContext, report: NodeReport) -> list[tuple[str, int, str, int]]:
    """The workflows whose newest version is not active (paused, archived, a draft), each with that
    version, its status and its retention in days (those without a usable one left out); none for a
    simulated run, whose clock is made up. Read in the enrollment's first transaction."""
    if ctx.simulated:
        return []
    v = tables.workflow_versions
    newest = (
        select(v.c.workflow_id, func.max(v.c.version).label("version")).group_by(v.c.workflow_id).subquery()
    )
    rows = conn.execute(
        select(v.c.workflow_id, v.c.version, v.c.content_hash, v.c.status)
        .join(newest, and_(v.c.workflow_id == newest.c.workflow_id, v.c.version == newest.c.version))
        .where(v.c.status != "active")
    ).all()
    report.queries += 1
    stopped = []
    for workflow_id, version, digest, status in rows:
        # Each version's document read once a process, as the older versions' are.
        days = _read_versions(conn, report, workflow_id, [(version, digest)])[version].retention_days
        if days is not None:
            stopped.append((workflow_id, version, status, days))
    return stopped


def _purge_stopped_workflows(
    ctx: RunContext, report: NodeReport, stopped: list[tuple[str, int, str, int]]
) -> None:
    """Purge past their retention the workflows ``stopped`` (:func:`_stopped_workflows`): no run of
    theirs purges them, their DAG not being built, and the retention holds for whatever careflow
    keeps. Each run of an active workflow takes one batch of each. An archived one's executions
    still in flight are ended first (:func:`end_archived`): ``publish`` ended those it found, and
    these are what a run in flight as it was archived moved on since.

    Runs of several workflows may do it at once: on Postgres a workflow another is purging is left
    to it (an advisory lock), so that two never delete the same rows in turn. It never fails the
    enrollment: a problem is logged, and the next run tries again.
    """
    try:
        for workflow_id, version, status, days in stopped:
            with st.batch_transaction(ctx, report) as conn:
                if not _purge_lock_taken(conn, workflow_id, report):
                    continue
                ended = (
                    end_archived(conn, workflow_id, version, ctx.now, report) if status == "archived" else 0
                )
                purged = _purge(conn, workflow_id, _retention_cutoff(ctx.now, days))
                report.queries += 1 + (3 if purged else 0)
            if ended:
                log.info(
                    "careflow %s: ended %d executions of workflow %s still in flight since it was "
                    "archived in version %d",
                    ctx.workflow_id,
                    ended,
                    workflow_id,
                    version,
                )
            if purged:
                log.info(
                    "careflow %s: purged %d executions of workflow %s (%s since version %d) ended "
                    "before its retention",
                    ctx.workflow_id,
                    purged,
                    workflow_id,
                    status,
                    version,
                )
    except Exception as exc:
        log.warning(
            "careflow %s: the executions of workflows published not active were not purged past "
            "their retention this run (the next run tries again): %s",
            ctx.workflow_id,
            what_failed(exc),
        )


def _purge_lock_taken(conn: Any, workflow_id: str, report: NodeReport) -> bool:
    """Whether this transaction now holds the purge lock of ``workflow_id`` (on Postgres; always on
    SQLite, which has one writer at a time): False where another run purging it holds it."""
    if conn.dialect.name != "postgresql":
        return True
    report.queries += 1
    return bool(conn.execute(select(func.pg_try_advisory_xact_lock(_purge_lock_key(workflow_id)))).scalar())


def _purge_lock_key(workflow_id: str) -> int:
    """The Postgres advisory lock a purge of ``workflow_id``'s executions holds (a signed 64-bit key)."""
    digest = hashlib.sha256(f"careflow purge\x00{workflow_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _exit_removed_nodes(
    conn: Any, ctx: RunContext, report: NodeReport, older: list[_PublishedVersion]
) -> None:
    """Executions waiting at a node the current version no longer has exit with a reason (docs/contracts.md §4)."""
    s = tables.steps
    known = list(ctx.compiled.nodes)
    orphans = list(
        conn.execute(
            select(s.c.id, s.c.execution_id, s.c.node_id).where(
                s.c.workflow_id == ctx.workflow_id, s.c.status.in_(st.OPEN_STATES), s.c.node_id.notin_(known)
            )
        ).mappings()
    )
    _exit_steps(conn, ctx, report, orphans, f"node_removed_in_version_{ctx.compiled.version}")
    _exit_retyped_nodes(conn, ctx, report, older)


def _exit_retyped_nodes(
    conn: Any, ctx: RunContext, report: NodeReport, older: list[_PublishedVersion]
) -> None:
    """Executions parked at a node id whose type changed since the version that parked them exit too.

    A delay that became an action is not the node the execution was waiting at: its wait means
    nothing there (a message "due" three days ago), and a node that became the trigger would
    never move it on. The node as it was is gone, so the execution exits with a reason.
    """
    s = tables.steps
    current = {node_id: node.type for node_id, node in ctx.compiled.nodes.items()}
    retyped: dict[str, list[int]] = {}
    for published in older:
        for node_id, node_type in published.node_types:
            if node_id in current and node_type != current[node_id]:
                retyped.setdefault(node_id, []).append(published.version)
    if not retyped:
        return
    stale = [
        row
        for node_id, versions in retyped.items()
        for row in conn.execute(
            select(s.c.id, s.c.execution_id, s.c.node_id).where(
                s.c.workflow_id == ctx.workflow_id,
                s.c.node_id == node_id,
                s.c.status.in_(st.OPEN_STATES),
                s.c.version.in_(versions),
            )
        ).mappings()
    ]
    report.queries += len(retyped)
    _exit_steps(conn, ctx, report, stale, f"node_type_changed_in_version_{ctx.compiled.version}")


def _exit_steps(conn: Any, ctx: RunContext, report: NodeReport, open_steps: list[Any], reason: str) -> None:
    """Close ``open_steps`` as skipped with ``reason``; their executions exit once nothing else is open."""
    if not open_steps:
        return
    st.finish_steps(conn, ctx, [{"id": o["id"], "status": "skipped", "error": reason} for o in open_steps])
    st.exit_executions(conn, ctx, {o["execution_id"]: f"{reason}:{o['node_id']}" for o in open_steps})
    st.settle_executions(conn, ctx, [o["execution_id"] for o in open_steps])
    report.reasons[reason] += len(open_steps)


# ---------------------------------------------------------------- the generic batch loop

Decision = tuple[
    str, Any
]  # ("pass", {"at": datetime, "handle": str|None, "output": {...}}) / ("wait", due) / ...


def _walk(
    ctx: RunContext,
    node: CompiledNode,
    decide: Callable[[Any, Any], Decision],
    *,
    needs_facts: bool,
) -> NodeReport:
    """Process every due step at ``node`` in batches; ``decide(row, facts)`` says what happens to each."""
    report = NodeReport(node.id, node.type)
    after = 0
    batch = ctx.compiled.settings.batch_size
    while True:
        with st.batch_transaction(ctx, report) as conn:
            rows = st.due_steps(conn, ctx, node.id, after, batch)
            report.queries += 1
            if not rows:
                break
            report.batches += 1
            after = rows[-1]["id"]
            facts = st.load_facts(conn, ctx, rows, report) if needs_facts else {}
            updates: list[dict[str, Any]] = []
            arrivals: list[tuple[str, str, datetime]] = []
            exits: dict[str, str] = {}
            for row in rows:
                detail: Any
                fact = facts.get(row["execution_id"]) if needs_facts else None
                if needs_facts and fact is None:
                    kind, detail = "exit", "patient_or_appointment_missing"
                elif isinstance(fact, UnreadableFacts):
                    kind, detail = "exit", UnreadableFacts.REASON
                else:
                    kind, detail = decide(row, fact)
                report.processed += 1
                if kind == "pass":
                    updates.append({"id": row["id"], "status": "done", "output": detail.get("output")})
                    for target in node.targets(detail.get("handle")):
                        arrivals.append((row["execution_id"], target, detail["at"]))
                    report.passed += 1
                elif kind == "wait":
                    updates.append({"id": row["id"], "status": "waiting", "due_at": detail})
                    report.waiting += 1
                    report.next_due = detail if report.next_due is None else min(report.next_due, detail)
                else:  # exit: the execution stops here, with a reason
                    updates.append({"id": row["id"], "status": "skipped", "error": detail})
                    exits[row["execution_id"]] = f"{detail}@{node.id}"
                    report.skipped += 1
                    report.reasons[detail] += 1
            st.finish_steps(conn, ctx, updates)
            st.create_steps(conn, ctx, arrivals)
            st.exit_executions(conn, ctx, exits)
            st.settle_executions(conn, ctx, [r["execution_id"] for r in rows])
            report.queries += 5
        if len(rows) < batch:
            break
    return report


def _arrival(row: Any) -> datetime:
    # A waiting step moves on at its due time; a pending one at its arrival time.
    return row["due_at"] if row["status"] == "waiting" and row["due_at"] else row["arrived_at"]


# ---------------------------------------------------------------- condition, delay, time window


def condition(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Evaluate the rules once, on facts read now, and follow the ``true`` or ``false`` handle."""
    from careflow.engine.rules import evaluate

    group = node.config

    def decide(row: Any, facts: Any) -> Decision:
        branch = "true" if evaluate(group, facts) else "false"
        return "pass", {
            "at": max(_arrival(row), row["arrived_at"]),
            "handle": branch,
            "output": {"branch": branch},
        }

    report = _walk(ctx, node, decide, needs_facts=True)
    return report


def delay(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Park each execution until ``arrival + delay`` (or until an appointment field ± offset at HH:MM)."""
    from careflow.engine.delays import day_passed, release_time

    config = node.config
    default_tz = zone(ctx.compiled.timezone)
    # Until a time, or whole days on the patient's calendar: the patient's row says which zone.
    needs_facts = config.until is not None or config.unit in ("days", "weeks")

    def decide(row: Any, facts: Any) -> Decision:
        tz = _patient_zone(facts, default_tz)
        if row["status"] == "waiting" and row["due_at"] is not None:
            release = row["due_at"]
            if config.until is not None:
                # Read again now that it is due: the appointment may have moved since the execution
                # parked. Later, it waits for the new time; earlier, it moves on from there (and
                # max_lateness downstream counts from it). A field gone since keeps the old time.
                release = release_time(config, row["arrived_at"], facts or {}, tz) or release
        else:
            release = release_time(config, row["arrived_at"], facts or {}, tz)
            if release is None:
                return "exit", "delay_field_missing"
        if release <= ctx.now:
            if day_passed(config, release, ctx.now, tz):
                # "10:00 on the day before": that day is over (a booking or a move too close to
                # the appointment, or no run that day); its words would be wrong from now on.
                return "exit", "release_day_passed"
            return "pass", {"at": release, "output": {"released_at": release.isoformat()}}
        return "wait", release

    return _walk(ctx, node, decide, needs_facts=needs_facts)


def time_window(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Let executions through while the window is open (patient's timezone); park the others until it opens."""
    from careflow.engine.time_window import is_open, next_opening

    config = node.config
    workflow_tz = zone(ctx.compiled.timezone)
    window_tz = zone(config.timezone) if config.timezone else None

    def decide(row: Any, facts: Any) -> Decision:
        # The patient's own zone wins; without one, the window's; then the clinic's, as for delays
        # and quiet hours (the facts' patient.timezone), then the workflow's.
        tz = _patient_zone(facts, window_tz or _patient_zone(facts, workflow_tz), key="own_timezone")
        if is_open(config, ctx.now, tz):
            # A parked step moves on from the opening it waited for, not from its arrival: the
            # window may have been open when it arrived and closed before this node ran.
            since = _arrival(row)
            opened = next_opening(config, since, tz) or ctx.now
            at = min(max(since, opened), ctx.now)
            return "pass", {"at": _carry_lateness(config, row, at, tz), "output": {"window": "open"}}
        opening = next_opening(config, ctx.now, tz)
        if opening is None:
            return "exit", "window_never_opens"
        return "wait", opening

    return _walk(ctx, node, decide, needs_facts=True)


def _carry_lateness(config: Any, row: Any, at: datetime, tz: Any) -> datetime:
    """When a parked step moves on: ``at``, less how late this node first saw it, if it was late.

    A step that reached the window while it was open, but that this node first saw once it had
    closed (no run for two days, or a run a few minutes after the closing), waited for the next
    opening. The window holds a step only while it is closed: the time the step was already late
    when this node saw it stays late, and its action counts it against ``max_lateness`` as it
    would have if the window had still been open. Without this, a run that came back on a Saturday
    sent on Monday what a run that came back on the Friday had rightly expired.
    """
    from careflow.engine.time_window import next_opening

    seen = row["started_at"]
    if row["status"] != "waiting" or seen is None:
        return at
    due = next_opening(config, row["arrived_at"], tz)  # when it would have passed, seen on time
    if due is None or due >= seen:
        return at  # seen on time: a closed window is the wait it asks for
    return max(due, at - (seen - due))


def _patient_zone(facts: Any, default: Any, key: str = "timezone") -> Any:
    return zone_or((facts.get("patient") or {}).get(key) if facts else None, default)


# ---------------------------------------------------------------- dispatch


def process_node(ctx: RunContext, node_id: str) -> NodeReport:
    """Advance every execution due at ``node_id``."""
    from careflow.engine.actions import send_action

    node = ctx.compiled.node(node_id)
    handler = {
        "trigger": enroll,
        "condition": condition,
        "delay": delay,
        "timeWindow": time_window,
        "action": send_action,
    }[node.type]
    return handler(ctx, node)


def next_wake(ctx: RunContext, *, overdue_since: datetime | None = None) -> datetime | None:
    """When the earliest parked execution of this workflow becomes due (None: nothing is parked).

    ``overdue_since`` counts the ones that fell due since then too: on the wall clock, a step can
    fall due after its node's task ran and before the wake task does, and nothing else would pick
    it up before the next scheduled run. One due before the run began and still parked is one its
    node's task did not move on (a failed task upstream): it is left to the next scheduled run,
    and asking for it again would ask for a wake run that exists and hide the later waits.
    """
    with ctx.engine.connect() as conn:
        return st.next_due(conn, ctx, overdue_since=overdue_since)
