"""``careflow workflows publish`` and ``list``: immutable versions in the DB, snapshots on disk.

Publishing validates, stores a new version when the content hash differs from the latest one
(the same content twice is a no-op), and writes the snapshot the DAG factory reads. Executions in
flight keep running on the new version where their node still exists (docs/contracts.md §4).
"""

from __future__ import annotations

import errno
import getpass
import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError

from careflow import settings
from careflow.clinic_data import Reads, clinic_data_unmatched
from careflow.compiler.hashing import canonical_document, content_hash
from careflow.engine.nodes import end_archived
from careflow.exceptions import CareflowError, ConfigurationError, first_line
from careflow.snapshots import (
    ReplacedSnapshots,
    Snapshot,
    SnapshotProblem,
    kept_none,
    left_kept,
    load_all,
    snapshot_path,
    write_snapshot,
)
from careflow.store import tables
from careflow.store.db import database_name, database_unusable, get_engine, unstorable_character
from careflow.store.migrations import schema_out_of_reach
from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.models import Workflow
from careflow.workflow.validation import ValidationReport, validate_paths


@dataclass
class PublishResult:
    """What happened to one file."""

    source: str
    workflow_id: str | None
    action: str  # published, unchanged, refused, failed
    version: int | None = None
    content_hash: str | None = None
    report: ValidationReport | None = None
    snapshot: str | None = None
    database: str | None = None  # its URL, password hidden
    error: str | None = None  # why a failed file was not published
    ended: int = 0  # executions in flight ended as it was published archived

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "source": self.source,
            "workflow_id": self.workflow_id,
            "action": self.action,
            "version": self.version,
            "content_hash": self.content_hash,
            "snapshot": self.snapshot,
            "database": self.database,
            "error": self.error,
            "ended_executions": self.ended,
            "diagnostics": [d.to_dict() for d in self.report.diagnostics] if self.report else [],
        }


def _now() -> datetime:
    return datetime.now(timezone.utc)


