"""Smoke tests of the benchmarks' own machinery (they measure nothing; ``python -m benchmarks`` does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmarks import harness, seed_engine
from benchmarks.parse_workflows import generate

from careflow.providers.fake_server import FakeProviderServer
from support import GroupedProcess


def test_seed_plan_follows_delays_and_branches() -> None:
    """The seed's plan: an action behind a 3-day delay and a true condition is due on day 3 only."""
    nodes = [
        {"id": "t", "type": "trigger", "data": {}},
        {"id": "d", "type": "delay", "data": {"amount": 3, "unit": "days"}},
        {
            "id": "c",
            "type": "condition",
            "data": {"all": [{"field": "patient.age", "op": "gte", "value": 20}]},
        },
        {"id": "yes", "type": "action", "data": {"channel": "sms", "template": "hi {{ patient.name }}"}},
        {"id": "no", "type": "action", "data": {"channel": "sms", "template": "no"}},
    ]
    edges = [
        {"source": "t", "target": "d"},
        {"source": "d", "target": "c"},
        {"source": "c", "target": "yes", "sourceHandle": "true"},
        {"source": "c", "target": "no", "sourceHandle": "false"},
    ]
    adult = {"patient": {"age": 30, "name": "김"}}
    assert [a.node_id for a in seed_engine.calculate_execution_plan(nodes, edges, adult, 3)] == ["yes"]
    assert seed_engine.calculate_execution_plan(nodes, edges, adult, 2) == []
    child = {"patient": {"age": 10}}
    assert [a.node_id for a in seed_engine.calculate_execution_plan(nodes, edges, child, 3)] == ["no"]
    assert seed_engine.render("hi {{ patient.name }}", adult) == "hi 김"


