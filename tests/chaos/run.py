"""Chaos runner: send under faults, reconcile, and count duplicates, lost and unresolved messages.

    python tests/chaos/run.py --rounds 5 [--kills 5] [--patients 120] [--table FILE] [--airflow]

Every round runs each fault once against its own workflow and cohort of patients:

- ``worker_kill``: a worker process running the workflow's nodes (``process_node``, what the
  DAG's tasks run) is killed with SIGKILL at a random point of its send batches, ``--kills``
  times in a row (each next worker starts while the dead one's claims are still leased);
- ``postgres_restart``: the private Postgres instance is restarted (immediate mode) mid-send;
- ``redis_stop``: the private Redis holding the breaker state is killed mid-send (and started
  again after the round);
- ``provider_down``: the provider answers 503 to everything for a few seconds;
- ``provider_slow``: the provider accepts and then stalls past the client's short timeout
  (outcome unknown: the engine must look the key up, never resend blindly);
- ``provider_throttle``: the provider answers 429 with ``Retry-After`` to a share of sends;
- ``scheduler_restart`` (``--airflow``): the real Airflow scheduler (LocalExecutor, the e2e
  tier's components) is killed with SIGKILL while a REST-triggered run sends, and started again.

After each fault the workflow is run again, fault-free, until it is quiescent. Then, per due
message: *delivered* means the ledger says sent and the provider has the key; *recorded* means
the ledger says skipped, failed or expired with a reason; anything else is *lost*. Ledger rows
still ``unknown`` or ``claimed`` are *unknown_unresolved*. *Duplicates* are keys the provider
accepted more than once, counted from its ``--record`` file (every accept is a line) and its
``accepted_twice`` counter. The fake provider honours idempotency keys, so the runner also
counts *resends*: sends of a key the provider had already accepted (answered 409), which a
provider without idempotency would have delivered twice.

The last line on stdout is one JSON object ``{"rounds", "duplicates", "lost",
"unknown_unresolved"}``; the per-fault table goes to stderr and, with ``--table``, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
for extra in (REPO / "plugins", TESTS):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from support import free_port  # noqa: E402 - importable once the tests' folder is on the path

ENGINE_FAULTS = (
    "worker_kill",
    "postgres_restart",
    "redis_stop",
    "provider_down",
    "provider_slow",
    "provider_throttle",
)
PG_BIN = Path(os.environ.get("CAREFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
TOKEN = "chaos-token"
LEASE_SECONDS = 1.0
UNRESOLVED = ("unknown", "claimed")
RECORDED = ("skipped", "failed", "expired")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def workflow_doc(workflow_id: str, batch_size: int) -> dict[str, Any]:
    """A booking notice: trigger on a new appointment, then one LMS with the patient's name."""
    return {
        "id": workflow_id,
        "name": "예약 접수 안내",
        "clinic_id": "gangnam-01",
        "status": "active",
        "timezone": "Asia/Seoul",
        "settings": {"batch_size": batch_size, "retries": 3, "retry_delay_seconds": 2},
        "nodes": [
            {
                "id": "booked",
                "type": "trigger",
                "data": {"label": "예약 생성", "event": "appointment_created", "schedule": "@daily"},
            },
            {
                "id": "notice",
                "type": "action",
                "data": {
                    "label": "접수 안내",
                    "channel": "lms",
                    "template": "{{ patient.name }}님, {{ clinic.name }} 예약이 접수되었습니다. 문의 {{ clinic.phone }}",
                },
            },
        ],
        "edges": [{"id": "e1", "source": "booked", "target": "notice"}],
    }


# ---------------------------------------------------------------------- the worker process