def publish_report(
    report: ValidationReport,
    *,
    engine: Engine | None = None,
    workflows_dir: Path | None = None,
    published_by: str | None = None,
    start_date: datetime | None = None,
) -> PublishResult:
    """Store a validated workflow as a new version (when its content changed) and write its snapshot."""
    if not report.ok or report.workflow is None:
        return PublishResult(report.source, report.workflow_id, "refused", report=report)
    engine = engine or get_engine()
    workflows_dir = workflows_dir or settings.workflows_dir()
    database = database_name(engine)
    workflow = report.workflow
    digest = content_hash(workflow)
    told = clinic_data_unmatched(engine, Reads.of(workflow))
    v = tables.workflow_versions
    # One publish of a workflow at a time, from reading its latest version to writing its
    # snapshot: two at once would both take the next version number, and the snapshot written
    # last could be the older one. SQLite's transactions take the write lock when they begin.
    left: list[Path] = []  # what publishes of it stopped before their commit left
    with ReplacedSnapshots() as replaced, tables_required(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _take_publish_lock(conn, workflow.id)
        latest = conn.execute(
            select(v.c.version, v.c.content_hash, v.c.published_at, v.c.clinic_id, v.c.document, v.c.status)
            .where(v.c.workflow_id == workflow.id)
            .order_by(v.c.version.desc())
            .limit(1)
        ).first()
        refusal = _refusal(conn, workflow, latest)
        if refusal is not None:
            refused = replace(report, workflow=None, diagnostics=[refusal, *report.diagnostics])
            return PublishResult(report.source, workflow.id, "refused", report=refused, database=database)
        document = canonical_document(workflow)
        if latest is not None and latest.content_hash != digest and _same_content(latest.document, document):
            # The builder listed the same nodes and edges in another order: the same content.
            digest, document = latest.content_hash, latest.document
        first_published = conn.execute(
            select(func.min(v.c.published_at)).where(v.c.workflow_id == workflow.id)
        ).scalar()
        if latest is not None and latest.content_hash == digest:
            version, action, published_at = latest.version, "unchanged", latest.published_at
        else:
            version = (latest.version + 1) if latest is not None else 1
            published_at = _now()
            conn.execute(
                v.insert().values(
                    workflow_id=workflow.id,
                    version=version,
                    content_hash=digest,
                    name=workflow.name,
                    clinic_id=workflow.clinic_id,
                    status=workflow.status,
                    document=document,
                    diagnostics=[d.to_dict() for d in report.diagnostics],
                    published_at=published_at,
                    published_by=published_by or _who(),
                )
            )
            action = "published"
            if latest is not None and latest.status == "active" and workflow.status == "draft":
                told.append(_draft_stops(workflow.id, latest.version, version))
        # Archived, it is retired: what is still in flight in it ends now, with the version.
        ended = end_archived(conn, workflow.id, version, _now()) if workflow.status == "archived" else 0
        # The DAG's start date is the first publication: a new version must not reschedule history.
        start = start_date or first_published or published_at
        snap = Snapshot(
            workflow_id=workflow.id,
            version=version,
            content_hash=digest,
            published_at=published_at.isoformat(),
            start_date=start.isoformat(),
            document=document,
            path=snapshot_path(workflows_dir, workflow.id),
        )
        existing = _read_existing(snap.path)
        left = left_kept(snap.path)
        ahead = _snapshot_ahead(existing, snap, latest.version if latest is not None else None, database)
        if ahead and not _holds_latest(left, latest):
            raise ConfigurationError(ahead)  # the version just stored is rolled back with it
        # Else the snapshot is ahead because a publish from this database wrote it and stopped
        # before its commit (the file it kept aside holds this database's latest): replaced.
        if action == "published" or existing != snap.to_json():
            # Before the commit: no version without its snapshot; put back if the commit fails.
            try:
                replaced.keep(snap.path)
                write_snapshot(workflows_dir, snap)
            except OSError as exc:  # the version just stored is rolled back with it
                raise ConfigurationError(_snapshot_unwritable(snap.path, exc)) from exc
    for stale in left:  # committed: the snapshot is this database's again
        with suppress(OSError):
            stale.unlink()
    if action == "published":
        _invalidate_caches(workflow.id, digest)
    if told:  # with this result only: the version keeps what the document itself earned
        report = replace(report, diagnostics=[*report.diagnostics, *told])
    return PublishResult(
        report.source,
        workflow.id,
        action,
        version,
        digest,
        report,
        str(snap.path),
        database=database,
        ended=ended,
    )


def _draft_stops(workflow_id: str, active: int, version: int) -> Diagnostic:
    """The builder exports a workflow being edited as a draft: published over the active version,
    it stops the workflow, which is seldom what was meant."""
    return make(
        "WF_DRAFT_STOPS_ACTIVE",
        f"Version {active} of {workflow_id} is active and version {version}, this one, is a draft: "
        "only an active workflow becomes a DAG, so the workflow stops running now, and its executions "
        "in flight wait where they are until a version is published active. To change what runs, "
        "publish the edit with status active; to undo this, publish the active document again",
        field="status",
    )


#: How long a publish waits for another publish of the same workflow (one takes well under a
#: second): past it, the other is stuck (a session left open in a transaction), and is named.
PUBLISH_LOCK_TIMEOUT_S = 60.0
#: SQLSTATE of a lock not granted within ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
#: SQLSTATE of a statement cancelled: by a ``statement_timeout`` (the role's, the database's) shorter
#: than :data:`PUBLISH_LOCK_TIMEOUT_S`, or by an operator.
QUERY_CANCELED = "57014"

#: The session holding a transaction-level advisory lock of ``hashtext(:key)`` (its key's two halves).
_LOCK_HOLDER = text(
    """
    SELECT a.pid, a.application_name, a.client_addr, a.state, a.xact_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.objid::text::bigint = hashtext(:key)::bigint & 4294967295
      AND l.classid::text::bigint = (hashtext(:key)::bigint >> 32) & 4294967295
    LIMIT 1
    """
)


def _take_publish_lock(conn: Connection, workflow_id: str) -> None:
    """Wait for any other publish of ``workflow_id`` (Postgres), up to :data:`PUBLISH_LOCK_TIMEOUT_S`
    or a shorter ``statement_timeout``; past it, a ConfigurationError names the session that holds it."""
    key = f"careflow publish {workflow_id}"
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(PUBLISH_LOCK_TIMEOUT_S * 1000)}ms'"))
    started = time.monotonic()
    try:
        with conn.begin_nested():  # a savepoint: what holds the lock can still be asked
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
    except DBAPIError as exc:
        code = getattr(exc.orig, "pgcode", None)
        if code == LOCK_NOT_AVAILABLE:
            held = f"has held its lock for over {PUBLISH_LOCK_TIMEOUT_S:g} s"
        elif code == QUERY_CANCELED:
            timeout = conn.execute(text("SHOW statement_timeout")).scalar_one()
            held = (
                f"held its lock until this publish's wait was cancelled, after "
                f"{time.monotonic() - started:.1f} s (statement_timeout is {timeout})"
            )
        else:
            raise
        holder = conn.execute(_LOCK_HOLDER, {"key": key}).first()
        who = "another session" if holder is None else _session(*holder)
        raise ConfigurationError(
            f"another publish of workflow {workflow_id} {held}: {who}; nothing was published. Wait "
            "for it to end, or end that session if it is stuck"
            + (f" (SELECT pg_terminate_backend({holder[0]}))" if holder is not None else "")
        ) from exc
    conn.execute(text("SET LOCAL lock_timeout = DEFAULT"))


