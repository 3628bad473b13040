"""``careflow simulate``: run a workflow's real DAG, run by run, on a simulated clock.

Each scheduled run (and each wake run the ``careflow_wake`` task asks for) is executed with
``dag.test()`` in-process, the DAG parsed from the dags folder like in production. The only
difference from production is the clock: the run's conf carries ``careflow_clock``, so a month
of a workflow runs in seconds. Messages go through the configured provider, or are only
recorded with ``--dry-run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select

from careflow.clock import SIMULATED_RUN_PREFIX, parse_time, simulated_conf
from careflow.exceptions import ConfigurationError, first_line

log = logging.getLogger(__name__)

#: Wake runs per scheduled run, at most: a guard against a workflow that keeps waking itself.
MAX_WAKES_PER_RUN = 200
#: The most days one simulation runs (``--days`` of ``careflow simulate`` and ``careflow demo``).
MAX_DAYS = 366


@dataclass
class SimulationResult:
    """Everything a simulation did, for printing and for tests."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failed_runs: list[dict[str, Any]] = field(default_factory=list)
    #: executions the simulated runs enrolled (each enrolled at its run's time)
    enrolled: int = 0

    def counts(self, workflow_id: str) -> dict[str, Any]:
        """How many runs of each kind ran and how many executions they enrolled, for the summary."""
        kinds = Counter(run["kind"] for run in self.runs)
        return {
            "workflow_id": workflow_id,
            "scheduled": kinds["scheduled"],
            "wake": kinds["wake"],
            "enrolled": self.enrolled,
        }


def _quiet_airflow() -> None:
    for name in ("airflow", "airflow.task", "sqlalchemy", "py.warnings", "airflow.models.dagrun"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_dag(dag_id: str) -> Any:
    """Parse the dags folder as the dag-processor does, store the DAGs serialized, and return one."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        manager = DagBundlesManager()
        manager.sync_bundles_to_db()
        for bundle in manager.get_all_dag_bundles():
            bundle.initialize()
            bag = BundleDagBag(bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
            if dag_id in bag.dags:
                sync_bag_to_db(bag, bundle.name, bundle_version=None)
                return bag.dags[dag_id]
    except (OperationalError, ProgrammingError) as exc:  # "no such table", "relation does not exist"
        raise_airflow_database_problem(exc)
        raise
    raise _dag_not_found(dag_id)


def raise_airflow_database_problem(exc: Exception) -> None:
    """ConfigurationError naming Airflow's metadata DB where it is the cause of ``exc``: it has no
    space left, it lacks this Airflow's migrations, or it cannot be read at all (down, a name or
    login refused)."""
    from airflow.settings import get_engine
    from airflow.utils.db import check_migrations
    from sqlalchemy.exc import OperationalError

    from careflow.store.db import out_of_space

    engine = get_engine()
    url = engine.url.render_as_string(hide_password=True)
    driver_error = getattr(exc, "orig", None)
    if out_of_space(engine, driver_error):
        raise ConfigurationError(
            f"Airflow's metadata database ({url}) has no space left: {first_line(driver_error or exc)}; "
            "free space on the disk that holds it, then run this again"
        ) from exc
    try:
        check_migrations(timeout=0)  # compares the DB's migration heads with Airflow's, once
    except TimeoutError:
        raise ConfigurationError(
            f"Airflow's metadata database ({url}) is not migrated: run `airflow db migrate` "
            f"with the same AIRFLOW_HOME and configuration, then run this again"
        ) from exc
    except OperationalError as unread:  # not even its migration heads: the database itself
        raise ConfigurationError(
            f"Airflow's metadata database ({url}) cannot be read: {first_line(unread.orig or unread)}: check "
            "[database] sql_alchemy_conn (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN) and that the database answers"
        ) from exc
    except Exception:  # the heads cannot be read for another reason: the original error says more
        return


def _careflow_dag_file() -> Path:
    """careflow's DAG file, ``dags/careflow_workflows.py`` of the checkout careflow runs from."""
    import careflow

    return Path(careflow.__file__).resolve().parents[2] / "dags" / "careflow_workflows.py"


