"""Breaker state shared by the task processes of one machine through a SQLite file.

The embedded default (no ``careflow_redis``), and the Redis backend's fallback while Redis is
unreachable: ``airflow standalone`` runs tasks as separate processes on one machine, so the breaker
lives in ``$AIRFLOW_HOME/careflow-breakers.db`` (or the path in ``CAREFLOW_BREAKER_DB``). Each step
runs in a ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock before reading, so two
processes can never both take the last probe slot. Time comes from the local clock: every process
is on the same machine.

If the file cannot be used (disk full, locked past the busy timeout, a directory that cannot be
created), the process falls back to in-memory state with a warning and tries the file again on the
next call.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from careflow.resilience.backends import TRANSITIONS_KEPT, Applied, stale_unless
from careflow.resilience.backends.memory_backend import MemoryBackend
from careflow.resilience.state_machine import BreakerConfig, Event, State, step

log = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 5.0
#: What makes the file unusable: SQLite's errors, and a directory that cannot be created.
UNUSABLE: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS breaker_state (
    name TEXT PRIMARY KEY,
    fields TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS breaker_transitions_by_name ON breaker_transitions (name, id);
"""


def default_path() -> Path:
    """``CAREFLOW_BREAKER_DB``, else ``$AIRFLOW_HOME/careflow-breakers.db``."""
    if os.environ.get("CAREFLOW_BREAKER_DB"):
        return Path(os.environ["CAREFLOW_BREAKER_DB"])
    from careflow.settings import airflow_home

    return airflow_home() / "careflow-breakers.db"


class EmbeddedBackend:
    """Breaker state in a SQLite file, one atomic transaction per step."""

    def __init__(self, path: str | Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._fallback = MemoryBackend(kind="local-fallback", clock=clock)
        self._failing = False

    @property
    def kind(self) -> str:
        return "local-fallback" if self._failing else "embedded"

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork: Airflow's LocalExecutor forks task processes.
        if self._conn is None or self._conn_pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning(
                "breaker file %s is unusable (%s): using per-process breaker state until it works again",
                self.path,
                exc,
            )
        self._failing = True
        self._conn = None

    def _recovered(self) -> None:
        if self._failing:
            log.warning("breaker file %s works again", self.path)
        self._failing = False

    def apply(self, name: str, config: BreakerConfig, event: Event, granted_by: str = "") -> Applied:
        with self._lock:
            try:
                applied = self._apply(name, config, stale_unless(event, granted_by, "embedded"))
            except UNUSABLE as exc:
                self._failed(exc)
                return self._fallback.apply(name, config, event, granted_by)
            self._recovered()
            return applied

    def _apply(self, name: str, config: BreakerConfig, event: Event) -> Applied:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT fields FROM breaker_state WHERE name = ?", (name,)).fetchone()
            state = State.from_fields(json.loads(row[0])) if row else State()
            now = self._clock()
            result = step(state, event, config, now)
            if row is None or result.state != state:  # the first call lists the breaker
                conn.execute(
                    "INSERT INTO breaker_state (name, fields, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET fields = excluded.fields, updated_at = excluded.updated_at",
                    (name, json.dumps(result.state.to_fields()), now),
                )
            if result.transitions:
                conn.executemany(
                    "INSERT INTO breaker_transitions (name, entry) VALUES (?, ?)",
                    [(name, json.dumps(t.to_dict())) for t in result.transitions],
                )
                conn.execute(
                    "DELETE FROM breaker_transitions WHERE name = ? AND id NOT IN "
                    "(SELECT id FROM breaker_transitions WHERE name = ? ORDER BY id DESC LIMIT ?)",
                    (name, name, TRANSITIONS_KEPT),
                )
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
            raise
        return Applied(result, now, "embedded")

    def peek(self, name: str, config: BreakerConfig) -> tuple[State, float, str]:
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute("SELECT fields FROM breaker_state WHERE name = ?", (name,))
                    .fetchone()
                )
            except UNUSABLE as exc:
                self._failed(exc)
                return self._fallback.peek(name, config)
            self._recovered()
            return (State.from_fields(json.loads(row[0])) if row else State()), self._clock(), "embedded"

    def transitions(self, name: str, limit: int = 50) -> list[dict]:
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT entry FROM breaker_transitions WHERE name = ? ORDER BY id DESC LIMIT ?",
                        (name, limit),
                    )
                    .fetchall()
                )
            except UNUSABLE as exc:
                self._failed(exc)
                return self._fallback.transitions(name, limit)
        return [json.loads(entry) for (entry,) in rows]

    def names(self) -> list[str]:
        with self._lock:
            try:
                rows = self._connection().execute("SELECT name FROM breaker_state ORDER BY name").fetchall()
            except UNUSABLE as exc:
                self._failed(exc)
                return self._fallback.names()
        return [name for (name,) in rows]
