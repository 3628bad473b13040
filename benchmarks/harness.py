"""What the send benchmarks share: a throwaway Postgres database, clinic data loaded in bulk, the
fake provider in its own process, and the environment a careflow task needs to run against them.

Nothing here imports Airflow; careflow's store is imported lazily, after the environment is set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("CAREFLOW_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CAREFLOW_BENCH_REDIS", "redis://127.0.0.1:6379/0")
KST = timezone(timedelta(hours=9))
#: The simulated "now" of every benchmark run: a Monday morning in Seoul.
RUN_AT = datetime(2026, 3, 2, 10, 0, tzinfo=KST)
TEMPLATE = "{{ patient.name }}님, {{ clinic.name }}입니다. 내원해 주셔서 감사합니다."


def clinic_id_for(patients: int) -> str:
    """One clinic per data size, so that several sizes live side by side in one database."""
    return f"bench-clinic-{patients}"


def workflow_id_for(patients: int) -> str:
    """The workflow that messages every patient of ``clinic_id_for(patients)``."""
    return f"bench-visit-thanks-{patients}"


def workflow_document(patients: int) -> dict[str, Any]:
    """A trigger (appointment completed) and one KakaoTalk care message: one message per patient."""
    return {
        "id": workflow_id_for(patients),
        "name": f"내원 감사 알림톡 ({patients})",
        "clinic_id": clinic_id_for(patients),
        "status": "active",
        "timezone": "Asia/Seoul",
        "nodes": [
            {
                "id": "t1",
                "type": "trigger",
                "data": {"label": "진료 완료", "event": "appointment_completed", "schedule": "@daily"},
            },
            {
                "id": "a1",
                "type": "action",
                "data": {"label": "감사 알림톡", "channel": "kakao", "template": TEMPLATE},
            },
        ],
        "edges": [{"id": "e1", "source": "t1", "target": "a1"}],
    }


# ---------------------------------------------------------------- the database


@dataclass
class BenchDatabase:
    """A fresh Postgres database for one benchmark run, dropped at the end."""

    name: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database."""
        return f"{PG_SERVER}/{self.name}"


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """Create ``careflow_bench_<random>``, yield it, drop it."""
    from sqlalchemy import create_engine, text

    db = BenchDatabase(f"careflow_bench_{uuid.uuid4().hex[:10]}")
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db.name}"'))
    try:
        yield db
    finally:
        from careflow.store.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
        admin.dispose()


def _copy(raw: Any, table: str, columns: list[str], rows: Iterator[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    buffer.seek(0)
    with raw.cursor() as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer)


def load_clinic(engine: Any, patients: int) -> float:
    """One clinic with ``patients`` patients, each with one appointment completed two hours before
    ``RUN_AT`` (so one message each is due); loaded with COPY. Returns the seconds it took."""
    started = time.perf_counter()
    clinic = clinic_id_for(patients)
    completed = (RUN_AT - timedelta(hours=2)).astimezone(timezone.utc)
    scheduled = completed - timedelta(hours=1)
    raw = engine.raw_connection()
    try:
        _copy(
            raw,
            "clinics",
            ["id", "name", "phone", "timezone"],
            iter([[clinic, f"벤치마크 치과 {patients}", "02-555-0101", "Asia/Seoul"]]),
        )
        prefix = f"p{patients}-"
        _copy(
            raw,
            "patients",
            ["id", "clinic_id", "name", "phone", "consent_messages", "attributes"],
            (
                [
                    f"{prefix}{i}",
                    clinic,
                    f"환자{i}",
                    f"010-{5000 + i // 10000:04d}-{i % 10000:04d}",
                    "t",
                    "{}",
                ]
                for i in range(patients)
            ),
        )
        _copy(
            raw,
            "appointments",
            [
                "id",
                "patient_id",
                "clinic_id",
                "type",
                "status",
                "scheduled_at",
                "created_at",
                "completed_at",
                "attributes",
            ],
            (
                [
                    f"{prefix}{i}-a",
                    f"{prefix}{i}",
                    clinic,
                    "checkup",
                    "completed",
                    scheduled.isoformat(),
                    (scheduled - timedelta(days=7)).isoformat(),
                    completed.isoformat(),
                    "{}",
                ]
                for i in range(patients)
            ),
        )
        _copy(
            raw,
            "appointment_events",
            ["id", "appointment_id", "patient_id", "clinic_id", "type", "occurred_at"],
            (
                [
                    f"{prefix}{i}-e",
                    f"{prefix}{i}-a",
                    f"{prefix}{i}",
                    clinic,
                    "appointment_completed",
                    (completed + timedelta(microseconds=i)).isoformat(),
                ]
                for i in range(patients)
            ),
        )
        raw.commit()
        with raw.cursor() as cur:
            cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def reset_careflow_state(engine: Any, redis_prefix: str | None = None) -> None:
    """Forget every execution, step and message (the clinic data stays): the next run enrolls again.

    With ``redis_prefix``, also every careflow key under it. The sent-keys cache remembers the
    keys the last run sent for five minutes; the next run has the same executions, so without
    this every message would be a suspect (a ledger that lost its writes) and be looked up at
    the provider before it is sent.
    """
    from sqlalchemy import text

    if redis_prefix:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            doomed = list(client.scan_iter(match=f"{redis_prefix}:*", count=1000))
            for start in range(0, len(doomed), 1000):
                client.unlink(*doomed[start : start + 1000])
        finally:
            client.close()

    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE careflow_messages, careflow_steps, careflow_executions, "
                "careflow_enrollment_watermarks"
            )
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