def _dag_not_found(dag_id: str) -> ConfigurationError:
    """Why ``dag_id`` is not among the parsed DAGs: the workflow is not published, or Airflow parses
    a dags folder without careflow's DAG file."""
    from airflow.configuration import conf

    from careflow import settings
    from careflow.compiler.graph import dag_id_for
    from careflow.snapshots import snapshot_path

    workflow_id = dag_id.removeprefix(dag_id_for(""))
    snapshot = snapshot_path(settings.workflows_dir(), workflow_id)
    if not snapshot.is_file():
        return ConfigurationError(
            f"DAG {dag_id} was not found in the dags folder: publish the workflow first "
            f"(careflow workflows publish FILE) and check `careflow workflows list`"
        )
    dags_folder = Path(conf.get("core", "dags_folder")).expanduser()
    dag_file = _careflow_dag_file()
    if dag_file.is_file():
        where, fix = str(dag_file), str(dag_file.parent)
    else:  # careflow installed as a package: its DAG file was copied wherever the deployment put it
        where, fix = f"{dag_file.parent.name}/{dag_file.name}", "the folder that holds it"
    if (dags_folder / dag_file.name).is_file():
        return ConfigurationError(
            f"workflow {workflow_id} is published ({snapshot}) but {dags_folder / dag_file.name} did not "
            f"build DAG {dag_id}: check `careflow workflows list` and `airflow dags list-import-errors`"
        )
    return ConfigurationError(
        f"workflow {workflow_id} is published ({snapshot}) but DAG {dag_id} is not in the DAGs Airflow "
        f"parses from [core] dags_folder ({dags_folder}), which does not hold careflow's DAG file {where}: "
        f"set [core] dags_folder (AIRFLOW__CORE__DAGS_FOLDER) to {fix}"
    )


def _ledger_rows(workflow_id: str) -> list[dict[str, Any]]:
    from careflow.store import tables
    from careflow.store.db import get_engine

    m = tables.messages
    with get_engine().connect() as conn:
        return [dict(r) for r in conn.execute(select(m).where(m.c.workflow_id == workflow_id)).mappings()]


def _enrolled_at(workflow_id: str, moment: datetime) -> int:
    """How many executions of ``workflow_id`` a run at ``moment`` enrolled (they carry its time)."""
    from careflow.store import tables
    from careflow.store.db import get_engine

    x = tables.executions
    with get_engine().connect() as conn:
        return conn.execute(
            select(func.count()).where(x.c.workflow_id == workflow_id, x.c.enrolled_at == moment)
        ).scalar_one()


def _refuse_live_workflow(workflow_id: str) -> None:
    """Refuse to simulate a workflow whose real runs have enrolled patients in this database.

    A simulation enrolls, records its messages in the ledger (``--dry-run`` records them as sent)
    and purges what ended before its simulated retention, in the same tables as the real runs:
    on their database it would keep them from sending, and delete their history.
    """
    from careflow.store import tables
    from careflow.store.db import database_name, get_engine

    x = tables.executions
    engine = get_engine()
    with engine.connect() as conn:
        live = conn.execute(
            select(x.c.run_id)
            .where(
                x.c.workflow_id == workflow_id,
                or_(x.c.run_id.is_(None), ~x.c.run_id.startswith(SIMULATED_RUN_PREFIX, autoescape=True)),
            )
            .limit(1)
        ).first()
    if live is not None:
        raise ConfigurationError(
            f"workflow {workflow_id!r} has executions enrolled by real runs (run {live[0]!r}) in this "
            f"database ({database_name(engine)}): a simulation enrolls, records messages (--dry-run "
            "records them as sent) and purges past the retention in the same tables, and would keep "
            "those runs from sending. Simulate on a copy of the database (CAREFLOW_DB_URL=… careflow "
            "simulate …) or in the demo (careflow demo)"
        )