def _session(pid: int, application: str | None, client: Any, state: str | None, since: Any) -> str:
    """A Postgres session as an operator finds it in ``pg_stat_activity``; a role without
    ``pg_read_all_stats`` sees only the pid of another role's session."""
    seen = [f"application {application!r}" if application else "", f"client {client}" if client else ""]
    if state:
        seen.append(f"{state}, in a transaction since {since:%Y-%m-%d %H:%M:%S %Z}" if since else state)
    details = ", ".join(filter(None, seen))
    return f"Postgres backend {pid}" + (f" ({details})" if details else "")


def _snapshot_ahead(existing: Any, snap: Snapshot, known: int | None, database: str) -> str | None:
    """Why writing ``snap`` would replace a newer snapshot on disk, or None when it would not.

    A snapshot newer than the database's latest version (or the same version with other content)
    was published through another database: careflow_db is not the one that published it, or was
    not readable and careflow fell back to the embedded one. Writing over it would roll the DAG back.
    """
    if not isinstance(existing, dict):
        return None
    on_disk = existing.get("version")
    if not isinstance(on_disk, int) or isinstance(on_disk, bool) or on_disk < snap.version:
        return None
    disk_hash = str(existing.get("content_hash") or "")
    if on_disk == snap.version and disk_hash == snap.content_hash:
        return None
    knows = f"v{known}" if known is not None else "no version of it"
    return (
        f"Workflow {snap.workflow_id}: the snapshot on disk is v{on_disk} but this database knows "
        f"{knows}: is careflow_db the right database? Publishing would replace {snap.path} "
        f"(v{on_disk}, content {disk_hash[:12]}) with v{snap.version} (content {snap.content_hash[:12]}) "
        f"from {database}. Nothing was published: point careflow_db (or CAREFLOW_DB_URL) at the "
        f"database that published v{on_disk}; if it is the right one, a publish was stopped after "
        f"writing the snapshot and before storing its version: remove {snap.path} and publish again"
    )


def _holds_latest(kept: list[Path], latest: Row[Any, Any, Any, Any, Any, Any] | None) -> bool:
    """Whether one of the files publishes kept aside holds ``latest``, this database's latest
    version, or, where this database has none, says there was no snapshot before."""
    if latest is None:
        return any(kept_none(path) for path in kept)
    for path in kept:
        held = _read_existing(path)
        if isinstance(held, dict) and (held.get("version"), held.get("content_hash")) == (
            latest.version,
            latest.content_hash,
        ):
            return True
    return False


def _same_content(stored: Any, document: dict[str, Any]) -> bool:
    """Whether two canonical documents differ at most in the order of their nodes and edges."""

    def unordered(doc: dict[str, Any]) -> dict[str, Any]:
        def listed(items: Any) -> list[Any]:
            return sorted(items or [], key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False))

        return {**doc, "nodes": listed(doc.get("nodes")), "edges": listed(doc.get("edges"))}

    return isinstance(stored, dict) and unordered(stored) == unordered(document)


