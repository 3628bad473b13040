"""A provider outage ridden out by real Airflow: the first 20 s of sends answered 503, 600 messages.

The workflow's DAG is parsed from the dags folder and run at the real time by Airflow's own task
runner (``airflow dags test``, which runs deferred tasks' triggers inline, as the triggerer would). When the breaker opens, the
action task defers on a ``DateTimeTrigger`` until the breaker may half-open, instead of failing
and spending a retry; after recovery the same task instance sends everything, without anyone
touching the run. On each breaker backend, with careflow's production breaker settings:

- Redis shared by every worker (careflow tables on Postgres);
- Redis configured but stopped for the whole run: the per-process fallback (Postgres);
- no Redis at all: the embedded default (SQLite tables, the breaker in a SQLite file).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from careflow.providers.fake_server import FakeProviderServer
from careflow.store import tables
from careflow.store.db import dispose_engines, get_engine
from careflow.store.migrations import upgrade
from engine.harness import Clinic, action, chain, cohort
from support import careflow_env, publish_for_airflow

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

PATIENTS = 600
OUTAGE_SECONDS = 20.0
#: The client's concurrency for this provider (the connection's ``max_concurrency``).
CONCURRENCY = 10
#: "A few dozen failed calls at most": the sends in flight when the breaker opens, plus its probes.
MAX_FAILED_CALLS = 60


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "embedded":
        return f"sqlite:///{tmp_path / 'careflow.db'}"
    url = str(request.getfixturevalue("pg_server_url"))
    from careflow.store import tables as t

    engine = create_engine(url)
    t.metadata.drop_all(engine)
    engine.dispose()
    return url


@pytest.mark.parametrize("backend", ["redis", "redis-stopped", "embedded"])
def test_a_20_second_outage_is_ridden_out_by_airflow_without_retries(
    backend: str, airflow_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    workflow_id = f"outage-{backend}"
    url = _database(backend, request, tmp_path)
    engine = get_engine(url)
    upgrade(engine)
    clinic = Clinic()
    cohort(clinic, PATIENTS, datetime.now(timezone.utc) - timedelta(hours=2))
    clinic.load(engine)
    workflows = publish_for_airflow(chain(workflow_id, ("send", "action", action())), engine, tmp_path)

    redis_url = {
        "redis": "redis://127.0.0.1:6379/0",
        "redis-stopped": "redis://127.0.0.1:1/0",  # nothing listens there: Redis is down all along
        "embedded": "",
    }[backend]
    # A provider name of its own: no breaker state from another test or run is shared.
    provider_name = f"outage-{backend}-{uuid.uuid4().hex[:8]}"
    with FakeProviderServer(outage_from_first_send=OUTAGE_SECONDS) as provider:
        env = careflow_env(
            airflow_home,
            workflows,
            url,
            tmp_path,
            provider,
            redis_url=redis_url,
            connection_extra={"max_concurrency": CONCURRENCY, "timeout": 5, "provider_name": provider_name},
        )
        started = time.monotonic()
        # A real run at the real time (not a simulated clock): `airflow dags test` runs the
        # DAG with Airflow's task runner and runs deferred tasks' triggers inline.
        run = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", f"careflow__{workflow_id}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - started
        stats = provider.stats()
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])

    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        runs = conn.execute(
            "select state from dag_run where dag_id = ?", (f"careflow__{workflow_id}",)
        ).fetchall()
        tries = dict(
            conn.execute(
                "select task_id, try_number from task_instance where dag_id = ? and task_id = 'send'",
                (f"careflow__{workflow_id}",),
            ).fetchall()
        )
    engine = get_engine(url)
    with engine.connect() as conn:
        m = tables.messages
        ledger = dict(
            conn.execute(
                select(m.c.status, func.count()).where(m.c.workflow_id == workflow_id).group_by(m.c.status)
            ).all()
        )
        unsent = conn.execute(
            select(m.c.status, m.c.reason, m.c.last_error).where(
                m.c.workflow_id == workflow_id, m.c.status != "sent"
            )
        ).all()
    dispose_engines()
    print(
        f"\n{backend}: {seconds:.0f} s, provider errors={stats['errors']} received={stats['received']} "
        f"accepted={stats['accepted']} runs={runs} action tries={tries} ledger={ledger} unsent={unsent[:5]}"
    )

    # The outage happened and the breaker kept the provider from being hammered.
    assert 0 < stats["errors"] <= MAX_FAILED_CALLS, stats
    # Every message delivered exactly once.
    assert stats["accepted"] == PATIENTS and stats["accepted_twice"] == 0, stats
    assert ledger == {"sent": PATIENTS}
    # One scheduled run, which ended in success by itself; the action task never spent a retry:
    # its first try deferred while the breaker was open and then sent everything.
    assert runs and {state for (state,) in runs} == {"success"}, runs
    assert tries == {"send": 1}, tries
