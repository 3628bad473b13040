"""``careflow db upgrade``: create or migrate careflow's tables, and the clinic tables where absent.

Migrations are numbered and applied in order inside one transaction each; the applied versions
are recorded in ``careflow_schema_migrations``. Add a migration by appending to ``MIGRATIONS``;
never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection, Engine

from careflow.store import tables
from careflow.store.db import get_engine


@dataclass(frozen=True)
class Migration:
    """One schema change."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    tables.metadata.create_all(conn, tables=list(tables.CAREFLOW_TABLES), checkfirst=True)


def _open_steps_index(conn: Connection) -> None:
    index = next(i for i in tables.steps.indexes if i.name == "ix_steps_open")
    index.create(conn, checkfirst=True)


#: Columns that hold ids the clinic's data or the provider chose: text of any length.
_FOREIGN_IDS = (
    ("careflow_executions", "trigger_event_id"),
    ("careflow_executions", "patient_id"),
    ("careflow_executions", "appointment_id"),
    ("careflow_messages", "patient_id"),
    ("careflow_messages", "provider_id"),
)


def _foreign_ids_as_text(conn: Connection) -> None:
    # SQLite keeps text of any length in any of its text columns; Postgres needs the type changed
    # (varchar to text keeps the rows and indexes as they are).
    if conn.dialect.name != "postgresql":
        return
    for table, column in _FOREIGN_IDS:
        conn.execute(text(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE TEXT'))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "careflow tables: versions, executions, steps, ledger", _initial),
    Migration(2, "careflow_steps: the open steps of a node in id order (ix_steps_open)", _open_steps_index),
    Migration(3, "clinic and provider ids of any length (executions, ledger)", _foreign_ids_as_text),
)


@dataclass
class UpgradeReport:
    """What ``db upgrade`` did."""

    url: str
    applied: list[int]
    current: int
    clinic_tables_created: list[str]


def current_version(conn: Connection) -> int:
    """The highest applied migration (0 on an empty database)."""
    if not inspect(conn).has_table(tables.schema_migrations.name):
        return 0
    versions = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


def upgrade(engine: Engine | None = None) -> UpgradeReport:
    """Bring careflow's tables to the latest version and create missing clinic tables."""
    engine = engine or get_engine()
    created: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        existing = _relations(conn)
        for table in tables.CLINIC_TABLES:
            if table.name not in existing:
                table.create(conn)
                created.append(table.name)
        tables.schema_migrations.create(conn, checkfirst=True)
    applied: list[int] = []
    for migration in MIGRATIONS:
        with engine.begin() as conn:
            _lock(conn)
            if migration.version <= current_version(conn):
                continue
            migration.apply(conn)
            conn.execute(
                tables.schema_migrations.insert().values(
                    version=migration.version,
                    description=migration.description,
                    applied_at=datetime.now(timezone.utc),
                )
            )
            applied.append(migration.version)
    with engine.connect() as conn:
        version = current_version(conn)
    return UpgradeReport(
        url=engine.url.render_as_string(hide_password=True),
        applied=applied,
        current=version,
        clinic_tables_created=created,
    )


#: Postgres advisory lock key of ``db upgrade`` (any constant shared by every careflow process).
UPGRADE_LOCK_KEY = 0x63617265666C6F77 & 0x7FFFFFFFFFFFFFFF  # "careflow"


def _lock(conn: Connection) -> None:
    # Services may run `db upgrade` as they start, at the same time: the second one waits for the
    # first's transaction, then finds the work done. SQLite serialises through BEGIN IMMEDIATE.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})


def _relations(conn: Connection) -> set[str]:
    """Every name a clinic may have given its data under: tables, views, and on Postgres
    materialized views and foreign tables (in the search path's first schema, as the others)."""
    inspector: Any = inspect(conn)  # Postgres's inspector has the two methods below
    names = set(inspector.get_table_names()) | set(inspector.get_view_names())
    if conn.dialect.name == "postgresql":
        names |= set(inspector.get_materialized_view_names())
        names |= set(inspector.get_foreign_table_names())
    return names


def check_ready(engine: Engine | None = None) -> None:
    """Raise ConfigurationError when the database has not been upgraded."""
    from careflow.exceptions import ConfigurationError

    engine = engine or get_engine()
    with engine.connect() as conn:
        version = current_version(conn)
    latest = MIGRATIONS[-1].version
    if version < latest:
        raise ConfigurationError(
            f"careflow's tables are at version {version}, the code needs {latest}: run `careflow db upgrade`"
        )