@contextmanager
def tables_required(engine: Engine) -> Iterator[None]:
    """A database without careflow's tables is a ConfigurationError that names it and says what to run."""
    try:
        yield
    except DBAPIError as exc:
        table = missing_table(exc)
        if table is None:
            raise
        with engine.connect() as conn:
            out_of_reach = schema_out_of_reach(conn, engine)
        raise ConfigurationError(
            out_of_reach
            or f"careflow's tables do not exist in this database ({database_name(engine)}: {table} is "
            "missing): run `careflow db upgrade` first"
        ) from exc


def missing_table(exc: DBAPIError) -> str | None:
    """The table a statement failed on because it does not exist (SQLite or Postgres), or None."""
    orig = exc.orig
    message = str(orig)
    sqlite = re.search(r"no such table: (\S+)", message)
    if sqlite:
        return sqlite.group(1)
    state = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    if state == "42P01":  # undefined_table
        postgres = re.search(r'relation "([^"]+)" does not exist', message)
        return postgres.group(1) if postgres else "a table"
    return None


#: What to do about a snapshot that cannot be written, by the error's errno.
_UNWRITABLE = {
    errno.ENOSPC: "free space on the disk that holds it",
    errno.EDQUOT: "raise the disk quota of the user who publishes",
    errno.EROFS: "mount it writable where careflow publishes",
    errno.EACCES: "let the user who publishes write there",
    errno.EPERM: "let the user who publishes write there",
}


def _snapshot_unwritable(path: Path, exc: OSError) -> str:
    """Why the snapshot at ``path`` could not be written, and what to do."""
    what = _UNWRITABLE.get(exc.errno or 0)
    return (
        f"cannot write its snapshot {path} (in [careflow] workflows_dir): "
        f"{exc.strerror or first_line(exc)}{f': {what}' if what else ''}; nothing was published"
    )


def _read_existing(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _invalidate_caches(workflow_id: str, digest: str) -> None:
    try:
        from careflow.resilience.cache import invalidate_workflow
    except ImportError:
        return
    invalidate_workflow(workflow_id, digest)


def _who() -> str:
    try:
        return getpass.getuser()[: tables.PUBLISHED_BY_CHARS]  # LOGNAME, USER… may say anything
    except Exception:
        return "unknown"


def _refusal(
    conn: Connection, workflow: Workflow, latest: Row[Any, Any, Any, Any, Any, Any] | None
) -> Diagnostic | None:
    """Why the database refuses this valid workflow, if it does."""
    if latest is not None and latest.clinic_id != workflow.clinic_id:
        # A workflow id is one clinic's: its executions, its DAG and the clinic row its
        # messages are written with. Another clinic's document under it would take them over.
        return make(
            "WF_ID_OF_ANOTHER_CLINIC",
            f"Workflow {workflow.id} is published for clinic {latest.clinic_id} (version "
            f"{latest.version}); this document is clinic {workflow.clinic_id}'s: give it its own id",
            field="clinic_id",
        )
    if latest is None:
        # A new id that differs from a published one in case alone: their snapshot files
        # (<id>.json) are one file where the filesystem does not tell case apart (a bind mount of
        # Docker Desktop on macOS or Windows), and one would silently run as the other.
        v = tables.workflow_versions
        other = conn.execute(
            select(v.c.workflow_id).where(func.lower(v.c.workflow_id) == workflow.id.lower()).limit(1)
        ).scalar()
        if other is not None:
            return make(
                "WF_ID_CASE_CLASH",
                f"Workflow {other} is published, and {workflow.id} differs from it in upper and lower "
                f"case alone: their snapshot files are one file where the filesystem does not tell case "
                f"apart; publish this document as {other} (a new version of it), or give it an id of its own",
                field="id",
            )
    # The document itself is stored as JSON, its text escaped; these two are columns of text.
    for name, value in (("name", workflow.name), ("clinic_id", workflow.clinic_id)):
        if (unstorable := unstorable_character(conn, value)) is not None:
            char, encoding = unstorable
            return make(
                "WF_TEXT_UNSTORABLE",
                f"The workflow's {name} holds {char!r} (U+{ord(char):04X}), which this database "
                f"cannot store in {encoding}: take it out, or keep careflow's tables in a UTF8 database",
                field=name,
            )
    return None


def publish_paths(
    paths: list[str | Path],
    *,
    engine: Engine | None = None,
    workflows_dir: Path | None = None,
    published_by: str | None = None,
    start_date: datetime | None = None,
) -> list[PublishResult]:
    """Validate and publish each file; a refused file never stops the others."""
    return [
        publish_report(
            report,
            engine=engine,
            workflows_dir=workflows_dir,
            published_by=published_by,
            start_date=start_date,
        )
        for report in validate_paths(paths)
    ]


def publish_each(
    paths: Sequence[str | Path],
    *,
    engine: Engine | None = None,
    workflows_dir: Path | None = None,
    published_by: str | None = None,
) -> Iterator[PublishResult]:
    """Validate and publish each file in turn, yielding its result as soon as it is known.

    A file that cannot be published (its snapshot cannot be written, the snapshot on disk is newer
    than the database's version…) is a ``failed`` result that says why, and the next files are
    still published: the files before it stay published, and the caller can say so. Every file
    is validated before the first is published, so that two files of one workflow are both
    refused (``WF_ID_IN_SEVERAL_FILES``) rather than published in turn.
    """
    for report in validate_paths(paths):
        try:
            result = publish_report(
                report, engine=engine, workflows_dir=workflows_dir, published_by=published_by
            )
        except Exception as exc:
            if isinstance(exc, CareflowError):
                reason = str(exc)
            else:
                reason = (
                    database_unusable(exc) or f"unexpected error: {type(exc).__name__}: {first_line(exc)}"
                )
            result = PublishResult(report.source, report.workflow_id, "failed", report=report, error=reason)
        yield result


@dataclass
class WorkflowListing:
    """One line of ``careflow workflows list``."""

    workflow_id: str
    name: str = ""
    version: int | None = None
    status: str = ""
    content_hash: str = ""
    validation: str = ""  # ok, N warning(s)
    #: ok, missing, stale, ahead, broken; unknown where the directory cannot be listed
    snapshot: str = "missing"
    problem: str | None = None
    published_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "workflow_id": self.workflow_id,
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "content_hash": self.content_hash,
            "validation": self.validation,
            "snapshot": self.snapshot,
            "problem": self.problem,
            "published_at": self.published_at,
        }


