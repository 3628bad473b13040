"""Shared fixtures: real Postgres and SQLite databases, a workflows dir, a migrated Airflow home.

Postgres tests get a fresh database per session (``CAREFLOW_TEST_PG``, default
``postgresql+psycopg2://postgres@127.0.0.1:5432``), dropped at the end.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from support import EXAMPLES, airflow_env, redis_cluster, redis_tls, self_signed_certificate, tmpfs, upgraded

# Every Airflow import in the test session sees one private home (never ~/airflow); the
# `airflow_home` fixture migrates its metadata DB once, for the tests that need it.
TEST_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="careflow-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(TEST_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{TEST_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CAREFLOW__WORKFLOWS_DIR", str(TEST_AIRFLOW_HOME / "workflows"))
# The JWTs the view tests sign: 64 bytes, as HS512 asks (Airflow would generate 16 and warn).
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))

PG_SERVER = os.environ.get("CAREFLOW_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")


def _pg_available() -> bool:
    try:
        engine = create_engine(f"{PG_SERVER}/postgres")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextmanager
def pg_database(encoding: str | None = None) -> Iterator[str]:
    """A fresh Postgres database (its URL), in ``encoding`` when given, dropped at the end."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"Postgres is not reachable at {PG_SERVER}; .ci/run should have started it")
        pytest.skip("Postgres is not reachable")
    name = f"careflow_test_{uuid.uuid4().hex[:10]}"
    # template0: the one template a database of another encoding may be copied from.
    options = f" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if encoding else ""
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{options}'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        from careflow.store.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own, 1 MB (a tmpfs mounted for the test), to fill or make read-only."""
    from careflow.store.db import dispose_engines

    with tmpfs(tmp_path / "disk", "1m") as disk:
        try:
            yield disk
        finally:
            dispose_engines()  # before the disk goes: no connection left to a file on it


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh Postgres database for this test session (its URL)."""
    with pg_database() as url:
        yield url


def _reset_schema(url: str) -> None:
    """Drop every table so each test starts from an empty, then upgraded, database."""
    from careflow.store import tables

    engine = create_engine(url)
    tables.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An upgraded careflow database on Postgres and on the embedded SQLite (the test runs twice).

    ``postgres EUC_KR`` (through ``indirect``) is a Postgres database of its own in that encoding.
    """
    if request.param == "postgres":
        url = request.getfixturevalue("pg_server_url")
        _reset_schema(url)
    elif request.param.startswith("postgres "):
        with pg_database(request.param.split()[1]) as url:
            yield from upgraded(url, monkeypatch)
        return
    else:
        url = f"sqlite:///{tmp_path / 'careflow.db'}"
    yield from upgraded(url, monkeypatch)


@pytest.fixture(params=["postgres", "sqlite"])
def empty_db_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database with no table and no view at all; ``CAREFLOW_DB_URL`` points at it."""
    from careflow.store.db import dispose_engines

    if request.param == "postgres":
        url = request.getfixturevalue("pg_server_url")
        dispose_engines()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    dispose_engines()
    yield url
    dispose_engines()


@pytest.fixture
def engine(db_url: str) -> Engine:
    """The pooled engine of ``db_url``."""
    from careflow.store.db import get_engine

    return get_engine(db_url)


@pytest.fixture
def workflows_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``[careflow] workflows_dir``."""
    path = tmp_path / "workflows"
    path.mkdir()
    monkeypatch.setenv("AIRFLOW__CAREFLOW__WORKFLOWS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's Airflow home (SQLite metadata, the repo's dags folder), migrated once.

    In-process Airflow code (the auth manager…) uses it; subprocesses get it with ``airflow_env``.
    """
    home = TEST_AIRFLOW_HOME
    env = airflow_env(home, home / "workflows")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return home


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of three primaries of the session's own; the URL of its first node."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``localhost``, 127.0.0.1 and ``provider.test``, and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def redis_tls_url(tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]) -> Iterator[str]:
    """A Redis of the session's own that speaks TLS only, with ``certificate``; its ``rediss://`` URL."""
    with redis_tls(tmp_path_factory.mktemp("redis-tls"), certificate) as url:
        yield url


@pytest.fixture
def example_files() -> list[Path]:
    """The example workflows shipped in ``include/workflows``."""
    return sorted(EXAMPLES.glob("*.json"))