def worker_main(spec: dict[str, Any]) -> int:
    """One worker: every node of the workflow in order, as the DAG's tasks would; prints counts."""
    from careflow.compiler import compile_workflow
    from careflow.compiler.schedule import next_run_after
    from careflow.engine import actions
    from careflow.engine.context import RunContext
    from careflow.engine.nodes import process_node
    from careflow.providers.client import ProviderClient
    from careflow.resilience import get_breaker
    from careflow.store.db import get_engine
    from careflow.workflow.validation import validate_workflow

    # The lease stands for CLAIM_LEASE (5 minutes), renewed as often as in production (a fifth of
    # it) while a live worker's batches wait to be sent.
    actions.CLAIM_LEASE = timedelta(seconds=spec["lease"])
    actions.RENEW_EVERY = spec["lease"] / 5
    report = validate_workflow(spec["doc"])
    assert report.workflow is not None, report.to_dict()
    compiled = compile_workflow(report.workflow, version=1, content_hash="chaos")
    now = datetime.now(timezone.utc)
    breaker = get_breaker("chaos:lms")
    ctx = RunContext(
        compiled=compiled,
        now=now,
        engine=get_engine(spec["db"]),
        run_id=f"chaos-{os.getpid()}",
        worker=actions.worker_name(),
        next_run_at=next_run_after(compiled, now),
        sender=ProviderClient(
            spec["provider"],
            TOKEN,
            max_concurrency=spec["concurrency"],
            timeout=spec["timeout"],
            name="chaos",
        ),
        gate=breaker.gate(),
    )
    out: dict[str, Any] = {}
    for node_id in compiled.order:
        out[node_id] = process_node(ctx, node_id).to_xcom()
    action = out[compiled.order[-1]]
    snap = breaker.snapshot()
    retry_at = snap.next_probe_at if snap.state == "open" else (snap.paused_until or None)
    print(json.dumps({"nodes": out, "pending": action["pending"], "retry_at": retry_at}))
    return 0


# ---------------------------------------------------------------------- private services