@dataclass
class WorkflowList:
    """``careflow workflows list``: the workflows, their database, and why it could not be read."""

    workflows: list[WorkflowListing]
    database: str | None = None  # its URL, password hidden
    database_problem: str | None = None  # set when the versions could not be read: snapshots only
    #: what was raised when they could not be read (a CareflowError: no careflow tables there, or
    #: careflow_db is not a usable URL; anything else: the database did not answer)
    database_error: Exception | None = None
    #: set when the workflows directory could not be listed: no snapshot is known
    snapshots_problem: str | None = None


def no_snapshot_there(folder: Path, listed: WorkflowList) -> str | None:
    """Where ``folder`` holds none of the snapshots of the workflows careflow_db has published (it
    does not exist, is a file, or is not the directory ``publish`` wrote to), that in words."""
    if listed.database_problem or not listed.workflows:
        return None
    if any(item.snapshot != "missing" for item in listed.workflows):
        return None
    if not folder.exists():
        state = "does not exist, so it holds"
    elif not folder.is_dir():
        state = "is not a directory, so it holds"
    else:
        state = "holds"
    active = sum(1 for item in listed.workflows if item.status == "active")
    return (
        f"{folder} {state} no snapshot of the {len(listed.workflows)} workflow(s) careflow_db has "
        f"published ({active} active), and the DAG factory builds a DAG from a snapshot there alone"
    )


def list_workflows(
    *, engine: Engine | None = None, workflows_dir: Path | None = None
) -> list[WorkflowListing]:
    """Latest version of each workflow, joined with its snapshot state, plus unloadable snapshot files."""
    return read_workflows(engine=engine, workflows_dir=workflows_dir).workflows


def is_published(
    workflow_id: str, *, engine: Engine | None = None, workflows_dir: Path | None = None
) -> bool:
    """Whether careflow knows the workflow: a snapshot file (loadable or not) or a version in its database.

    What :func:`list_workflows` lists, asked of one id: a file check, then at most one query.
    """
    if snapshot_path(workflows_dir or settings.workflows_dir(), workflow_id).is_file():
        return True
    v = tables.workflow_versions
    with (engine or get_engine()).connect() as conn:
        found = conn.execute(select(v.c.version).where(v.c.workflow_id == workflow_id).limit(1)).first()
    return found is not None


