"""``careflow check``: whether careflow can work as configured here, each part in one line.

What an operator runs after setting careflow up, or when nothing is sent: careflow's database
(its tables, the clinic's data as careflow reads it), the published snapshots and each workflow
against the clinic's data, the ``careflow_messaging`` (asked of the provider), ``careflow_redis``
and ``careflow_alerts`` connections, the ``[careflow]`` settings the tasks read, and Airflow's side: the pool for the send tasks, its components'
heartbeats (Celery workers pinged on the broker) and each active workflow's DAG. It reads and asks;
it writes nothing and sends nothing. Every finding names
what it checked and, where it is a problem, what to do, in the words the tasks and commands use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from careflow import settings
from careflow.exceptions import CareflowError, ConfigurationError, first_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from careflow.compiler.graph import CompiledWorkflow
    from careflow.snapshots import Snapshot

OK, WARNING, PROBLEM = "ok", "warning", "problem"


@dataclass(frozen=True)
class Finding:
    """One thing checked: ``verdict`` ok, warning (careflow works, with less) or problem."""

    verdict: str
    subject: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_all(workflows_dir: Path | None = None) -> list[Finding]:
    """Every check, in the order an operator mends them; none raises."""

    @functools.cache
    def published() -> list[tuple[Snapshot, CompiledWorkflow]]:  # loaded once, for two checks below
        from careflow.snapshots import load_all

        return load_all(workflows_dir or settings.workflows_dir())[0]

    checks: list[tuple[str, Callable[[], list[Finding]]]] = [
        ("careflow_db", _database),
        ("workflows_dir", lambda: _snapshots(workflows_dir)),
        ("clinic data", lambda: _clinic_data(published())),
        ("workflows", lambda: _held(published())),
        ("careflow_messaging", _messaging),
        ("careflow_redis", _redis),
        ("careflow_alerts", _alerts),
        ("careflow settings", _settings),
        # one line where Airflow's database cannot be read, the pool's (both read it)
        ("airflow", lambda: _pool() + _components() + _celery_workers() + _dags(published())),
    ]
    return [finding for subject, check in checks for finding in _each(subject, check)]


def _each(subject: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    """``check()``, or the problem it ran into, in one line."""
    from careflow.store.db import what_failed

    try:
        return check()
    except CareflowError as exc:
        return [Finding(PROBLEM, subject, str(exc))]
    except Exception as exc:
        return [Finding(PROBLEM, subject, f"unexpected error: {what_failed(exc)}")]


def _database() -> list[Finding]:
    from careflow.store.db import database_name, database_unusable, get_engine, what_failed
    from careflow.store.migrations import check_ready, current_version

    engine = get_engine()
    named = f"{database_name(engine)} (from {settings.db_url_origin()})"
    try:
        check_ready(engine)  # careflow's tables, and the clinic's data as careflow reads it
        with engine.connect() as conn:
            version = current_version(conn)
    except CareflowError as exc:
        return [Finding(PROBLEM, "careflow_db", f"{named}: {exc}")]
    except Exception as exc:
        said = database_unusable(exc) or f"{named}: {what_failed(exc)}"  # careflow's words name it
        return [Finding(PROBLEM, "careflow_db", said)]
    findings = [
        Finding(
            OK, "careflow_db", f"{named}: careflow's tables at version {version}; the clinic's data readable"
        )
    ]
    remote = settings.remote_executors()
    if engine.dialect.name == "sqlite" and remote:
        findings.append(
            Finding(
                WARNING,
                "careflow_db",
                f"{named} is an SQLite file, and Airflow runs tasks with {', '.join(remote)}: a worker on another "
                "machine keeps a file of its own, and its own record of what was sent (a message could go "
                "out once from each); unless every worker runs on this machine, name the Postgres database "
                "they share (careflow_db or CAREFLOW_DB_URL)",
            )
        )
    return findings


#: What a snapshot's state (``workflows list``) means for the DAG factory, where the listing says no more.
_SNAPSHOT_STATES = {
    "missing": "published, but its snapshot is not in the workflows directory: publish it again",
    "stale": "its snapshot is of an older version than careflow_db's: publish it again",
    "ok (not in database)": "careflow_db has no version of it: published through another database?",
}


def _snapshots(workflows_dir: Path | None) -> list[Finding]:
    from careflow.publishing import no_snapshot_there, read_workflows

    folder = workflows_dir or settings.workflows_dir()
    listed = read_workflows(workflows_dir=folder)
    if listed.snapshots_problem:
        return [Finding(PROBLEM, "workflows_dir", listed.snapshots_problem)]
    findings = []
    # Without careflow's database (said above) the snapshots are all there is to compare: "ok".
    compared = listed.database_problem is None
    elsewhere = no_snapshot_there(folder, listed)
    if elsewhere is not None:
        active = any(item.status == "active" for item in listed.workflows)
        where = "--workflows-dir" if workflows_dir is not None else settings.WORKFLOWS_DIR_SETTING
        return [
            Finding(
                PROBLEM if active else WARNING,
                "workflows_dir",
                f"{elsewhere}: is {where} the directory `careflow workflows publish` wrote them to? If "
                "it is, publish them again",
            )
        ]
    for item in listed.workflows:
        if item.snapshot == "broken":
            findings.append(
                Finding(PROBLEM, f"workflow {item.workflow_id}", item.problem or "its snapshot is broken")
            )
        elif compared and item.snapshot != "ok":
            why = item.problem or _SNAPSHOT_STATES.get(item.snapshot, item.snapshot)
            findings.append(
                Finding(WARNING, f"workflow {item.workflow_id}", f"snapshot {item.snapshot}: {why}")
            )
    good = sum(
        1
        for item in listed.workflows
        if item.snapshot == "ok" or (not compared and item.snapshot != "broken")
    )
    if workflows_dir is None and not folder.is_absolute():  # the setting's, which Airflow's components read
        findings.append(
            Finding(
                WARNING,
                "workflows_dir",
                f"{folder} is a relative path: the dag processor and each worker find it from their own "
                f"working directory, `publish` from its own; set [careflow] workflows_dir to an absolute "
                f"path ({folder.absolute()} from here)",
            )
        )
    if not listed.workflows:
        findings.append(
            Finding(
                WARNING, "workflows_dir", f"{folder}: no workflow is published (careflow workflows publish)"
            )
        )
    elif good:
        findings.insert(
            0, Finding(OK, "workflows_dir", f"{folder}: {good} workflow(s) the DAG factory reads")
        )
    return findings


#: A clinic whose newest event careflow reads is older than this is said: its sync may have stopped
#: (nobody is enrolled, and nothing else says so).
EVENTS_QUIET_DAYS = 7


def _clinic_data(published: list[tuple[Snapshot, CompiledWorkflow]]) -> list[Finding]:
    """What ``publish`` warns of, for every published workflow as the clinic's data is now: its
    clinic not among the clinics or its timezone not one careflow knows, its trigger's events, its
    filter's appointment types or its appointments' statuses spelt the clinic's system's way, its
    trigger's events of appointments and patients the data does not hold, no birth date for its age
    filter, no address its actions' channels can reach nor consent to their purpose, its
    appointments' times read hours off; and, for an active one, its trigger's events none yet, or
    the clinic's events none for a week."""
    from careflow.clinic_data import Reads, clinic_data_unmatched
    from careflow.store.db import get_engine

    try:
        engine = get_engine()
    except ConfigurationError:  # a URL careflow cannot use: careflow_db's check says which, and why
        return []
    # Asked once for what workflows read alike, said once for the workflows it holds for.
    asked: dict[tuple[Reads, bool], list[str]] = {}
    newest: dict[str, dict[str, datetime | None] | None] = {}  # by clinic, by event type
    said: dict[str, list[str]] = {}
    for _, compiled in published:
        reads = Reads.of(compiled.workflow)
        key = (reads, compiled.status == "active")
        if key not in asked:
            asked[key] = [f"{told.code}: {told.message}" for told in clinic_data_unmatched(engine, reads)]
            if not asked[key] and compiled.status == "active":
                if reads.clinic_id not in newest:
                    newest[reads.clinic_id] = _newest_events(engine, reads.clinic_id)
                asked[key] = _events_quiet(reads.clinic_id, reads.event, newest[reads.clinic_id])
        for text in asked[key]:
            said.setdefault(text, []).append(compiled.workflow_id)
    return [Finding(WARNING, _workflows(ids), text) for text, ids in said.items()]


