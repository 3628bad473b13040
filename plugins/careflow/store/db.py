"""Database engines for the ``careflow_db`` connection (Postgres or the embedded SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, create_engine

from careflow import settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets task processes read while one writes; busy_timeout queues writers instead of failing.
    # pysqlite's own transaction handling is switched off so that _sqlite_begin decides.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    # Take the write lock up front: a read lock upgraded later fails under contention.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    """A pooled engine for ``url`` (default: :func:`careflow.settings.db_url`), one per process."""
    url = url or settings.db_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            # hide_parameters: a failed statement's error (and so the task log) names the statement,
            # never the values it carried (patients' ids, and names and phones where the demo loads them).
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": 30}, future=True, hide_parameters=True)
                event.listen(engine, "connect", _sqlite_pragmas)
                event.listen(engine, "begin", _sqlite_begin)
            else:
                # values_plus_batch: bulk UPDATEs go out in pages, not one round trip per row.
                engine = create_engine(
                    url,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    executemany_mode="values_plus_batch",
                    executemany_batch_page_size=1000,
                    hide_parameters=True,
                )
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after a fork, or at the end of a test)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success."""
    engine = engine or get_engine()
    with engine.begin() as conn:
        yield conn


def is_postgres(conn: Connection | Engine) -> bool:
    """True on Postgres (row locks with SKIP LOCKED are available)."""
    return conn.dialect.name == "postgresql"