def read_workflows(*, engine: Engine | None = None, workflows_dir: Path | None = None) -> WorkflowList:
    """:func:`list_workflows`, with the database's URL and the reason it could not be read.

    An unreadable database never hides the snapshots: they are what the DAG factory sees.
    """
    workflows_dir = workflows_dir or settings.workflows_dir()
    good, problems = load_all(workflows_dir)
    # The directory itself cannot be listed: its problem is the list's, not a workflow's.
    unlisted = next((p.message for p in problems if p.path == workflows_dir), None)
    problems = [p for p in problems if p.path != workflows_dir]
    snaps = {snap.workflow_id: snap for snap, _ in good}
    listings: dict[str, WorkflowListing] = {}
    database: str | None = None
    problem: str | None = None
    error: Exception | None = None
    try:
        engine = engine or get_engine()
        database = database_name(engine)
        v = tables.workflow_versions
        latest = (
            select(v.c.workflow_id, func.max(v.c.version).label("version"))
            .group_by(v.c.workflow_id)
            .subquery()
        )
        with tables_required(engine), engine.connect() as conn:
            rows = conn.execute(
                select(v).join(
                    latest, (v.c.workflow_id == latest.c.workflow_id) & (v.c.version == latest.c.version)
                )
            ).mappings()
            for row in rows:
                warnings = sum(1 for d in row["diagnostics"] or [] if d.get("severity") == "warning")
                snap = snaps.get(row["workflow_id"])
                why = None
                if unlisted:
                    state = "unknown"
                elif snap is None:
                    state = "missing"
                elif snap.version > row["version"]:
                    state = "ahead"
                    why = (
                        f"the snapshot on disk is v{snap.version}: a publish stopped after writing it and "
                        "before storing its version (publish again), or another database published it"
                    )
                else:
                    state = "ok" if snap.version == row["version"] else "stale"
                listings[row["workflow_id"]] = WorkflowListing(
                    workflow_id=row["workflow_id"],
                    name=row["name"],
                    version=row["version"],
                    status=row["status"],
                    content_hash=row["content_hash"],
                    validation="ok" if not warnings else f"ok, {warnings} warning(s)",
                    snapshot=state,
                    problem=why,
                    published_at=row["published_at"].isoformat(),
                )
    except CareflowError as exc:  # no careflow tables there, or careflow_db is not a usable URL
        problem, error = str(exc), exc
    except Exception as exc:  # the DB may be down: the snapshots still tell what the factory sees
        error = exc
        problem = database_unusable(exc) or (
            f"cannot read the published versions from {database or 'careflow_db'}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        )
    for snap, compiled in good:
        if snap.workflow_id not in listings:
            # A new workflow's publish stopped before its commit left that there was no snapshot.
            stopped = problem is None and any(kept_none(kept) for kept in left_kept(snap.path))
            listings[snap.workflow_id] = WorkflowListing(
                workflow_id=snap.workflow_id,
                name=compiled.name,
                version=snap.version,
                status=compiled.status,
                content_hash=snap.content_hash,
                validation="ok",
                snapshot="ahead" if stopped else "ok" if problem else "ok (not in database)",
                problem=(
                    f"the snapshot on disk is v{snap.version}, and this database has no version of it: a "
                    "publish stopped after writing it and before storing its version (publish again)"
                )
                if stopped
                else None,
                published_at=snap.published_at,
            )
    for broken in problems:
        wid = broken.path.stem
        listing = listings.get(wid) or WorkflowListing(workflow_id=wid)
        listing.snapshot = "broken"
        listing.problem = broken.message
        listings[wid] = listing
    return WorkflowList(
        sorted(listings.values(), key=lambda item: item.workflow_id), database, problem, error, unlisted
    )


def snapshot_problems(workflows_dir: Path | None = None) -> list[SnapshotProblem]:
    """Snapshot files the factory cannot load."""
    return load_all(workflows_dir or settings.workflows_dir())[1]