# ---------------------------------------------------------------- the fake provider


def redis_server_pid() -> int | None:
    """The pid of the Redis server the benchmark uses, where it runs on this machine; else None.

    Taken from the server's own ``INFO`` and checked against ``/proc``: a server in a container
    or on another host reports a pid that is not its process here.
    """
    import redis

    if urlsplit(REDIS_URL).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    client = redis.Redis.from_url(REDIS_URL)
    try:
        pid = int(client.info("server")["process_id"])
    except Exception:
        return None
    finally:
        client.close()
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if command.startswith("redis") else None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeProviderProcess:
    """The fake provider running as its own process (its own interpreter and GIL)."""

    url: str
    token: str
    latency_ms: float
    process: subprocess.Popen

    def stats(self) -> dict[str, Any]:
        """The provider's counters (``GET /v1/stats?brief=1``)."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/v1/stats?brief=1", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def reset(self) -> None:
        """Clear the provider's messages and counters."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/v1/admin/reset",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()


@contextmanager
def fake_provider(latency_ms: float) -> Iterator[FakeProviderProcess]:
    """``python -m careflow.providers.fake_server`` on a free port, stopped at the end."""
    port = free_port()
    token = f"bench-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "careflow.providers.fake_server",
            "--port",
            str(port),
            "--token",
            token,
            "--latency-ms",
            f"{latency_ms:g}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake provider did not start on port {port}") from None
                time.sleep(0.05)
        yield FakeProviderProcess(f"http://127.0.0.1:{port}", token, latency_ms, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- careflow's environment


@dataclass
class CareflowEnv:
    """The environment variables that point careflow (and Airflow) at the benchmark's pieces."""

    home: Path
    workflows_dir: Path
    db_url: str
    #: careflow's keys in Redis for this benchmark only (breaker state, caches)
    redis_prefix: str = field(default_factory=lambda: f"careflow-bench-{uuid.uuid4().hex[:8]}")

    def variables(self, provider: FakeProviderProcess | None = None, concurrency: int = 50) -> dict[str, str]:
        """Environment for a careflow task process (connections from the environment only)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(self.workflows_dir),
                "CAREFLOW_DB_URL": self.db_url,
                "CAREFLOW_REDIS_URL": REDIS_URL,
                "CAREFLOW_REDIS_PREFIX": self.redis_prefix,
                "CAREFLOW_CONNECTIONS_FROM_ENV_ONLY": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
            }
        )
        if provider is not None:
            env["AIRFLOW_CONN_CAREFLOW_MESSAGING"] = json.dumps(
                {
                    "conn_type": "http",
                    "host": provider.url,
                    "password": provider.token,
                    # a provider name of its own: the benchmark's breaker state is nobody else's
                    "extra": {
                        "max_concurrency": concurrency,
                        "timeout": 10,
                        "provider_name": f"bench-{uuid.uuid4().hex[:8]}",
                    },
                }
            )
        return env


@contextmanager
def careflow_env(db_url: str) -> Iterator[CareflowEnv]:
    """A private Airflow home and workflows dir, set in this process too (for publishing)."""
    with tempfile.TemporaryDirectory(prefix="careflow-bench-home-") as tmp:
        home = Path(tmp)
        workflows = home / "workflows"
        workflows.mkdir()
        env = CareflowEnv(home, workflows, db_url)
        saved = dict(os.environ)
        os.environ.update(env.variables())
        try:
            yield env
        finally:
            os.environ.clear()
            os.environ.update(saved)


def publish(env: CareflowEnv, patients: int) -> str:
    """Validate and publish the benchmark workflow for ``patients`` (snapshot and version row)."""
    from careflow.publishing import publish_report
    from careflow.store.db import get_engine
    from careflow.workflow.validation import validate_workflow

    report = validate_workflow(workflow_document(patients), source=f"benchmark-{patients}")
    result = publish_report(report, engine=get_engine(env.db_url), workflows_dir=env.workflows_dir)
    if result.action != "published":
        problems = [d.to_dict() for d in report.diagnostics]
        raise SystemExit(f"the benchmark workflow was not published ({result.action}): {problems}")
    return workflow_id_for(patients)