def _held(published: list[tuple[Snapshot, CompiledWorkflow]]) -> list[Finding]:
    """A warning for each workflow published paused or archived (or as a draft) that executions
    are still in: Airflow runs nothing of it, so they wait where they are until a version is
    published active (an archived one's are ended, :func:`_held_until`). A choice someone made,
    but patients it holds. And one for each draft published over an active version, whatever it
    holds: seldom a choice."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import DBAPIError

    from careflow.store import tables
    from careflow.store.db import get_engine

    stopped = {compiled.workflow_id: compiled for _, compiled in published if compiled.status != "active"}
    if not stopped:
        return []
    x, v = tables.executions, tables.workflow_versions
    drafts = sorted(workflow_id for workflow_id, compiled in stopped.items() if compiled.status == "draft")
    try:
        with get_engine().connect() as conn:
            held: dict[str, int] = dict(
                conn.execute(
                    select(x.c.workflow_id, func.count())
                    .where(x.c.workflow_id.in_(sorted(stopped)), x.c.status.in_(("running", "waiting")))
                    .group_by(x.c.workflow_id)
                ).all()
            )
            # A draft (or drafts) over an active version: the builder's export of a workflow being
            # edited, which stopped it (publish said so, WF_DRAFT_STOPS_ACTIVE); said whatever it holds.
            before: dict[str, tuple[int, str]] = {}  # the newest version that is not a draft
            for workflow_id, version, status in conn.execute(
                select(v.c.workflow_id, v.c.version, v.c.status).where(
                    v.c.workflow_id.in_(drafts), v.c.status != "draft"
                )
            ):
                before[workflow_id] = max(before.get(workflow_id, (0, "")), (version, status))
    except (ConfigurationError, DBAPIError):  # careflow_db's check says why
        return []
    was_active = {
        workflow_id: version for workflow_id, (version, status) in before.items() if status == "active"
    }
    findings = []
    for workflow_id in sorted(set(held) | set(was_active)):
        compiled = stopped[workflow_id]
        since = f"{compiled.status} since version {compiled.version}"
        if workflow_id in was_active:
            since += f", published over active version {was_active[workflow_id]}"
        if workflow_id in held:
            text = f"{since}, with {held[workflow_id]} execution(s) in flight: {_held_until(compiled.status)}"
        else:
            text = (
                f"{since}: Airflow runs nothing of it (the builder exports a workflow being edited as "
                "a draft); publish it with status active to run it again"
            )
        findings.append(Finding(WARNING, f"workflow {workflow_id}", text))
    return findings


def _held_until(status: str) -> str:
    """What becomes of the executions in flight in a workflow published ``status`` (not active)."""
    if status == "archived":  # publish ended those it found; these a run in flight moved on since
        return (
            "Airflow runs nothing of it, and the next run of an active workflow ends them as "
            "archived (publishing it archived again ends them now)"
        )
    return (
        "Airflow runs nothing of it, so they wait where they are until a version is published "
        "active (a message then more than its max_lateness past due is recorded expired)"
    )


def _workflows(ids: list[str]) -> str:
    """The subject of a finding about the workflows ``ids``: ``workflow a``, ``workflows a, b``."""
    return f"workflow{'s' if len(ids) > 1 else ''} {', '.join(ids)}"


def _newest_events(engine: Engine, clinic_id: str) -> dict[str, datetime | None] | None:
    """The time of the newest event of each type careflow reads of ``clinic_id`` (None for a type
    it has none of), each through the events' index; None where they cannot be read (careflow's
    database check says why)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import DBAPIError

    from careflow.engine.steps import clinic_time
    from careflow.store import tables
    from careflow.workflow.models import TRIGGER_EVENTS

    e = tables.appointment_events
    found: dict[str, datetime | None] = {}
    try:
        with engine.connect() as conn:
            for event in TRIGGER_EVENTS:
                at = conn.execute(
                    select(func.max(clinic_time(conn, e.c.occurred_at))).where(
                        e.c.clinic_id == clinic_id, e.c.type == event
                    )
                ).scalar()
                if isinstance(at, float):  # SQLite: the julian day of the instant
                    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(days=at - 2440587.5)
                found[event] = at
    except DBAPIError:
        return None
    return found


