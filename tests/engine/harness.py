"""Drive the journey engine without Airflow: what each DAG task does, on a simulated clock.

``Journey`` runs a compiled workflow against a database and the fake provider: ``run_at(T)``
is one DAG run (every node's :func:`process_node` in topological order), ``run_days(A, B)`` is
the scheduled runs between A and B plus the wake runs the ``careflow_wake`` task would start
(mirroring :func:`careflow.simulation.simulate_workflow`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine

from careflow.compiler import CompiledWorkflow, compile_workflow
from careflow.compiler.schedule import next_run_after, runs_between
from careflow.engine.context import NodeReport, RunContext
from careflow.engine.nodes import next_wake, process_node
from careflow.providers.client import ProviderClient
from careflow.store import tables
from careflow.workflow.validation import validate_workflow
from support import EXAMPLES

UTC = timezone.utc
KST = timezone(timedelta(hours=9))
CLINIC_ID = "gangnam-01"


def kst(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Seoul wall time as aware UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=KST).astimezone(UTC)


# ------------------------------------------------------------------ workflows


def example(name: str) -> dict[str, Any]:
    """An example workflow document from include/workflows (a fresh copy)."""
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def compile_doc(doc: dict[str, Any], version: int = 1) -> CompiledWorkflow:
    """Validate and compile a workflow document; fails loudly on any validation error."""
    report = validate_workflow(copy.deepcopy(doc), source=doc.get("id", "<test>"))
    assert report.ok, [d.__dict__ if hasattr(d, "__dict__") else d for d in report.errors]
    assert report.workflow is not None
    return compile_workflow(report.workflow, version=version, content_hash=f"v{version}")


def chain(
    workflow_id: str,
    *steps: tuple[str, str, dict[str, Any]],
    event: str = "appointment_completed",
    filters: dict[str, Any] | None = None,
    schedule: str = "@daily",
    settings: dict[str, Any] | None = None,
    timezone_name: str = "Asia/Seoul",
    edges: list[tuple[str, str, str | None]] | None = None,
) -> dict[str, Any]:
    """A workflow document: trigger ``t`` then ``steps`` (id, type, data) chained in order.

    ``edges`` (source, target, handle) replaces the default chain when given.
    """
    trigger = {"label": "trigger", "event": event, "schedule": schedule}
    if filters:
        trigger["filters"] = filters
    nodes = [{"id": "t", "type": "trigger", "data": trigger}]
    nodes += [{"id": i, "type": kind, "data": {"label": i, **data}} for i, kind, data in steps]
    if edges is None:
        ids = ["t", *(i for i, _, _ in steps)]
        edges = [(a, b, None) for a, b in zip(ids, ids[1:], strict=False)]
    doc: dict[str, Any] = {
        "id": workflow_id,
        "name": workflow_id,
        "clinic_id": CLINIC_ID,
        "status": "active",
        "timezone": timezone_name,
        "nodes": nodes,
        "edges": [
            {"id": f"e{n}", "source": s, "target": t, **({"sourceHandle": h} if h else {})}
            for n, (s, t, h) in enumerate(edges)
        ],
    }
    if settings:
        doc["settings"] = settings
    return doc


def action(template: str = "{{ patient.name }}님 안녕하세요", **extra: Any) -> dict[str, Any]:
    """Action node data (kakao, care unless overridden)."""
    return {"channel": "kakao", "template": template, **extra}


# ------------------------------------------------------------------ clinic data


@dataclass
class Clinic:
    """Small deterministic clinic data: add rows, then :meth:`load` them."""

    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            "clinics": [
                {"id": CLINIC_ID, "name": "강남 미소 치과", "phone": "02-555-0101", "timezone": "Asia/Seoul"}
            ],
            "patients": [],
            "appointments": [],
            "appointment_events": [],
        }
    )

    def patient(self, pid: str, **kw: Any) -> str:
        """A patient with a valid mobile number and care consent (override with ``kw``)."""
        n = len(self.rows["patients"])
        row = {
            "id": pid,
            "clinic_id": CLINIC_ID,
            "name": f"환자{pid}",
            "phone": f"010-5550-{n:04d}",
            "email": f"{pid}@example.com",
            "birth_date": date(1980, 1, 1),
            "timezone": None,
            "consent_messages": True,
            "consent_marketing": False,
            "consent_night_marketing": False,
            "attributes": {},
        }
        row.update(kw)
        self.rows["patients"].append(row)
        return pid

    def appointment(
        self,
        aid: str,
        pid: str,
        *,
        type: str = "implant_surgery",
        status: str = "completed",
        scheduled_at: datetime,
        created_at: datetime | None = None,
        completed_at: datetime | None = None,
        clinic_id: str = CLINIC_ID,
        **kw: Any,
    ) -> str:
        """An appointment row."""
        self.rows["appointments"].append(
            {
                "id": aid,
                "patient_id": pid,
                "clinic_id": clinic_id,
                "type": type,
                "status": status,
                "scheduled_at": scheduled_at,
                "created_at": created_at or scheduled_at - timedelta(days=7),
                "completed_at": completed_at,
                "attributes": kw.get("attributes", {}),
            }
        )
        return aid

    def event(self, eid: str, aid: str, type: str, at: datetime) -> str:
        """An appointment event (patient and clinic from the appointment)."""
        appt = next(a for a in self.rows["appointments"] if a["id"] == aid)
        self.rows["appointment_events"].append(
            {
                "id": eid,
                "appointment_id": aid,
                "patient_id": appt["patient_id"],
                "clinic_id": appt["clinic_id"],
                "type": type,
                "occurred_at": at,
            }
        )
        return eid

    def completed(self, pid: str, at: datetime, *, type: str = "implant_surgery", **patient: Any) -> str:
        """A patient whose appointment of ``type`` completed at ``at`` (returns the event id)."""
        if not any(p["id"] == pid for p in self.rows["patients"]):
            self.patient(pid, **patient)
        aid = self.appointment(
            f"{pid}-a", pid, type=type, scheduled_at=at - timedelta(hours=1), completed_at=at
        )
        return self.event(f"{pid}-e", aid, "appointment_completed", at)

    def load(self, engine: Engine) -> None:
        """Insert the rows (the tables are expected empty)."""
        with engine.begin() as conn:
            for name in ("clinics", "patients", "appointments", "appointment_events"):
                if self.rows[name]:
                    conn.execute(tables.metadata.tables[name].insert(), self.rows[name])
        for name in self.rows:
            if name != "clinics":
                self.rows[name] = []
        self.rows["clinics"] = []


# ------------------------------------------------------------------ running


@dataclass
class Journey:
    """One workflow on one database, sending to the fake provider."""

    compiled: CompiledWorkflow
    engine: Engine
    server: Any
    timeout: float = 2.0
    runs: list[tuple[datetime, str]] = field(default_factory=list)
    reports: list[tuple[datetime, NodeReport]] = field(default_factory=list)
    #: ``"<patient>/<node>"`` -> (run time, run kind) of the run that got the message accepted.
    sent: dict[str, tuple[datetime, str]] = field(default_factory=dict)

    def client(self) -> ProviderClient:
        """A provider client on the fake."""
        return ProviderClient(self.server.url, self.server.token, max_concurrency=10, timeout=self.timeout)

    def context(self, now: datetime, run_id: str | None = None, **kw: Any) -> RunContext:
        """The run context of a run at ``now``."""
        return RunContext(
            compiled=self.compiled,
            now=now,
            engine=self.engine,
            run_id=run_id or f"run__{now.isoformat()}",
            sender=self.client(),
            gate=None,
            next_run_at=next_run_after(self.compiled, now),
            **kw,
        )

    def node(self, node_id: str, now: datetime, **kw: Any) -> NodeReport:
        """Run one node task at ``now``."""
        report = process_node(self.context(now, **kw), node_id)
        self.reports.append((now, report))
        return report

    def run_at(self, now: datetime, kind: str = "scheduled", **kw: Any) -> dict[str, NodeReport]:
        """One DAG run at ``now``: every node in topological order."""
        self.runs.append((now, kind))
        ctx = self.context(now, **kw)
        seen = len(self.server.messages())
        out: dict[str, NodeReport] = {}
        for node_id in self.compiled.order:
            out[node_id] = process_node(ctx, node_id)
            self.reports.append((now, out[node_id]))
        fresh = self.server.messages()[seen:]
        if fresh:
            patient_of = {
                r["id"]: r["patient_id"]
                for r in rows(self.engine, tables.executions, workflow_id=self.compiled.workflow_id)
            }
            for m in fresh:
                meta = m["metadata"]
                tag = f"{patient_of[meta['execution_id']]}/{meta['node_id']}"
                assert tag not in self.sent, f"{tag} sent twice"
                self.sent[tag] = (now, kind)
        return out

    def wake_after(self, now: datetime) -> datetime | None:
        """The next parked due time after ``now`` (what ``careflow_wake`` waits for)."""
        return next_wake(RunContext(compiled=self.compiled, now=now, engine=self.engine))

    def run_days(self, start: datetime, end: datetime, *, max_wakes: int = 50) -> None:
        """Scheduled runs in [start, end) and the wake runs before each next scheduled run."""
        for moment in runs_between(self.compiled, start, end):
            self.run_at(moment)
            self.wakes(moment, end, max_wakes=max_wakes)

    def wakes(self, after: datetime, end: datetime | None = None, *, max_wakes: int = 50) -> None:
        """The wake runs that follow the run at ``after``, up to the next scheduled run (or ``end``)."""
        upcoming = next_run_after(self.compiled, after)
        if end is not None:
            upcoming = min(upcoming, end)
        clock = after
        for _ in range(max_wakes):
            wake = self.wake_after(clock)
            if wake is None or wake >= upcoming:
                return
            self.run_at(wake, kind="wake")
            clock = wake


# ------------------------------------------------------------------ reading what happened


def rows(engine: Engine, table: Any, **where: Any) -> list[dict[str, Any]]:
    """Rows of a careflow table matching ``where`` (column=value)."""
    query = select(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def ledger(engine: Engine, workflow_id: str) -> dict[str, dict[str, Any]]:
    """careflow_messages rows by patient id (workflows with one action node)."""
    return {r["patient_id"]: r for r in rows(engine, tables.messages, workflow_id=workflow_id)}


def executions(engine: Engine, workflow_id: str) -> dict[str, dict[str, Any]]:
    """careflow_executions rows by patient id."""
    return {r["patient_id"]: r for r in rows(engine, tables.executions, workflow_id=workflow_id)}


def steps_of(engine: Engine, workflow_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """careflow_steps rows by (patient id, node id)."""
    patient_of = {r["id"]: r["patient_id"] for r in rows(engine, tables.executions, workflow_id=workflow_id)}
    out = {}
    for step in rows(engine, tables.steps, workflow_id=workflow_id):
        output = step["output"]
        if isinstance(output, str):
            step["output"] = json.loads(output)
        out[(patient_of[step["execution_id"]], step["node_id"])] = step
    return out


def age_claims(engine: Engine, workflow_id: str, age: timedelta) -> None:
    """Date the workflow's claims ``age`` back on the wall clock (their lease runs out by that much).

    Shortening ``CLAIM_LEASE`` instead would shorten the lease of the worker that takes the claims
    over too, and a worker writes no request past its own lease.
    """
    m = tables.messages
    with engine.begin() as conn:
        conn.execute(
            update(m)
            .where(m.c.workflow_id == workflow_id, m.c.status == "claimed")
            .values(claimed_at=datetime.now(UTC) - age)
        )


def assert_exactly_once(server: Any) -> dict[str, Any]:
    """The provider accepted every key once (never twice); returns the stats."""
    stats = server.stats()
    assert stats["accepted_twice"] == 0, stats
    assert all(n == 1 for n in stats["accepts_by_key"].values()), stats["accepts_by_key"]
    return stats


# ------------------------------------------------------------------ a worker in another process


def send_in_child(db_url: str, doc: dict[str, Any], now_iso: str, node_id: str, url: str, token: str) -> None:
    """Run one action node in a fresh process (spawned): the worker a test kills mid-batch."""
    from careflow.store.db import get_engine

    compiled = compile_doc(doc)
    ctx = RunContext(
        compiled=compiled,
        now=datetime.fromisoformat(now_iso),
        engine=get_engine(db_url),
        run_id="child",
        worker="child",
        sender=ProviderClient(url, token, max_concurrency=2, timeout=5),
    )
    process_node(ctx, node_id)


def cohort(clinic: Clinic, n: int, at: datetime, prefix: str = "p", **patient: Any) -> list[str]:
    """``n`` patients whose implant surgery completed at ``at``."""
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    for pid in ids:
        clinic.completed(pid, at, **patient)
    return ids


@contextmanager
def clinic_view(engine: Engine, table: str, select_sql: str, *, drop: Sequence[str] = ()) -> Iterator[None]:
    """``table`` read through a view while the block runs, as a clinic maps careflow onto its schema.

    The table's rows stay in ``<table>_stored`` for ``select_sql`` to read; afterwards the view and
    the tables named in ``drop`` (made for the view) are dropped and the table is put back.
    """
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_stored"))
        conn.execute(text(f"CREATE VIEW {table} AS {select_sql}"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP VIEW {table}"))
            for name in drop:
                conn.execute(text(f"DROP TABLE {name}"))
            conn.execute(text(f"ALTER TABLE {table}_stored RENAME TO {table}"))
