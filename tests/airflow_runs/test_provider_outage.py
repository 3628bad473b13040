"""A provider outage ridden out by real Airflow: the first 20 s of sends answered 503, 600 messages.

The workflow's DAG is parsed from the dags folder and run at the real time by Airflow's own task
runner (``airflow dags test``, which runs deferred tasks' triggers inline, as the triggerer would). When the breaker opens, the
action task defers on a ``DateTimeTrigger`` until the breaker may half-open, instead of failing
and spending a retry; after recovery the same task instance sends everything, without anyone
touching the run. On each breaker backend, with careflow's production breaker settings:

- Redis shared by every worker (careflow tables on Postgres);
- Redis configured but stopped for the whole run: the fallback to the machine's breaker file
  (Postgres);
- no Redis at all: the embedded default (SQLite tables, the breaker in a SQLite file).

Each case also checks where the breaker's state really was: in Redis, or in the breaker file (with
the fallback warning when Redis is stopped).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience.redis_link import key_prefix
from careflow.store import tables
from careflow.store.db import dispose_engines, get_engine
from careflow.store.migrations import upgrade
from engine.harness import Clinic, action, chain, cohort
from support import careflow_env, failure_output, publish_for_airflow

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

PATIENTS = 600
REDIS_URL = "redis://127.0.0.1:6379/0"
STOPPED_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: Redis is down all along
OUTAGE_SECONDS = 20.0
#: The client's concurrency for this provider (the connection's ``max_concurrency``).
CONCURRENCY = 10
#: The sends in flight when the breaker opens, plus its probes (18 on every backend here). With
#: Redis stopped too: the task that defers and resumes and the send process it forks keep the
#: breaker in the machine's one breaker file, not a breaker learnt anew by each process (56).
MAX_FAILED_CALLS = 30


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "embedded":
        return f"sqlite:///{tmp_path / 'careflow.db'}"
    url = str(request.getfixturevalue("pg_server_url"))
    from careflow.store import tables as t

    engine = create_engine(url)
    t.metadata.drop_all(engine)
    engine.dispose()
    return url


def _breakers_in_redis(provider_name: str) -> dict[str, list[str]]:
    """The provider's breakers stored in Redis: name -> the states of its logged transitions."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        head = f"{key_prefix()}:{{breakers}}:state:"
        found: dict[str, list[str]] = {}
        for key in client.scan_iter(match=f"{head}{provider_name}:*"):
            name = key.decode()[len(head) :]
            entries = client.lrange(f"{key_prefix()}:{{breakers}}:log:{name}", 0, -1)
            found[name] = [json.loads(e)["to"] for e in reversed(entries)]
        return found
    finally:
        client.close()


def _breakers_in_file(path: Path, provider_name: str) -> dict[str, list[str]]:
    """The provider's breakers stored in the embedded breaker file, as for Redis."""
    if not path.exists():
        return {}
    with closing(sqlite3.connect(path)) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "select name from breaker_state where name like ?", (f"{provider_name}:%",)
            )
        ]
        return {
            name: [
                json.loads(entry)["to"]
                for (entry,) in conn.execute(
                    "select entry from breaker_transitions where name = ? order by id", (name,)
                )
            ]
            for name in names
        }


def _task_logs(airflow_home: Path, dag_id: str) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in (airflow_home / "logs").glob(f"**/dag_id={dag_id}/**/*")
        if p.is_file()
    )


def _assert_breaker_kept_by(
    backend: str, *, in_redis: dict[str, list[str]], in_file: dict[str, list[str]], output: str
) -> None:
    """The provider's breaker opened in ``backend``'s store: Redis or the breaker file."""
    fell_back = "circuit breakers use this machine's breaker file" in output
    if backend == "redis":
        assert len(in_redis) == 1 and "open" in next(iter(in_redis.values())), in_redis
        assert in_file == {} and not fell_back, (in_file, fell_back)
    elif backend == "redis-stopped":
        assert f"Redis at {STOPPED_REDIS_URL} cannot be used" in output and fell_back, output[-3000:]
        assert len(in_file) == 1 and "open" in next(iter(in_file.values())), in_file
        assert in_redis == {}, in_redis
        assert "using per-process breaker state" not in output  # the file itself was usable
    else:
        assert len(in_file) == 1 and "open" in next(iter(in_file.values())), in_file
        assert in_redis == {} and not fell_back, (in_redis, fell_back)
        assert "using per-process breaker state" not in output  # the file itself was usable


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
        "redis": REDIS_URL,
        "redis-stopped": STOPPED_REDIS_URL,
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
    assert run.returncode == 0, failure_output(run)

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

    # The breaker that opened lived where this backend keeps it, and nowhere else.
    _assert_breaker_kept_by(
        backend,
        in_redis=_breakers_in_redis(provider_name),
        in_file=_breakers_in_file(tmp_path / "breakers.db", provider_name),
        output=run.stdout + run.stderr + _task_logs(airflow_home, f"careflow__{workflow_id}"),
    )