class PrivatePostgres:
    """A Postgres instance of our own (initdb in a scratch dir), so it can be restarted at will."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pg"
        self.port = free_port()
        self.log = root / "pg.log"
        self.as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            self.log.touch()
            shutil.chown(self.log, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.dir),
            "-o",
            self._options(),
            "-l",
            str(self.log),
            "-w",
            "start",
        )

    def restart(self) -> None:
        """Crash-restart: connections are cut, in-flight transactions are lost."""
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-o", self._options(), "-l", str(self.log),
            "-m", "immediate", "-w", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w", "stop")
        except Exception:
            pass

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"


class PrivateRedis:
    """A redis-server of our own (the breaker's shared state); killed and started for its fault."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(
            [*argv, "--dir", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Provider:
    """The fake provider in its own process, recording every accept to a file."""

    def __init__(self, root: Path, seed: int) -> None:
        self.port = free_port()
        self.record = root / "provider-record.jsonl"
        self.seed = seed
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "provider.log"

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "careflow.providers.fake_server", "--port", str(self.port),
            "--token", TOKEN, "--record", str(self.record), "--seed", str(self.seed), "--stall-seconds", "3",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("fake provider did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        response = httpx.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/stats?brief=1"))

    def configure(self, **knobs: Any) -> None:
        self._call("POST", "/v1/admin/config", knobs)

    def heal(self) -> None:
        self.configure(
            latency_ms=20,
            error_rate=0,
            throttle_rate=0,
            accept_then_timeout_rate=0,
            outage_until=0,
            retry_after=1,
        )

    def messages(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/messages")["messages"])

    def accepts_by_key(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with self.record.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    counts[json.loads(line)["idempotency_key"]] += 1
        return counts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# ---------------------------------------------------------------------- accounting


@dataclass
class Tally:
    """What one fault did over every round."""

    injected: int = 0
    sent: int = 0
    duplicates: int = 0
    lost: int = 0
    unknown_unresolved: int = 0
    resends: int = 0
    scenarios: int = 0
    seconds: float = 0.0
    notes: Counter[str] = field(default_factory=Counter)


class Chaos:
    """The services, the workers and the books."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.rng = random.Random(args.seed)
        self.pg = PrivatePostgres(root)
        self.redis = PrivateRedis(root)
        self.provider = Provider(root, args.seed)
        self.tallies: dict[str, Tally] = defaultdict(Tally)
        self.cluster: Any = None
        self.engine: Any = None

    # -- services

    def start(self) -> None:
        from sqlalchemy import create_engine

        from careflow.store.migrations import upgrade

        log(f"private Postgres, Redis and fake provider under {self.root}")
        self.pg.init()
        self.redis.start()
        self.provider.start()
        self.provider.heal()
        self.engine = create_engine(self.pg.url, pool_pre_ping=True)
        upgrade(self.engine)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.engine is not None:
            self.engine.dispose()
        self.provider.stop()
        self.redis.kill()
        self.pg.stop()

    # -- workers

    def spawn(self, doc: dict[str, Any], timeout: float = 5.0) -> subprocess.Popen[str]:
        spec = {
            "doc": doc,
            "db": self.pg.url,
            "provider": self.provider.url,
            "timeout": timeout,
            "lease": LEASE_SECONDS,
            "concurrency": 4,
        }
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec, ensure_ascii=False)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(CAREFLOW_REDIS_URL=self.redis.url),
        )

    def finish(self, proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any] | None:
        """Wait for a worker; its counts, or None when it failed (a failed task attempt)."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return None
        if proc.returncode != 0:
            return None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    def reconcile(self, doc: dict[str, Any], keys: set[str], tally: Tally) -> None:
        """Run the workflow fault-free until nothing is pending, claimed or unknown."""
        time.sleep(LEASE_SECONDS + 0.2)  # every dead worker's lease has run out
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = self.finish(self.spawn(doc))
            open_rows = self.open_rows(keys)
            if result is not None and result["pending"] == 0 and not open_rows:
                return
            tally.notes["reconcile_attempts"] += 1
            wait = 0.3
            if result is not None and result.get("retry_at"):
                wait = max(wait, min(8.0, float(result["retry_at"]) - time.time() + 0.1))
            time.sleep(wait)
        tally.notes["not_quiescent"] += 1

    def open_rows(self, keys: set[str]) -> int:
        from sqlalchemy import func, select

        from careflow.store import tables

        m = tables.messages
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(m)
                    .where(m.c.idempotency_key.in_(keys), m.c.status.in_(("pending", *UNRESOLVED)))
                ).scalar()
            )

    def account(self, cohort: Any, tally: Tally, resends_before: int) -> None:
        """Delivered, recorded, lost, unresolved and duplicated messages of one cohort."""
        from sqlalchemy import select

        from careflow.store import tables

        keys = {cohort.key(pid): pid for pid in cohort.expect}
        m = tables.messages
        with self.engine.connect() as conn:
            ledger = {
                r["idempotency_key"]: dict(r)
                for r in conn.execute(select(m).where(m.c.idempotency_key.in_(list(keys)))).mappings()
            }
        delivered_by_provider = {
            msg["idempotency_key"] for msg in self.provider.messages() if msg["idempotency_key"] in keys
        }
        accepts = self.provider.accepts_by_key()
        for key, pid in keys.items():
            row = ledger.get(key)
            status = row["status"] if row else None
            if status == "sent" and key in delivered_by_provider:
                tally.sent += 1
            elif status in RECORDED and row and row["reason"]:
                tally.notes[f"recorded:{status}:{row['reason']}"] += 1
            else:
                tally.lost += 1
                tally.notes[f"lost:{status}"] += 1
            if status in UNRESOLVED:
                tally.unknown_unresolved += 1
            if cohort.expect[pid] == "sent" and status != "sent":
                tally.notes["expected_sent_but_" + str(status)] += 1
            if accepts[key] > 1:
                tally.duplicates += 1
            if key in delivered_by_provider and status != "sent":
                tally.notes["provider_has_it_but_ledger_" + str(status)] += 1
        tally.resends += self.provider.stats()["duplicates"] - resends_before

    # -- one scenario

    def cohort(self, doc: dict[str, Any], prefix: str, patients: int) -> Any:
        from e2e.scenario import Cohort

        cohort = Cohort(doc, "notice", prefix, rng=random.Random(self.rng.random()))
        at = datetime.now(timezone.utc) - timedelta(seconds=30)
        cohort.add(patients, event="appointment_created", at=at, status="scheduled")
        cohort.add(1, event="appointment_created", at=at, status="scheduled", consent_messages=False,
                   expect="skipped:no_consent_messages")  # fmt: skip
        cohort.add(
            1, event="appointment_created", at=at, status="scheduled", phone=None, expect="skipped:no_phone"
        )
        cohort.load(self.engine)
        return cohort

    def scenario(self, round_no: int, fault: str) -> None:
        started = time.monotonic()
        tally = self.tallies[fault]
        tally.scenarios += 1
        workflow_id = f"chaos-{round_no:03d}-{fault.replace('_', '-')}"
        batch = self.rng.choice([10, 20, 40])
        doc = workflow_doc(workflow_id, batch)
        patients = self.args.patients
        cohort = self.cohort(doc, f"r{round_no:03d}{ENGINE_FAULTS.index(fault)}p", patients)
        keys = {cohort.key(p) for p in cohort.expect}
        resends_before = self.provider.stats()["duplicates"]
        self.provider.heal()
        getattr(self, f"fault_{fault}")(doc, tally)
        faulted = time.monotonic()
        self.provider.heal()
        if self.redis.proc is None:
            self.redis.start()
        self.reconcile(doc, keys, tally)
        self.account(cohort, tally, resends_before)
        tally.seconds += time.monotonic() - started
        if self.args.verbose:
            log(f"{workflow_id}: fault {faulted - started:.1f}s, reconcile {time.monotonic() - faulted:.1f}s")

    # -- the faults

    def fault_worker_kill(self, doc: dict[str, Any], tally: Tally) -> None:
        self.provider.configure(latency_ms=self.rng.choice([10, 25, 50]))
        for attempt in range(self.args.kills):
            before = self.provider.stats()["accepted"]
            proc = self.spawn(doc)
            if attempt == 0 or self.rng.random() < 0.5:
                # After a random number of accepted sends: in the middle of a batch's sends. The
                # first kill of a scenario always lands there, after at least one: a worker that
                # finished the cohort before a kill at a random moment left the kills after it
                # nothing to send, and on a quick machine a scenario could then inject none.
                target = before + self.rng.randint(1 if attempt == 0 else 0, max(1, self.args.patients // 2))
                while proc.poll() is None and self.provider.stats()["accepted"] < target:
                    time.sleep(0.005)
            else:
                # At a random moment: starting up, enrolling, claiming, sending or recording.
                moment = time.monotonic() + self.rng.uniform(0.2, 2.5)
                while proc.poll() is None and time.monotonic() < moment:
                    time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                tally.injected += 1
            proc.communicate()

    def fault_postgres_restart(self, doc: dict[str, Any], tally: Tally) -> None:
        self.provider.configure(latency_ms=30)
        proc = self.spawn(doc)
        time.sleep(self.rng.uniform(0.6, 2.0))
        if proc.poll() is None:
            self.pg.restart()
            tally.injected += 1
        else:
            tally.notes["worker_done_before_restart"] += 1
        self.finish(proc)
        self.engine.dispose()

    def fault_redis_stop(self, doc: dict[str, Any], tally: Tally) -> None:
        self.provider.configure(latency_ms=30)
        proc = self.spawn(doc)
        time.sleep(self.rng.uniform(0.5, 1.8))
        if proc.poll() is None:
            tally.notes["stopped_while_sending"] += 1
        self.redis.kill()
        tally.injected += 1
        # A second worker starts while Redis is down: it must fall back, not fail.
        self.finish(proc)
        self.finish(self.spawn(doc))

    def fault_provider_down(self, doc: dict[str, Any], tally: Tally) -> None:
        self.provider.configure(latency_ms=20)
        proc = self.spawn(doc)
        time.sleep(self.rng.uniform(0.5, 1.5))
        before = self.provider.stats()["errors"]
        self.provider.configure(outage_seconds=self.rng.uniform(2.0, 4.0))
        self.finish(proc)
        self.finish(self.spawn(doc))
        tally.injected += self.provider.stats()["errors"] - before

    def fault_provider_slow(self, doc: dict[str, Any], tally: Tally) -> None:
        before = self.provider.stats()["accept_then_timeout"]
        self.provider.configure(latency_ms=20, accept_then_timeout_rate=self.rng.uniform(0.1, 0.4))
        for _ in range(2):
            self.finish(self.spawn(doc, timeout=0.5))
        tally.injected += self.provider.stats()["accept_then_timeout"] - before

    def fault_provider_throttle(self, doc: dict[str, Any], tally: Tally) -> None:
        before = self.provider.stats()["throttled"]
        self.provider.configure(latency_ms=10, throttle_rate=self.rng.uniform(0.2, 0.5), retry_after=0.5)
        for _ in range(2):
            self.finish(self.spawn(doc))
        tally.injected += self.provider.stats()["throttled"] - before

    # -- the scheduler, on the real Airflow components

    def start_cluster(self) -> None:
        from e2e.cluster import Cluster
        from e2e.scenario import write_workflows

        log("starting Airflow (LocalExecutor): api-server, scheduler, dag-processor, triggerer")
        self.cluster = Cluster(self.root / "airflow", self.provider.url, TOKEN, provider_timeout=5.0)
        self.cluster.prepare()
        doc = workflow_doc("chaos-scheduler", 10)
        self.cluster.publish(write_workflows(self.root / "sources", (doc,)))
        self.cluster.start()
        self.cluster.wait_dags(["careflow__chaos-scheduler"])
        self.cluster.settle("careflow__chaos-scheduler", timeout=180)
        from sqlalchemy import create_engine

        self.airflow_engine = create_engine(self.cluster.careflow_url, pool_pre_ping=True)

    def scheduler_restart(self, round_no: int) -> None:
        from e2e.scenario import Cohort

        started = time.monotonic()
        tally = self.tallies["scheduler_restart"]
        tally.scenarios += 1
        cluster = self.cluster
        doc = workflow_doc("chaos-scheduler", 10)
        dag = "careflow__chaos-scheduler"
        self.provider.heal()
        self.provider.configure(latency_ms=300)  # 8 sends at a time: the action task sends for seconds
        cohort = Cohort(doc, "notice", f"s{round_no:03d}p", rng=random.Random(self.rng.random()))
        cohort.add(self.args.patients, event="appointment_created", at=datetime.now(timezone.utc) - timedelta(seconds=2),
                   status="scheduled")  # fmt: skip
        cohort.load(self.airflow_engine)
        resends_before = self.provider.stats()["duplicates"]
        accepted = self.provider.stats()["accepted"]
        run_id = cluster.trigger(dag)
        if self.rng.random() < 0.5:
            # While the action task sends: after a random share of the cohort was accepted.
            target = accepted + self.rng.randint(1, max(1, self.args.patients - 1))
            deadline = time.monotonic() + 120
            while self.provider.stats()["accepted"] < target and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            # At a random moment: scheduling, enrolling, queueing the action or sending.
            time.sleep(self.rng.uniform(0.5, 10.0))
        mid_send = accepted < self.provider.stats()["accepted"] < accepted + self.args.patients
        tally.notes["killed_mid_send" if mid_send else "killed_outside_the_sends"] += 1
        cluster.crash("scheduler")
        tally.injected += 1
        state = cluster.wait_run(dag, run_id, timeout=300)["state"]
        tally.notes[f"run_{state}"] += 1
        keys = {cohort.key(p) for p in cohort.expect}
        for _ in range(10):
            if not self._open_rows_in(self.airflow_engine, keys):
                break
            tally.notes["reconcile_runs"] += 1
            cluster.wait_run(dag, cluster.trigger(dag), timeout=300)
        cluster.reap_orphans()  # the task processes of the killed scheduler, now idle
        engine, self.engine = self.engine, self.airflow_engine
        try:
            self.account(cohort, tally, resends_before)
        finally:
            self.engine = engine
        tally.seconds += time.monotonic() - started

    @staticmethod
    def _open_rows_in(engine: Any, keys: set[str]) -> int:
        from sqlalchemy import func, select

        from careflow.store import tables

        m = tables.messages
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(m)
                    .where(m.c.idempotency_key.in_(keys), m.c.status.in_(("pending", *UNRESOLVED)))
                ).scalar()
            )


def table(tallies: dict[str, Tally], rounds: int) -> str:
    """The per-fault table (markdown)."""
    lines = [
        "| fault | rounds | injected | messages sent | duplicates | lost | unknown unresolved | resends answered 409 | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fault, t in tallies.items():
        lines.append(
            f"| {fault} | {t.scenarios} | {t.injected} | {t.sent} | {t.duplicates} | {t.lost} | "
            f"{t.unknown_unresolved} | {t.resends} | {t.seconds:.0f} |"
        )
    total = Tally()
    for t in tallies.values():
        total.injected += t.injected
        total.sent += t.sent
        total.duplicates += t.duplicates
        total.lost += t.lost
        total.unknown_unresolved += t.unknown_unresolved
        total.resends += t.resends
        total.seconds += t.seconds
    lines.append(
        f"| **all** | {rounds} | {total.injected} | {total.sent} | {total.duplicates} | {total.lost} | "
        f"{total.unknown_unresolved} | {total.resends} | {total.seconds:.0f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="how many times every fault is injected")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per worker_kill scenario")
    parser.add_argument("--patients", type=int, default=60, help="patients with a due message per scenario")
    parser.add_argument("--faults", default=",".join(ENGINE_FAULTS), help="comma-separated engine faults")
    parser.add_argument("--airflow", action="store_true", help="also restart the real scheduler (slow)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--table", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--verbose", action="store_true", help="log how long each scenario took")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(json.loads(args.worker))
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(ENGINE_FAULTS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    from careflow.cli import stopping_on_sigterm

    root = Path(tempfile.mkdtemp(prefix="careflow-chaos-"))
    os.chmod(root, 0o755)
    chaos = Chaos(root, args)
    started = time.monotonic()
    # A terminated runner still stops what it started (the finally below).
    with stopping_on_sigterm("chaos runner"):
        try:
            chaos.start()
            if args.airflow:
                chaos.start_cluster()
            for round_no in range(1, args.rounds + 1):
                for fault in faults:
                    chaos.scenario(round_no, fault)
                if args.airflow:
                    chaos.scheduler_restart(round_no)
                done = chaos.tallies
                log(
                    f"round {round_no}/{args.rounds}: "
                    + ", ".join(
                        f"{f} sent={t.sent} dup={t.duplicates} lost={t.lost}" for f, t in done.items()
                    )
                )
                if args.table is not None:  # what a long run found so far survives its interruption
                    args.table.write_text(table(done, round_no) + "\n", encoding="utf-8")
            accepted_twice = chaos.provider.stats()["accepted_twice"]
        finally:
            chaos.stop()
            shutil.rmtree(root, ignore_errors=True)
    tallies = chaos.tallies
    duplicates = max(sum(t.duplicates for t in tallies.values()), accepted_twice)
    lost = sum(t.lost for t in tallies.values())
    unresolved = sum(t.unknown_unresolved for t in tallies.values())
    text = table(tallies, args.rounds)
    notes = {f: dict(t.notes) for f, t in tallies.items()}
    footer = f"seed {args.seed}; {time.monotonic() - started:.0f} s in all; notes: {json.dumps(notes, ensure_ascii=False)}"
    print(text + "\n" + footer, file=sys.stderr)
    if args.table is not None:
        args.table.write_text(text + "\n\n" + footer + "\n", encoding="utf-8")
    print(
        json.dumps(
            {"rounds": args.rounds, "duplicates": duplicates, "lost": lost, "unknown_unresolved": unresolved}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