def _run_once(
    dag: Any, moment: datetime, dry_run: bool, kind: str, *, airflow_runner: bool, order: list[str]
) -> str:
    conf = simulated_conf(moment, dry_run=dry_run)
    if airflow_runner:
        from airflow.utils.state import DagRunState
        from sqlalchemy.exc import OperationalError

        from careflow.store.db import database_problem_kind

        try:
            dr = dag.test(logical_date=moment, run_after=moment, run_conf=conf)
        except OperationalError as exc:
            # Airflow's own writes: careflow's errors are tagged (and end its tasks, not the run).
            if database_problem_kind(exc) is None:
                raise_airflow_database_problem(exc)
            raise
        state = getattr(dr, "state", None)
        return str(state.value if isinstance(state, DagRunState) else state)
    return _run_tasks_in_order(dag, moment, conf, kind, order)


def task_context(dag: Any, run_id: str, moment: datetime, conf: dict[str, Any]) -> dict[str, Any]:
    """What an operator of ``dag`` reads of Airflow's context in run ``run_id`` at ``moment`` with ``conf``."""
    from types import SimpleNamespace

    return {
        "dag_run": SimpleNamespace(conf=conf, run_id=run_id, dag_id=dag.dag_id),
        "run_id": run_id,
        "logical_date": moment,
        "data_interval_start": None,
        "data_interval_end": moment,
        "params": conf,
    }


def _run_tasks_in_order(dag: Any, moment: datetime, conf: dict[str, Any], kind: str, order: list[str]) -> str:
    """Run the parsed DAG's own operators in dependency order, in-process, with Airflow-style retries.

    This is what ``dag.test()`` does minus Airflow's task runner bookkeeping (which costs about a
    second per task on SQLite): the same operator objects, the same engine code, the same clock. As
    in Airflow, a task downstream of one that failed does not run (``upstream_failed``), and the
    wake task, a teardown, runs whatever the others did.
    """
    run_id = f"{SIMULATED_RUN_PREFIX}{kind}__{moment.strftime('%Y%m%dT%H%M%S')}"
    context = task_context(dag, run_id, moment, conf)
    state = "success"
    failed: set[str] = set()  # failed, or upstream_failed
    for task_id in order:
        task = dag.get_task(task_id)
        if not task.is_teardown and not failed.isdisjoint(task.upstream_task_ids):
            failed.add(task_id)
            continue
        for attempt in range((task.retries or 0) + 1):
            try:
                task.execute(context)
                break
            except Exception as exc:  # a failed attempt is retried like Airflow would, without waiting
                if attempt >= (task.retries or 0):
                    from careflow.store.db import what_failed

                    print(
                        f"careflow simulate: {dag.dag_id}.{task_id} failed at {moment.isoformat()} after "
                        f"{attempt + 1} attempt(s): {what_failed(exc)}",
                        file=sys.stderr,
                    )
                    state = "failed"
                    failed.add(task_id)
    return state