@pytest.mark.postgres
def test_seed_engine_sends_each_due_message_once(pg_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline loop sends one message per patient through the provider and logs it."""
    from careflow.store import tables
    from careflow.store.db import dispose_engines, get_engine
    from careflow.store.migrations import upgrade

    monkeypatch.setenv("CAREFLOW_DB_URL", pg_server_url)
    dispose_engines()
    engine = get_engine(pg_server_url)  # as the benchmark loads its clinic
    tables.metadata.drop_all(engine)
    upgrade(engine)
    harness.load_clinic(engine, 5)
    with FakeProviderServer() as fake:
        result = seed_engine.run_seed(
            seed_engine.libpq_dsn(pg_server_url),
            harness.workflow_document(5),
            fake.url,
            fake.token,
            harness.RUN_AT,
            limit=5,
            provider_pid=os.getpid(),  # the fake provider runs in a thread of this process here
        )
        assert (result.messages, result.patients, fake.stats()["accepted"]) == (5, 5, 5)
    assert result.round_trips == 1 + 2 * 5  # the load, then a duplicate check and an insert per message
    # its CPU: its own process's, and its backend's on this machine's Postgres (None: unreadable)
    assert result.cpu_s > 0 and result.database_cpu_s is not None and result.database_cpu_s >= 0
    assert result.provider_cpu_s is not None and result.provider_cpu_s >= 0
    engine.dispose()


WORKFLOWS = 2


def test_the_three_builders_build_the_same_dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """careflow's factory, the dag-factory YAML and the hand-written files give the same DAGs."""
    import importlib.util

    import dagfactory
    from benchmarks.parse_compare import write_sources

    from careflow.airflow.factory import build_dags

    workflows, yaml_dir, python_dir = tmp_path / "workflows", tmp_path / "yaml", tmp_path / "python"
    generate(workflows, WORKFLOWS, seed=3)
    monkeypatch.setenv("AIRFLOW__CAREFLOW__WORKFLOWS_DIR", str(workflows))
    write_sources(workflows, yaml_dir, python_dir)
    careflow, _ = build_dags(workflows)
    from_yaml: dict = {}
    dagfactory.load_yaml_dags(globals_dict=from_yaml, dags_folder=str(yaml_dir))
    handwritten = {}
    for path in sorted(python_dir.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"smoke_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handwritten[module.dag.dag_id] = module.dag

    def shape(dag) -> tuple:
        tasks = sorted(
            (t.task_id, t.task_display_name, tuple(sorted(t.upstream_task_ids)), t.retries, t.pool)
            for t in dag.tasks
        )
        return (str(dag.timetable), dag.max_active_tasks, dag.max_active_runs, sorted(dag.params), tasks)

    yaml_ids = {k for k in from_yaml if k.startswith("careflow__")}
    # one DAG per generated workflow from each builder, each with its tasks
    assert (len(careflow), len(yaml_ids), len(handwritten)) == (WORKFLOWS, WORKFLOWS, WORKFLOWS)
    assert set(careflow) == set(handwritten) == yaml_ids
    for dag_id, dag in careflow.items():
        assert dag.tasks, dag_id
        assert shape(dag) == shape(from_yaml[dag_id]) == shape(handwritten[dag_id])


def test_cpu_per_message_adds_up_every_process_or_says_it_cannot() -> None:
    """The engine-overhead CPU figures: per message, per process, and a total only when all are known."""
    from types import SimpleNamespace

    from benchmarks.__main__ import cpu_per_message

    action = SimpleNamespace(detail={"cpu_s": 1.2, "send_process_cpu_s": 0.4, "database_cpu_s": 0.8})
    run = SimpleNamespace(messages=4000, action=action, provider_cpu_s=0.2, redis_cpu_s=0.04)
    assert cpu_per_message(run) == {
        "task": 0.3,
        "send_process": 0.1,
        "database": 0.2,
        "redis": 0.01,
        "provider": 0.05,
        "total": 0.66,
    }
    run.redis_cpu_s = None  # a Redis server on another machine
    assert cpu_per_message(run)["redis"] is None and cpu_per_message(run)["total"] is None
    run.redis_cpu_s = 0.04
    action.detail["database_cpu_s"] = None  # a database server on another machine
    assert cpu_per_message(run)["database"] is None and cpu_per_message(run)["total"] is None


def test_the_seeds_cpu_a_message_adds_up_its_processes_or_says_it_cannot() -> None:
    """The seed's loop, its Postgres backend and the fake provider, per message; a total only when all are known."""
    from benchmarks.__main__ import cores_busy, seed_cpu_per_message

    result = seed_engine.SeedResult(
        messages=2000,
        seconds=1.25,
        round_trips=4001,
        patients=2000,
        cpu_s=0.5,
        database_cpu_s=0.36,
        provider_cpu_s=0.16,
    )
    cpu = seed_cpu_per_message(result)
    assert cpu == {"seed_process": 0.25, "database": 0.18, "provider": 0.08, "total": 0.51}
    assert cores_busy(result.msgs_per_s, cpu) == 0.82  # 1,600 msg/s × 0.51 ms: they take turns
    result.database_cpu_s = None  # a database server on another machine
    assert seed_cpu_per_message(result)["database"] is None and seed_cpu_per_message(result)["total"] is None


def test_cores_busy_is_the_rate_times_the_cpu_a_message() -> None:
    from benchmarks.__main__ import cores_busy

    assert cores_busy(5000.0, {"total": 0.26}) == 1.3
    assert cores_busy(5000.0, {"total": None}) is None


def test_process_cpu_is_read_from_proc() -> None:
    """This process has used some CPU; a process that does not exist has none to report."""
    from benchmarks.run_task import process_cpu_s

    mine = process_cpu_s(os.getpid())
    if not Path("/proc/self/stat").exists():
        assert mine is None
        return
    assert mine is not None and mine > 0
    assert process_cpu_s(2**22 + 7) is None  # above Linux's largest pid


@pytest.mark.redis
def test_the_local_redis_server_is_found_and_a_remote_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis' CPU counts where its server runs here; elsewhere the figure says it cannot tell."""
    from benchmarks import harness
    from benchmarks.run_task import process_cpu_s

    pid = harness.redis_server_pid()
    assert pid is not None and Path(f"/proc/{pid}/comm").read_text().startswith("redis")
    assert process_cpu_s(pid) is not None
    monkeypatch.setattr(harness, "REDIS_URL", "redis://redis.example.invalid:6379/0")
    assert harness.redis_server_pid() is None


@pytest.mark.postgres
def test_backend_cpu_covers_the_connections_to_this_database(pg_server_url: str) -> None:
    """The Postgres backends serving the benchmark database are found, the asking one included."""
    from benchmarks.run_task import backend_cpu_s, postgres_process_cpu_s
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            # Read while this connection holds the backend: once it closes, the backend exits.
            held = postgres_process_cpu_s(pid)
        cpu = backend_cpu_s(engine)
    finally:
        engine.dispose()
    assert pid in cpu and cpu[pid] >= 0
    # A pid that is not a Postgres process here (a server elsewhere reports its own) counts nothing.
    assert held is not None and postgres_process_cpu_s(os.getpid()) is None
    sqlite = create_engine("sqlite://")
    assert backend_cpu_s(sqlite) == {}


def test_a_small_dag_run_goes_through_the_benchmarks_task_processes(pg_server_url: str) -> None:
    # The path `python -m benchmarks` measures, at a size that takes seconds: trigger, action and
    # wake tasks in processes of their own, against Postgres and the fake provider.
    from benchmarks import harness, throughput

    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    size = 30
    with harness.bench_database() as db, harness.careflow_env(db.url) as env:
        engine = get_engine(db.url)
        upgrade(engine)
        harness.load_clinic(engine, size)
        harness.publish(env, size)
        with harness.fake_provider(0) as fake:
            run = throughput.run_dag(env, fake, harness.workflow_id_for(size), 10, size)
        engine.dispose()
    assert run.messages == size
    assert [task.task for task in run.tasks] == ["t1", "a1", "careflow_wake"]
    # the provider's first and last accepted message fall inside the action task
    assert run.first_accepted_after_s is not None and run.ended_after_last_s is not None
    assert run.first_accepted_after_s > 0 and run.ended_after_last_s > 0 and run.accepting_s >= 0
    assert run.first_accepted_after_s + run.accepting_s + run.ended_after_last_s == pytest.approx(
        run.action.seconds, abs=0.01
    )


def test_each_compared_figure_is_the_median_round() -> None:
    """Three rounds give the middle one, whatever order they came in; every round is kept beside it."""
    from types import SimpleNamespace

    from benchmarks.__main__ import median_of, round_rates

    def careflow(seconds: float) -> SimpleNamespace:
        return SimpleNamespace(messages=1000, action=SimpleNamespace(seconds=seconds))

    runs = [careflow(0.5), careflow(0.25), careflow(0.4)]  # 2,000, 4,000 and 2,500 msg/s
    assert median_of(runs, lambda r: r.messages / r.action.seconds) is runs[2]
    assert median_of([3.0, 1.0], float) == 1.0  # an even count: the lower middle
    with pytest.raises(ValueError, match="no runs"):
        median_of([], float)
    seeds = [SimpleNamespace(msgs_per_s=rate) for rate in (400.0, 900.0, 600.0)]
    alone = [{"msgs_per_s": rate} for rate in (2000.0, 2100.0, 1900.0)]
    assert round_rates({"c": runs, "s": seeds, "a": alone}, "c", "s", "a") == {
        "rounds": 3,
        "careflow_rounds_msgs_per_s": [2000.0, 4000.0, 2500.0],
        "seed_rounds_msgs_per_s": [400.0, 900.0, 600.0],
        "provider_alone_rounds_msgs_per_s": [2000.0, 2100.0, 1900.0],
    }


def test_the_project_is_compiled_before_anything_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task processes read careflow's bytecode instead of compiling it, even where no process writes it."""
    import importlib.util
    import sys

    from benchmarks import __main__ as bench

    for folder in ("plugins/careflow", "dags", "benchmarks"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "module.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.setattr(harness, "REPO", tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE=1
    bench.compile_project()
    for folder in ("plugins/careflow", "dags", "benchmarks"):
        assert Path(importlib.util.cache_from_source(str(tmp_path / folder / "module.py"))).is_file()


def test_a_stopped_benchmark_kills_the_task_process_it_waits_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while a task runs, the task's process is killed rather than left to run on
    against the database and home the benchmark then removes."""
    import subprocess
    import sys

    from benchmarks import throughput

    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    class Interrupted(real_popen):  # type: ignore[valid-type,misc]
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            super().__init__([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
            started.append(self)

        def communicate(self, *args: object, **kwargs: object) -> tuple[str, str]:
            raise KeyboardInterrupt

    monkeypatch.setattr(throughput.subprocess, "Popen", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        throughput.run_task(dict(os.environ), "w", "t1")
    [process] = started
    assert process.returncode == -9  # SIGKILL, and reaped


def test_a_sigterm_stops_the_benchmarks_and_drops_their_database(pg_server_url: str) -> None:
    """``python -m benchmarks`` stopped with SIGTERM ends as on Ctrl+C: its database is dropped."""
    import signal
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    server = pg_server_url.rsplit("/", 1)[0]
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")

    def bench_databases() -> set[str]:
        with admin.connect() as conn:
            rows = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'careflow_bench_%'"))
            return {row[0] for row in rows}

    before = bench_databases()
    group = GroupedProcess("benchmarks", [sys.executable, "-m", "benchmarks", "--smoke"])
    group.launch(
        subprocess.DEVNULL,
        {**os.environ, "CAREFLOW_BENCH_PG": server},
        Path(harness.__file__).resolve().parents[1],
        errors=subprocess.PIPE,
    )
    run = group.process
    assert run is not None and run.stderr is not None
    try:
        for line in map(bytes.decode, run.stderr):
            if "careflow: 200 messages" in line:  # its database and a fake provider exist by now
                break
        created = bench_databases() - before
        assert created, "the benchmark created no database"
        run.send_signal(signal.SIGTERM)  # to the benchmarks alone, as a supervisor stopping them would
        _, errors = run.communicate(timeout=60)
        rest = errors.decode()
        assert run.returncode == 128 + signal.SIGTERM, rest[-3000:]
        assert "stopped (SIGTERM)" in rest
        assert not (bench_databases() & created)
    finally:
        group.finish(grace_s=0)  # what a failure left behind (fake providers, task processes): killed
        with admin.connect() as conn:  # and the database a killed run could not drop
            for name in bench_databases() - before:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