def _events_quiet(clinic_id: str, event: str, newest: dict[str, datetime | None] | None) -> list[str]:
    """A warning where the clinic's events hold no ``event`` of ``clinic_id`` yet (its workflows
    enroll nobody until one comes), or none of any type careflow reads for
    :data:`EVENTS_QUIET_DAYS` (none of the clinic's workflows enrolls anybody)."""
    if newest is None:
        return []
    if newest.get(event) is None:
        return [
            f"the clinic's appointment_events hold no {event} event of clinic {clinic_id} yet: the "
            "trigger enrolls nobody until one comes"
        ]
    latest = max(at for at in newest.values() if at is not None)
    ago = datetime.now(timezone.utc) - latest
    if ago < timedelta(days=EVENTS_QUIET_DAYS):
        return []
    return [
        f"the newest event of clinic {clinic_id} careflow reads is from {latest:%Y-%m-%d %H:%M} UTC, "
        f"{ago.days} days ago: its workflows enroll nobody until events come again. If the clinic has "
        "had appointments since, its system no longer writes them where careflow reads (its sync, "
        "the view careflow reads)"
    ]


def _messaging() -> list[Finding]:
    from careflow.providers.hook import MessagingHook

    config = settings.messaging_config()  # a ConfigurationError naming what is missing or unusable
    # A lookup of a key it cannot have and a message without fields: nothing is sent (the hook's
    # test, Airflow's "Test connection" button).
    answered, said = MessagingHook().test_connection()
    findings = [
        Finding(
            OK if answered else PROBLEM, "careflow_messaging", f"the provider at {config.base_url}: {said}"
        )
    ]
    if _crosses_the_network_in_clear(config.base_url):
        findings.append(
            Finding(
                WARNING,
                "careflow_messaging",
                f"{config.base_url} is plain HTTP to another machine: the bearer token and every "
                "message (its recipient and text) cross the network unencrypted; use the provider's "
                "https:// URL",
            )
        )
    return findings