def simulate_workflow(
    workflow_id: str,
    start: datetime,
    days: int,
    *,
    dry_run: bool = False,
    on_message: Any = None,
    airflow_runner: bool = False,
) -> SimulationResult:
    """Run ``days`` days of a workflow's scheduled and wake runs on a simulated clock."""
    from careflow import settings
    from careflow.compiler.graph import dag_id_for
    from careflow.compiler.schedule import next_run_after, runs_between
    from careflow.engine.context import RunContext
    from careflow.engine.nodes import next_wake
    from careflow.snapshots import load_one
    from careflow.store.db import get_engine
    from careflow.store.migrations import check_ready

    check_ready()
    _refuse_live_workflow(workflow_id)
    # This process runs the simulated runs it starts (workers refuse them: settings.allow_simulated_runs).
    os.environ["AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS"] = "true"
    _quiet_airflow()
    _, compiled = load_one(settings.workflows_dir(), workflow_id)
    if compiled.status != "active":
        raise ConfigurationError(
            f"workflow {workflow_id} is published as {compiled.status} (version {compiled.version}): "
            "only an active workflow becomes a DAG, so there is none to simulate; publish it with "
            '"status": "active" where no real run reads its executions (the demo, or a copy of the '
            "database: CAREFLOW_DB_URL=… careflow simulate …)"
        )
    dag = load_dag(dag_id_for(workflow_id))
    order = [*compiled.order, "careflow_wake"]
    end = start + timedelta(days=days)
    result = SimulationResult()
    seen: dict[str, tuple[str, str | None]] = {
        r["idempotency_key"]: (r["status"], r["reason"]) for r in _ledger_rows(workflow_id)
    }

    def run(moment: datetime, kind: str) -> None:
        # An earlier simulation of the same days left executions with this run's time: counted
        # before the run, so that only those this run enrolls are.
        enrolled_before = _enrolled_at(workflow_id, moment)
        state = _run_once(dag, moment, dry_run, kind, airflow_runner=airflow_runner, order=order)
        result.runs.append({"time": moment.isoformat(), "kind": kind, "state": state})
        result.enrolled += _enrolled_at(workflow_id, moment) - enrolled_before
        if state != "success":
            result.failed_runs.append({"time": moment.isoformat(), "kind": kind, "state": state})
        for row in sorted(_ledger_rows(workflow_id), key=lambda r: (r["updated_at"], r["idempotency_key"])):
            key = row["idempotency_key"]
            now_state = (row["status"], row["reason"])
            if seen.get(key) == now_state or row["status"] in ("pending", "claimed"):
                continue
            seen[key] = now_state
            item = {
                "time": moment.isoformat(),
                "workflow_id": workflow_id,
                "execution_id": row["execution_id"],
                "node_id": row["node_id"],
                "patient_id": row["patient_id"],
                "channel": row["channel"],
                "outcome": row["status"],
                "reason": row["reason"],
                "due_at": row["due_at"].isoformat() if row["due_at"] else None,
            }
            result.messages.append(item)
            if on_message:
                on_message(item)

    for moment in runs_between(compiled, start, end):
        run(moment, "scheduled")
        upcoming = next_run_after(compiled, moment)
        clock = moment
        for _ in range(MAX_WAKES_PER_RUN):
            wake = next_wake(RunContext(compiled=compiled, now=clock, engine=get_engine()))
            if wake is None or wake >= upcoming or wake >= end:
                break
            run(wake, "wake")
            clock = wake
    return result


def summarize(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per workflow, node, day and outcome; skips and failures by reason."""
    by_workflow: Counter = Counter()
    by_node: Counter = Counter()
    by_day: Counter = Counter()
    reasons: Counter = Counter()
    for m in messages:
        by_workflow[(m["workflow_id"], m["outcome"])] += 1
        by_node[(m["workflow_id"], m["node_id"], m["outcome"])] += 1
        by_day[(m["time"][:10], m["outcome"])] += 1
        if m["outcome"] != "sent":
            reasons[(m["workflow_id"], m["node_id"], m["outcome"], m["reason"])] += 1
    return {
        "by_workflow": [
            {"workflow_id": w, "outcome": o, "count": c} for (w, o), c in sorted(by_workflow.items())
        ],
        "by_node": [
            {"workflow_id": w, "node_id": n, "outcome": o, "count": c}
            for (w, n, o), c in sorted(by_node.items())
        ],
        "by_day": [{"day": d, "outcome": o, "count": c} for (d, o), c in sorted(by_day.items())],
        "not_sent": [
            {"workflow_id": w, "node_id": n, "outcome": o, "reason": r, "count": c}
            for (w, n, o, r), c in sorted(reasons.items(), key=lambda kv: -kv[1])
        ],
    }


def check_days(days: int) -> None:
    """ConfigurationError naming ``--days`` where it is not a number of days a simulation runs."""
    if not 1 <= days <= MAX_DAYS:
        raise ConfigurationError(f"--days must be between 1 and {MAX_DAYS}, got {days}")


def simulate(args: argparse.Namespace) -> int:
    """The ``careflow simulate`` command."""
    # Before Airflow is imported: its per-run logging would drown the message lines.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    try:
        start = parse_day_or_time(args.start)
    except ValueError as exc:
        raise ConfigurationError(f"--start {exc}") from None
    check_days(args.days)
    workflow_ids = _workflow_ids(args.workflow)

    def show(item: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"type": "message", **item}, ensure_ascii=False), file=args.answer, flush=True)
        else:
            reason = f" ({item['reason']})" if item["reason"] else ""
            print(
                f"{item['time'][:16]}  {item['workflow_id']:<22} {item['node_id']:<10} "
                f"exec {item['execution_id'][:10]}  patient {item['patient_id']:<8} "
                f"{item['channel']:<6} {item['outcome']}{reason}",
                flush=True,
            )

    everything: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for workflow_id in workflow_ids:
        result = simulate_workflow(
            workflow_id,
            start,
            args.days,
            dry_run=args.dry_run,
            on_message=show,
            airflow_runner=getattr(args, "airflow_runner", False),
        )
        everything += result.messages
        failed += [{"workflow_id": workflow_id, **f} for f in result.failed_runs]
        runs.append(result.counts(workflow_id))
    summary = summarize(everything)
    summary["start"] = start.isoformat()
    summary["end"] = (start + timedelta(days=args.days)).isoformat()
    summary["runs"] = runs
    summary["failed_runs"] = failed
    if args.json:
        print(json.dumps({"type": "summary", **summary}, ensure_ascii=False), file=args.answer)
    else:
        print_summary(summary)
    return 0 if not failed else 1


def parse_day_or_time(value: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time (UTC when no offset is given), as typed on a command line.

    A ValueError says what is expected, also for a time that leaves years 1 to 9999 in UTC.
    """
    try:
        return parse_time(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r}: expected YYYY-MM-DD or an ISO 8601 time, e.g. 2026-03-02 or 2026-03-02T09:00+09:00"
        ) from None
    except OverflowError:  # 0001-01-01T00:00+14:00 is a valid ISO time, but before year 1 in UTC
        raise ValueError(f"{value!r}: out of range once converted to UTC (years 1 to 9999)") from None


