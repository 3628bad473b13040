"""Fixtures: one careflow database per test, the fake provider, and the breaker's backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience.breaker import forget_breakers
from support import RedisSentinel, redis_sentinel

REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_REDIS_URL = "redis://127.0.0.1:6390/0"  # nothing listens there


@pytest.fixture(autouse=True)
def _client_in_the_task_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """This tier counts every request inside the provider client (``CountingClient``), so the
    client stays in the task process. The same outages through real Airflow, with the send
    process that production uses, are ``tests/airflow_runs/test_provider_outage.py``."""
    monkeypatch.setenv("AIRFLOW__CAREFLOW__SEND_PROCESS", "false")


def _database(url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    from careflow.store.db import dispose_engines, get_engine
    from careflow.store.migrations import upgrade

    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    dispose_engines()
    upgrade()
    return get_engine(url)


@pytest.fixture
def pg_engine(pg_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """An empty, upgraded careflow database on Postgres."""
    from sqlalchemy import create_engine

    from careflow.store import tables
    from careflow.store.db import dispose_engines

    admin = create_engine(pg_server_url)
    tables.metadata.drop_all(admin)
    admin.dispose()
    yield _database(pg_server_url, monkeypatch)
    dispose_engines()


@pytest.fixture
def sqlite_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """An empty, upgraded careflow database on the embedded SQLite file."""
    from careflow.store.db import dispose_engines

    yield _database(f"sqlite:///{tmp_path / 'careflow.db'}", monkeypatch)
    dispose_engines()


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    """The fake messaging provider on a free port."""
    with FakeProviderServer(seed=7) as server:
        yield server


@pytest.fixture
def client_name() -> str:
    """A provider name no other test uses: the breaker is ``<name>:kakao``."""
    return f"cftest{uuid.uuid4().hex[:10]}"


def _use_backend(monkeypatch: pytest.MonkeyPatch, redis_url: str, **env: str) -> None:
    monkeypatch.setenv("CAREFLOW_REDIS_URL", redis_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    forget_breakers()


@pytest.fixture
def shared_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Breakers in the local Redis under a key prefix of this test (yielded, deleted afterwards)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"these tests need Redis at {REDIS_URL}")
    prefix = f"cftest-{uuid.uuid4().hex[:10]}"
    _use_backend(monkeypatch, REDIS_URL, CAREFLOW_REDIS_PREFIX=prefix)
    yield prefix
    forget_breakers()
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def cluster_redis(redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Breakers in a Redis Cluster (``careflow_redis`` naming one of its nodes) under a key prefix of
    this test (yielded); the cluster is the session's own."""
    prefix = f"cftest-{uuid.uuid4().hex[:10]}"
    _use_backend(monkeypatch, redis_cluster_url, CAREFLOW_REDIS_PREFIX=prefix)
    yield prefix
    forget_breakers()


@pytest.fixture
def sentinel_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisSentinel]:
    """Breakers in a Redis master that a Sentinel names (``careflow_redis`` a ``redis+sentinel://``
    URL); the master, its replica and the Sentinel are this test's own."""
    with redis_sentinel(tmp_path / "sentinel") as setup:
        _use_backend(monkeypatch, setup.url, CAREFLOW_REDIS_PREFIX="cftest-sentinel")
        yield setup
        forget_breakers()


@pytest.fixture
def dead_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Redis configured but unreachable for the whole test: breakers fall back to the breaker file
    of this test (yielded)."""
    path = tmp_path / "breakers.db"
    _use_backend(monkeypatch, DEAD_REDIS_URL, CAREFLOW_BREAKER_DB=str(path))
    yield path
    forget_breakers()


@pytest.fixture
def embedded_breakers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No Redis configured: breakers in the embedded SQLite file of this test."""
    path = tmp_path / "breakers.db"
    _use_backend(monkeypatch, "", CAREFLOW_BREAKER_DB=str(path))
    yield path
    forget_breakers()