def _crosses_the_network_in_clear(url: str) -> bool:
    """Whether ``url`` is ``http://`` to a host other than this machine (a name, or an address
    that is not a loopback one)."""
    from careflow.providers.http1 import loopback

    parts = urlsplit(url)
    return parts.scheme == "http" and not loopback(parts.hostname or "")


def _redis() -> list[Finding]:
    from careflow.resilience.redis_link import redact, unusable_reason

    url = settings.redis_url()
    remote = settings.remote_executors()
    if not url and remote:
        return [
            Finding(
                WARNING,
                "careflow_redis",
                f"not set, and Airflow runs tasks with {', '.join(remote)}: each worker machine keeps its "
                "own circuit breakers (a provider outage is learnt, and waited out, machine by machine) and "
                "caches; set careflow_redis to share them",
            )
        ]
    if not url:
        return [
            Finding(
                OK,
                "careflow_redis",
                "not set: circuit breakers and caches are each machine's (enough where one machine runs every task)",
            )
        ]
    why = unusable_reason(url)
    if why is not None:
        return [
            Finding(
                PROBLEM,
                "careflow_redis",
                f"Redis at {redact(url)} cannot be used ({why}): until it can, each machine keeps its own breakers",
            )
        ]
    return [Finding(OK, "careflow_redis", f"Redis at {redact(url)} answers")]