def _workflow_ids(spec: str) -> list[str]:
    if spec != "all":
        return [w for w in spec.split(",") if w]
    from careflow import settings
    from careflow.snapshots import load_all

    good, _ = load_all(settings.workflows_dir())
    return [compiled.workflow_id for _, compiled in good if compiled.status == "active"]


def print_summary(summary: dict[str, Any], out: Any = None) -> None:
    """A readable summary: per workflow, per node, per day, and what was not sent and why."""
    out = out or sys.stdout
    w = out.write
    if "runs" in summary:
        w(f"\n== runs from {summary['start'][:16]} to {summary['end'][:16]} UTC (the simulated clock) ==\n")
        for row in summary["runs"]:
            w(
                f"  {row['workflow_id']:<28} {row['scheduled']:>5} scheduled {row['wake']:>5} wake "
                f"{row['enrolled']:>7} enrolled\n"
            )
    w("\n== messages per workflow ==\n")
    for row in summary["by_workflow"]:
        w(f"  {row['workflow_id']:<28} {row['outcome']:<8} {row['count']:>5}\n")
    w("\n== messages per node ==\n")
    for row in summary["by_node"]:
        w(f"  {row['workflow_id']:<28} {row['node_id']:<12} {row['outcome']:<8} {row['count']:>5}\n")
    w("\n== messages per day ==\n")
    days: dict[str, Counter] = {}
    for row in summary["by_day"]:
        days.setdefault(row["day"], Counter())[row["outcome"]] = row["count"]
    for day, counts in days.items():
        w(f"  {day}  " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())) + "\n")
    w("\n== not sent, by reason ==\n")
    for row in summary["not_sent"] or [
        {"workflow_id": "-", "node_id": "-", "outcome": "-", "reason": "none", "count": 0}
    ]:
        w(
            f"  {row['workflow_id']:<28} {row['node_id']:<12} {row['outcome']:<8} {row['reason'] or '-':<36} {row['count']:>5}\n"
        )
    if summary.get("failed_runs"):
        w(f"\n!! {len(summary['failed_runs'])} DAG run(s) did not succeed: {summary['failed_runs'][:5]}\n")


__all__ = [
    "SimulationResult",
    "load_dag",
    "parse_day_or_time",
    "simulate",
    "simulate_workflow",
    "summarize",
]
