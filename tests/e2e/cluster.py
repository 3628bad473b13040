"""Real Airflow components for the end-to-end tier: scheduler, dag-processor, triggerer, api-server.

``Cluster`` creates fresh Postgres databases (Airflow's metadata and careflow's tables), a private
redis-server (careflow's breaker state and, with the CeleryExecutor, the broker), migrates both,
creates careflow's pool (or leaves it to the components), starts every component as a
subprocess and talks to the api-server's REST API with a JWT of a known admin. It also listens
for statsd packets and alert webhooks, so a test can check what left the components.

Used by the e2e tests and by the chaos runner (scheduler restarts).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from support import GroupedProcess, free_port, wait_for

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
BIN = Path(sys.executable).parent
PG_SERVER = os.environ.get("CAREFLOW_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
ADMIN = "admin"
TERMINAL = {"success", "failed"}


class StatsdListener:
    """Collects the statsd UDP packets sent to a local port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.packets: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statsd-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.packets.extend(data.decode("utf-8", "replace").splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class WebhookReceiver:
    """An HTTP endpoint that records every request body posted to it (the alert webhook)."""

    def __init__(self) -> None:
        bodies: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                bodies.append(self.rfile.read(length).decode("utf-8", "replace"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _create_database(name: str, template: str | None = None) -> str:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return f"{PG_SERVER}/{name}"


def migrated_template(root: Path) -> str:
    """A fresh database migrated by ``airflow db migrate``, to copy per cluster (drop it yourself)."""
    name = f"careflow_e2e_template_{uuid.uuid4().hex[:10]}"
    url = _create_database(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    root.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "AIRFLOW_HOME": str(root),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "no-dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        }
    )
    result = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return name


def drop_database(name: str) -> None:
    """Drop a database of the local server (and every connection to it)."""
    _drop_database(name)


def _drop_database(name: str) -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Component(GroupedProcess):
    """One long-running process of the cluster (an Airflow component, its Redis), its output in a log file."""

    log: Path

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with self.log.open("ab") as out:
            self.launch(out, env, cwd)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    """Airflow's components on fresh databases, with careflow's workflows and the fake provider.

    :param root: a scratch directory (Airflow home, workflows, logs).
    :param provider_url: the fake provider's base URL; ``provider_token`` its bearer token.
    :param executor: ``LocalExecutor`` or ``CeleryExecutor``.
    :param celery_workers: how many Celery workers to start (CeleryExecutor only).
    """

    root: Path
    provider_url: str
    provider_token: str
    executor: str = "LocalExecutor"
    celery_workers: int = 2
    provider_timeout: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    #: signs the api-server's JWTs and sessions: every component must share it
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    _token: str | None = None

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.home = self.root / "airflow"
        self.workflows = self.root / "workflows"
        self.component_logs = self.root / "components"
        for path in (self.home, self.workflows, self.component_logs):
            path.mkdir(parents=True, exist_ok=True)
        self.meta_db = f"careflow_e2e_af_{tag}"
        self.careflow_db = f"careflow_e2e_cf_{tag}"
        self.api_port = free_port()
        self.redis_port = free_port()
        self.statsd = StatsdListener()
        self.alerts = WebhookReceiver()
        self._redis: Component | None = None
        self._databases: list[str] = []
        self._orphan_groups: list[int] = []

    # ------------------------------------------------------------------ environment

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def careflow_url(self) -> str:
        """SQLAlchemy URL of careflow's (and the clinic's) tables."""
        return f"{PG_SERVER}/{self.careflow_db}"

    @property
    def metadata_url(self) -> str:
        return f"{PG_SERVER}/{self.meta_db}"

    def env(self) -> dict[str, str]:
        """The environment every component (and the careflow command) runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        env.pop("CAREFLOW_DB_URL", None)
        env.pop("CAREFLOW_REDIS_URL", None)
        secret = self.secret
        pg = PG_SERVER.replace("postgresql+psycopg2://", "postgresql://")
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "PATH": f"{BIN}:{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.root / "passwords.json"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__SECRET_KEY": secret,
                "AIRFLOW__API_AUTH__JWT_SECRET": secret,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(self.statsd.port),
                "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(self.workflows),
                "AIRFLOW_CONN_CAREFLOW_DB": f"{pg}/{self.careflow_db}",
                "AIRFLOW_CONN_CAREFLOW_MESSAGING": json.dumps(
                    {
                        "conn_type": "http",
                        "host": self.provider_url,
                        "password": self.provider_token,
                        "extra": {"max_concurrency": 8, "timeout": self.provider_timeout},
                    }
                ),
                "AIRFLOW_CONN_CAREFLOW_REDIS": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW_CONN_CAREFLOW_ALERTS": json.dumps({"conn_type": "http", "host": self.alerts.url}),
            }
        )
        if self.executor == "CeleryExecutor":
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/1",
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{pg}/{self.meta_db}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                }
            )
        env.update(self.extra_env)
        return env

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command (``airflow …``, ``careflow …``) in the cluster's environment; fails loudly."""
        result = subprocess.run(
            list(argv), env=self.env(), cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
        return result

    def airflow_checked(self) -> list[str]:
        """What ``careflow check`` says of Airflow's side (the pool, the components, the workers,
        the DAGs), once it has found each of them ok and the scheduler, the dag processor and the
        triggerer heartbeating."""
        found = [f for f in self.check() if f["subject"] in ("airflow", "dags")]
        assert all(f["verdict"] == "ok" for f in found), found
        said = [f["text"] for f in found]
        assert any(
            t.startswith("heartbeating: scheduler (") and "dag processor (" in t and "triggerer (" in t
            for t in said
        ), said
        return said

    def check(self) -> list[dict[str, str]]:
        """What ``careflow check --json`` finds in the cluster's environment (it exits 2 on a problem)."""
        result = subprocess.run(
            [str(BIN / "careflow"), "check", "--json"],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode in (0, 2), result.stderr[-3000:]
        return list(json.loads(result.stdout))

    # ------------------------------------------------------------------ lifecycle

    def prepare(self, template: str | None = None, *, pool_slots: int | None = 4) -> None:
        """Databases, redis, migrations, the pool and the admin's password; no component yet.

        ``template``: a database already migrated by ``airflow db migrate`` to copy (faster than
        migrating again). ``pool_slots``: the pool's size through ``careflow setup``; None leaves
        the pool to the components, which create a missing one as they start.
        """
        self._databases.append(self.meta_db)
        _create_database(self.meta_db, template)
        self._databases.append(self.careflow_db)
        _create_database(self.careflow_db)
        self._redis = Component(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            log=self.component_logs / "redis.log",
        )
        self._redis.start(dict(os.environ), self.root)
        (self.root / "passwords.json").write_text(json.dumps({ADMIN: self.password}), encoding="utf-8")
        if template is None:
            self.run(str(BIN / "airflow"), "db", "migrate", timeout=600)
        self.run(str(BIN / "careflow"), "db", "upgrade")
        if pool_slots is not None:
            self.run(str(BIN / "careflow"), "setup", "--pool-slots", str(pool_slots))

    def publish(self, files: Iterable[Path]) -> None:
        """Publish workflow files (their snapshots land in the cluster's workflows dir)."""
        self.run(str(BIN / "careflow"), "workflows", "publish", *map(str, files))

    def start(self) -> None:
        """Start the api-server, then (once it hands out a token) every other component."""
        airflow = str(BIN / "airflow")
        env = self.env()
        # Tasks report to the api-server's execution API: it comes first, or the first tasks fail.
        self._launch("api-server", [airflow, "api-server", "--port", str(self.api_port)], env)
        wait_for("the api-server to hand out a token", self.token, timeout=120, interval=1)
        specs = {
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
        }
        if self.executor == "CeleryExecutor":
            for n in range(1, self.celery_workers + 1):
                specs[f"worker{n}"] = [
                    airflow,
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"careflow-e2e-{n}@%h",
                    "--concurrency",
                    "2",
                    "--skip-serve-logs",
                    "--without-mingle",
                    "--without-gossip",
                ]
        for name, argv in specs.items():
            self._launch(name, argv, env)

    def _launch(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        component = Component(name, argv, log=self.component_logs / f"{name}.log")
        component.start(env, self.root)
        self.components[name] = component

    def crash(self, name: str) -> None:
        """SIGKILL one component's main process only and start it again.

        What it started (the LocalExecutor's task processes) keeps running, as on a host where
        the scheduler crashed; it is cleaned up by :meth:`stop`.
        """
        component = self.components[name]
        assert component.process is not None
        os.kill(component.process.pid, signal.SIGKILL)
        component.process.wait(30)
        self._orphan_groups.append(component.process.pid)
        component.start(self.env(), self.root)

    def reap_orphans(self) -> None:
        """Kill what crashed components left running (their process groups)."""
        for group in self._orphan_groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._orphan_groups.clear()

    def stop(self) -> None:
        """Stop every component, redis and the listeners; drop the databases."""
        self.reap_orphans()
        for component in self.components.values():
            component.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for component in self.components.values():
            component.finish(max(0.1, deadline - time.monotonic()))
        if self._redis is not None:
            self._redis.signal(signal.SIGTERM)
            self._redis.finish(10)
        self.statsd.close()
        self.alerts.close()
        from careflow.store.db import dispose_engines

        dispose_engines()
        for name in self._databases:
            try:
                _drop_database(name)
            except Exception:
                pass

    def diagnostics(self) -> str:
        """The end of every component's output (for assertion messages)."""
        return "\n".join(f"--- {c.name}\n{c.tail(1500)}" for c in self.components.values())

    # ------------------------------------------------------------------ REST API

    def token(self) -> str:
        """A JWT of the admin, from ``POST /auth/token``."""
        if self._token is None:
            response = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": ADMIN, "password": self.password},
                timeout=10,
            )
            assert response.status_code == 201, (response.status_code, response.text[:300])
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        """One call to the api-server (``path`` starts with ``/``)."""
        headers = dict(kw.pop("headers", {}) or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        return httpx.request(method, f"{self.api_url}{path}", headers=headers, timeout=30, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        """A call that must succeed; its JSON body."""
        response = self.api(method, path, **kw)
        assert response.status_code < 300, (method, path, response.status_code, response.text[:500])
        return response.json() if response.content else None

    def wait_dags(self, dag_ids: Iterable[str], timeout: float = 120) -> None:
        """Wait until the dag-processor has registered every DAG, then unpause them."""
        for dag_id in dag_ids:
            wait_for(
                f"DAG {dag_id} to be parsed",
                lambda d=dag_id: self.api("GET", f"/api/v2/dags/{d}").status_code == 200,
                timeout=timeout,
                interval=1,
            )
            self.ok("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of a DAG."""
        return list(self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])

    def settle(self, dag_id: str, timeout: float = 120) -> list[dict[str, Any]]:
        """Wait until no run of the DAG is queued or running; returns the runs."""

        def settled() -> list[dict[str, Any]] | None:
            runs = self.runs(dag_id)
            return runs if runs and all(r["state"] in TERMINAL for r in runs) else None

        return list(wait_for(f"the runs of {dag_id} to settle", settled, timeout=timeout, interval=1))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """Trigger a run through the REST API; returns its run id."""
        body = {
            "dag_run_id": run_id or f"e2e__{uuid.uuid4().hex[:8]}",
            "logical_date": None,
            "conf": conf or {},
        }
        return str(self.ok("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 150) -> dict[str, Any]:
        """Wait for a run to finish; returns it (whatever its final state)."""

        def done() -> dict[str, Any] | None:
            response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if response.status_code != 200:
                return None
            run = response.json()
            return run if run["state"] in TERMINAL else None

        try:
            return dict(wait_for(f"run {dag_id}/{run_id}", done, timeout=timeout, interval=1))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Task id -> state of one run."""
        body = self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def xcom_values(self) -> list[str]:
        """Every XCom value in the metadata DB, as text."""
        engine = create_engine(self.metadata_url)
        try:
            with engine.connect() as conn:
                return [str(v) for (v,) in conn.execute(text("select value from xcom"))]
        finally:
            engine.dispose()

    def log_texts(self) -> list[str]:
        """Every task log and component output file."""
        files = [
            p for base in (self.home / "logs", self.component_logs) for p in base.rglob("*") if p.is_file()
        ]
        return [p.read_text(errors="replace") for p in files]


def remove_tree(path: Path) -> None:
    """Remove a scratch directory (kept when ``CAREFLOW_E2E_KEEP`` is set, to read the logs)."""
    if os.environ.get("CAREFLOW_E2E_KEEP"):
        print(f"kept {path}")
        return
    shutil.rmtree(path, ignore_errors=True)