def _alerts() -> list[Finding]:
    from careflow.airflow.alerts import webhook

    hook = webhook()
    if hook is None:
        return [Finding(WARNING, "careflow_alerts", "not defined: alerts are only logged (docs/alerts.md)")]
    # Where, not who: a chat webhook's path is its secret, and a URL may carry a login.
    where = urlsplit(hook.url)
    host = f"[{where.hostname}]" if ":" in (where.hostname or "") else f"{where.hostname}"
    host += f":{where.port}" if where.port else ""
    findings = [Finding(OK, "careflow_alerts", f"posts {hook.format} JSON to {where.scheme}://{host}")]
    if _crosses_the_network_in_clear(hook.url):
        findings.append(
            Finding(
                WARNING,
                "careflow_alerts",
                f"http://{host} is plain HTTP to another machine: the webhook's URL (a chat webhook's "
                "path is its secret) and its headers cross the network unencrypted; use its https:// URL",
            )
        )
    return findings


def _settings() -> list[Finding]:
    """The ``[careflow]`` settings an action or trigger task reads: one it would refuse (a typo, a
    number out of range) is a problem here before it fails a task; ``allow_simulated_runs`` on
    where workers read it is a warning."""
    sends, enrolls = "every action task (no message is sent)", "every trigger task (nobody is enrolled)"
    readers: list[tuple[str, Callable[[], object], str]] = [
        ("send_process", lambda: "on" if settings.send_in_process() else "off", sends),
        ("prepare_nice", settings.prepare_nice, sends),
        (
            "enrollment_lookback_minutes",
            lambda: int(settings.enrollment_lookback().total_seconds() // 60),
            enrolls,
        ),
        (
            "allow_simulated_runs",
            lambda: "on" if settings.allow_simulated_runs() else "off",
            "every task of a run whose conf asks for a simulated one",
        ),
    ]
    read: dict[str, object] = {}
    findings: list[Finding] = []
    for key, reader, failing in readers:
        try:
            read[key] = reader()
        except ValueError as exc:  # its message names the setting and what it takes
            findings.append(
                Finding(PROBLEM, "careflow settings", f"{exc}: {failing} fails until it is mended")
            )
    if read.get("allow_simulated_runs") == "on":
        findings.append(
            Finding(
                WARNING,
                "careflow settings",
                "[careflow] allow_simulated_runs is on: a worker with this configuration follows a run whose "
                "conf asks for a simulated clock or a dry run (anyone who may trigger a DAG can write one), "
                "moving real executions on a made-up clock or recording messages as sent without sending "
                "them; turn it off (`careflow simulate` turns it on in its own process)",
            )
        )
    if not findings:
        findings.append(
            Finding(OK, "careflow settings", ", ".join(f"{key} {value}" for key, value in read.items()))
        )
    return findings


def _pool() -> list[Finding]:
    from airflow.models.pool import Pool
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from careflow.airflow.operators.action import PROVIDER_POOL
    from careflow.simulation import raise_airflow_database_problem

    try:
        pool = Pool.get_pool(PROVIDER_POOL)
    except (OperationalError, ProgrammingError) as exc:  # as `careflow setup` says it
        raise_airflow_database_problem(exc)
        raise
    if pool is None:
        return [
            Finding(
                PROBLEM,
                "airflow",
                f"no pool {PROVIDER_POOL}: Airflow never queues a send task without it; run `careflow setup`",
            )
        ]
    limited = pool.slots >= 0  # -1: Airflow's unlimited pool
    said = f"pool {PROVIDER_POOL} has " + (f"{pool.slots} slot(s)" if limited else "no limit on its slots")
    try:
        each = settings.messaging_config().max_concurrency
    except (CareflowError, ValueError):  # careflow_messaging's own check says why
        return [Finding(OK, "airflow", said)]
    # What the provider sees at most: the pool caps the send tasks, the connection each one's requests.
    each_one = f"each with up to {each} request(s) in flight (careflow_messaging's max_concurrency)"
    if not limited:
        return [Finding(OK, "airflow", f"{said}: as many send tasks at once as Airflow runs, {each_one}")]
    return [
        Finding(
            OK,
            "airflow",
            f"{said}: up to {pool.slots} send task(s) at once, {each_one}: "
            f"{pool.slots * each:,} at the provider at most",
        )
    ]


#: Airflow's components careflow needs, by their job type: what each does for careflow, the verdict
#: where none is running, and the command that starts one.
_COMPONENTS = (
    ("SchedulerJob", "scheduler", PROBLEM, "Airflow starts no run and queues no task", "airflow scheduler"),
    (
        "DagProcessorJob",
        "dag processor",
        PROBLEM,
        "a workflow published from now on is not parsed, so never runs",
        "airflow dag-processor",
    ),
    (
        "TriggererJob",
        "triggerer",
        WARNING,
        "a wait careflow defers ends late: a due step's at the next scheduled run (with an alert), a "
        "breaker's cool-down five minutes after it (the task then sends on)",
        "airflow triggerer",
    ),
)


def _components() -> list[Finding]:
    """Whether a scheduler, a dag processor and a triggerer heartbeat in Airflow's database, as
    Airflow's own health check reads them (each within its health check threshold)."""
    from airflow.jobs.job import most_recent_job
    from airflow.utils.session import create_session

    findings, alive = [], []
    with create_session() as session:
        for job_type, name, verdict, without, start in _COMPONENTS:
            job = most_recent_job(job_type, session=session)
            if job is not None and job.is_alive():
                alive.append(f"{name} ({job.hostname})")
                continue
            last = (
                f"its last heartbeat {job.latest_heartbeat:%Y-%m-%d %H:%M:%S} UTC from {job.hostname}"
                if job is not None and job.latest_heartbeat is not None
                else "none has ever run with this database"
            )
            findings.append(
                Finding(verdict, "airflow", f"no {name} is running ({last}): {without}; start `{start}`")
            )
    if alive:
        findings.insert(0, Finding(OK, "airflow", f"heartbeating: {', '.join(alive)}"))
    return findings


#: How long ``check`` waits for Celery workers to answer a ping, in seconds.
CELERY_PING_S = 2.0


def _celery_workers() -> list[Finding]:
    """With the CeleryExecutor, whether a Celery worker answers on the broker: the scheduler queues
    the tasks there and only a worker runs them (workers do not heartbeat in Airflow's database)."""
    if "CeleryExecutor" not in settings.remote_executors():
        return []
    from airflow.providers.celery.executors.celery_executor_utils import app

    with app.connection_for_read() as connection:
        broker = connection.as_uri()  # its password masked, and a mask where there is none
        if not connection.password:
            broker = broker.replace(":**@", "@").replace("//@", "//")
        try:
            connection.ensure_connection(max_retries=1, timeout=5)
            replies = app.control.ping(timeout=CELERY_PING_S, connection=connection)
        except Exception as exc:  # the broker's client, whichever it is, says why in its own words
            return [
                Finding(
                    PROBLEM,
                    "airflow",
                    f"the Celery broker {broker} cannot be reached ({first_line(exc)}): no task reaches a "
                    "worker; check [celery] broker_url and the broker",
                )
            ]
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return [
            Finding(
                PROBLEM,
                "airflow",
                f"no Celery worker answered on the broker {broker} within {CELERY_PING_S:g} s: the "
                "scheduler queues tasks that no worker runs; start `airflow celery worker`",
            )
        ]
    return [Finding(OK, "airflow", f"Celery worker(s) answering on {broker}: {', '.join(workers)}")]


def _dags(published: list[tuple[Snapshot, CompiledWorkflow]]) -> list[Finding]:
    """Whether Airflow schedules each active published workflow: the dag processor has parsed its DAG
    (Airflow's database holds it), still finds it (not stale), and nobody paused it."""
    import time

    from airflow.configuration import conf
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from careflow.compiler.graph import dag_id_for

    active = {
        dag_id_for(compiled.workflow_id): (compiled.workflow_id, snap.path)
        for snap, compiled in published
        if compiled.status == "active"
    }
    if not active:
        return [
            Finding(OK, "dags", "no active workflow has a snapshot the DAG factory reads: no DAG to look for")
        ]
    d = DagModel
    with create_session() as session:  # found readable by _pool, which runs first
        known = {
            dag_id: (paused, stale or bool(import_errors))
            for dag_id, paused, stale, import_errors in session.execute(
                select(d.dag_id, d.is_paused, d.is_stale, d.has_import_errors).where(d.dag_id.in_(active))
            )
        }
    interval = conf.getint("dag_processor", "min_file_process_interval", fallback=30)
    dags_folder = conf.get("core", "dags_folder")
    now = time.time()

    def some(dag_ids: list[str]) -> str:
        return _workflows([active[i][0] for i in dag_ids])

    unparsed = [i for i in active if i not in known]
    # A snapshot is parsed at the dag processor's next pass over careflow's DAG file.
    new = [i for i in unparsed if now - _mtime(active[i][1]) < 2 * interval]
    missing = [i for i in unparsed if i not in new]
    stale = [i for i, (_, gone) in known.items() if gone]
    paused = [i for i, (is_paused, gone) in known.items() if is_paused and not gone]
    findings = []
    if missing:
        findings.append(
            Finding(
                PROBLEM,
                "dags",
                f"{some(missing)}: not in Airflow's database, so Airflow runs nothing of "
                f"{_them(missing)}: the dag processor has not parsed careflow's DAG file since "
                f"{_they(missing)} published. Run `airflow "
                "dag-processor` (`airflow standalone` runs one) with [core] dags_folder holding "
                f"careflow_workflows.py (here {dags_folder}) and [careflow] workflows_dir as here",
            )
        )
    if new:
        findings.append(
            Finding(
                WARNING,
                "dags",
                f"{some(new)}: published under {2 * interval} s ago and not in Airflow's database yet: "
                f"the dag processor parses careflow's DAG file every {interval} s "
                "([dag_processor] min_file_process_interval); run this again in a minute",
            )
        )
    if stale:
        findings.append(
            Finding(
                PROBLEM,
                "dags",
                f"{some(stale)}: the dag processor no longer builds {_them(stale)} (stale, or an import "
                "error): `careflow workflows list` and `airflow dags list-import-errors` say why",
            )
        )
    if paused:
        findings.append(
            Finding(
                WARNING,
                "dags",
                f"{some(paused)}: paused in Airflow, so no run is scheduled: unpause with the toggle in "
                f"Airflow's UI, or `airflow dags unpause DAG_ID` for {', '.join(paused)}",
            )
        )
    return findings or [
        Finding(OK, "dags", f"{len(active)} active workflow(s), each DAG parsed by Airflow and not paused")
    ]


def _them(many: list[str]) -> str:
    return "them" if len(many) > 1 else "it"


def _they(many: list[str]) -> str:
    return "they were" if len(many) > 1 else "it was"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile: as old as can be
        return 0.0
