"""Run one task of a published workflow's real DAG in this process, and measure it.

The DAG is built by careflow's factory from the published snapshot, exactly as Airflow's DAG
processor builds it when a worker runs a task (the parsing context names the DAG). The task's own
operator then runs with the run's context, as ``careflow simulate`` does. Printed as one JSON
line: the task's counts (its XCom), wall seconds, database round trips, this process' peak RSS,
and the CPU the task took: its own, its send process's and its Postgres backends'.

    python -m benchmarks.run_task --workflow ID --task TASK --at ISO_TIME

The environment (``benchmarks.harness.CareflowEnv``) points it at the database and the provider.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any


def count_round_trips(engine: Any) -> dict[str, int]:
    """Count what goes over the wire to the database: pings on checkout, BEGIN, statements, COMMIT."""
    from sqlalchemy import event

    counts = {"statements": 0, "begins": 0, "commits": 0, "checkouts": 0}
    lock = threading.Lock()  # the action task records on a thread of its own while it prepares

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    def statement(*_: Any) -> None:
        count("statements")

    def begin(*_: Any) -> None:
        count("begins")

    def commit(*_: Any) -> None:
        count("commits")

    def checkout(*_: Any) -> None:
        count("checkouts")  # pool_pre_ping: one round trip per checkout

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", commit)
    event.listen(engine.pool, "checkout", checkout)
    return counts


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process on this machine, from ``/proc``; None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_spent(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two readings of a process, None where either could not be read."""
    return None if before is None or after is None else after - before


def postgres_process_cpu_s(pid: int) -> float | None:
    """CPU seconds of the Postgres backend ``pid`` where it runs on this machine; else None.

    Checked against ``/proc``: a server on another host or in a container reports pids that are
    not its processes here (or are someone else's).
    """
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
            return None
    except OSError:
        return None
    return process_cpu_s(pid)


def backend_cpu_s(engine: Any) -> dict[int, float]:
    """CPU seconds of every Postgres backend serving this database, by pid (empty off Postgres).

    Read from ``/proc``, so only where the server runs on this machine (the benchmark's case).
    """
    if engine.dialect.name != "postgresql":
        return {}
    from sqlalchemy import text

    with engine.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND backend_type = 'client backend'"
            )
        ).scalars()
        cpu = {int(pid): postgres_process_cpu_s(int(pid)) for pid in pids}
    return {pid: seconds for pid, seconds in cpu.items() if seconds is not None}


def _cpu_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run(workflow_id: str, task_id: str, at: str) -> dict[str, Any]:
    """Build the DAG, run one task, and measure it."""
    os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = f"careflow__{workflow_id}"
    # The benchmark's runs are simulated runs on a database of its own: this process runs them.
    os.environ["AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS"] = "true"
    started = time.perf_counter()
    from careflow.airflow.factory import build_dags
    from careflow.clock import parse_time, simulated_conf
    from careflow.simulation import task_context
    from careflow.store.db import get_engine

    dags, problems = build_dags()
    if problems:
        raise SystemExit(f"the snapshot did not load: {problems}")
    dag = dags[f"careflow__{workflow_id}"]
    task: Any = dag.get_task(task_id)
    moment = parse_time(at)
    conf = simulated_conf(moment, dry_run=False)
    run_id = f"careflow_bench__{moment.strftime('%Y%m%dT%H%M%S')}"
    context = task_context(dag, run_id, moment, conf)
    engine = get_engine()
    backends_before = backend_cpu_s(engine)
    counts = count_round_trips(engine)
    own_before = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
    children_before = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN))
    ready = time.perf_counter()
    started_at = time.time()
    result = task.execute(context)
    finished = time.perf_counter()
    ended_at = time.time()
    own = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - own_before
    children = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN)) - children_before
    round_trips = dict(counts)  # before the query below adds its own
    # A backend that started during the task counts from zero; one that ended during it is missed.
    backends = backend_cpu_s(engine)
    database = sum(seconds - backends_before.get(pid, 0.0) for pid, seconds in backends.items())
    return {
        "task": task_id,
        "result": result,
        "setup_s": ready - started,
        "seconds": finished - ready,
        "execute_started_at": started_at,
        "execute_ended_at": ended_at,
        "round_trips": sum(round_trips.values()),
        "round_trip_detail": round_trips,
        # CPU seconds during the task: this process (every thread), the send process it forked and
        # reaped, and the database's backends for this database (None where /proc cannot tell)
        "cpu_s": round(own, 3),
        "send_process_cpu_s": round(children, 3),
        "database_cpu_s": round(database, 3) if backends else None,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        # the action task's send process (forked and reaped by the task): the largest child's
        # high-water mark, shared copy-on-write pages included; 0 when it started none
        "send_process_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_task", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--at", required=True, help="the run's simulated time (ISO 8601)")
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    print(json.dumps(run(args.workflow, args.task, args.at), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
