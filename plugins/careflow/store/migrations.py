"""``careflow db upgrade``: create or migrate careflow's tables, and the clinic tables where absent.

Migrations are numbered and applied in order inside one transaction each; the applied versions
are recorded in ``careflow_schema_migrations``. Add a migration by appending to ``MIGRATIONS``;
never edit one that has shipped.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from careflow.exceptions import ConfigurationError, first_line
from careflow.store import tables
from careflow.store.db import database_name, get_engine


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


def _problem_indexes(conn: Connection) -> None:
    for table, name in ((tables.steps, "ix_steps_problems"), (tables.messages, "ix_messages_problems")):
        next(i for i in table.indexes if i.name == name).create(conn, checkfirst=True)


def _waiting_steps_index(conn: Connection) -> None:
    # Built again in its new column order. Until then, on a node's steps just written and not
    # analysed, a low random_page_cost made Postgres read them all through it and sort them.
    conn.execute(text("DROP INDEX IF EXISTS ix_steps_due"))
    next(i for i in tables.steps.indexes if i.name == "ix_steps_due").create(conn)


def _executions_updated_in_place(conn: Connection) -> None:
    # The index on (workflow_id, status) made every status change write an entry in each of the
    # table's indexes; the one on (workflow_id, enrolled_at) serves the same scans by workflow.
    # The fill factor applies to the pages written from now on.
    conn.execute(text("DROP INDEX IF EXISTS ix_executions_workflow_status"))
    next(i for i in tables.executions.indexes if i.name == "ix_executions_workflow_enrolled").create(
        conn, checkfirst=True
    )
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(f"ALTER TABLE careflow_executions SET (fillfactor = {tables.EXECUTIONS_FILLFACTOR})")
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "careflow tables: versions, executions, steps, ledger", _initial),
    Migration(2, "careflow_steps: the open steps of a node in id order (ix_steps_open)", _open_steps_index),
    Migration(3, "clinic and provider ids of any length (executions, ledger)", _foreign_ids_as_text),
    Migration(
        4,
        "failed and skipped steps and unsent messages (ix_steps_problems, ix_messages_problems)",
        _problem_indexes,
    ),
    Migration(
        5, "careflow_steps: the waiting steps of a workflow in due order (ix_steps_due)", _waiting_steps_index
    ),
    Migration(
        6,
        "careflow_executions: updated in place (no index on status, pages half free; "
        "ix_executions_workflow_enrolled)",
        _executions_updated_in_place,
    ),
)


@dataclass
class UpgradeReport:
    """What ``db upgrade`` did."""

    url: str
    applied: list[int]
    current: int
    clinic_tables_created: list[str]
    #: what keeps careflow from reading the clinic's data as it now is (:func:`clinic_data_problems`):
    #: every run refuses to start until it is mended
    clinic_problems: list[str] = field(default_factory=list)
    #: where a clinic table was created while the database holds one of that name that the role's
    #: search path does not reach (:func:`_found_elsewhere`): careflow reads the empty one it created
    clinic_warnings: list[str] = field(default_factory=list)


def current_version(conn: Connection) -> int:
    """The highest applied migration (0 on an empty database)."""
    if not inspect(conn).has_table(tables.schema_migrations.name):
        return 0
    versions = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


def upgrade(engine: Engine | None = None) -> UpgradeReport:
    """Bring careflow's tables to the latest version and create missing clinic tables.

    A role the database does not let create or change them gets a ConfigurationError that says
    what to run it as, or to grant.
    """
    engine = engine or get_engine()
    try:
        return _upgrade(engine)
    except DBAPIError as exc:
        # insufficient_privilege; invalid_schema_name: no schema of the search path it may use
        if getattr(exc.orig, "pgcode", None) not in ("42501", "3F000"):
            raise
        raise ConfigurationError(_not_permitted(engine, exc)) from exc


def _not_permitted(engine: Engine, exc: DBAPIError) -> str:
    with engine.connect() as conn:
        role, schema = conn.execute(text("SELECT current_user, coalesce(current_schema(), 'public')")).one()
    return (
        f"the role {role} may not create or change careflow's tables in {database_name(engine)} "
        f"({first_line(exc.orig or exc)}): run `careflow db upgrade` as the role that owns them or the "
        f"database's owner, or GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}. The tasks "
        "themselves need only SELECT, INSERT, UPDATE and DELETE on the tables and USAGE on their "
        "sequences"
    )


def _upgrade(engine: Engine) -> UpgradeReport:
    created: list[str] = []
    warnings: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        newer = _newer_than_this_careflow(conn, engine)
        if newer is not None:
            raise ConfigurationError(f"{newer}; nothing was changed")
        existing = _relations(conn)
        absent = [table.name for table in tables.CLINIC_TABLES if table.name not in existing]
        # An empty table created in front of the clinic's own would hide it from every statement
        # careflow runs, once the role is granted what it lacks: none is created where the clinic's
        # is there but out of the role's reach (clinic_data_problems says what to do).
        hidden, aside = _found_elsewhere(conn, absent)
        for table in tables.CLINIC_TABLES:
            if table.name in absent and table.name not in hidden:
                table.create(conn)
                created.append(table.name)
                warnings += aside.get(table.name, [])
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
        problems, _ = clinic_data_problems(conn)
    return UpgradeReport(
        url=engine.url.render_as_string(hide_password=True),
        applied=applied,
        current=version,
        clinic_tables_created=created,
        clinic_problems=problems,
        clinic_warnings=warnings,
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
    materialized views and foreign tables, in whichever schema of the search path careflow's
    statements find them (SQLAlchemy's inspector lists what the search path makes visible)."""
    inspector: Any = inspect(conn)  # Postgres's inspector has the two methods below
    names = set(inspector.get_table_names()) | set(inspector.get_view_names())
    if conn.dialect.name == "postgresql":
        names |= set(inspector.get_materialized_view_names())
        names |= set(inspector.get_foreign_table_names())
    else:  # SQLite's names are not case-sensitive: a clinic's "Patients" is the patients careflow reads
        names = {name.lower() for name in names}
    return names


#: Engines whose database :func:`check_ready` found ready: checked once per process and database.
_ready: weakref.WeakSet[Engine] = weakref.WeakSet()


def check_ready(engine: Engine | None = None) -> int:
    """Raise ConfigurationError when the database has not been upgraded or a clinic id is not text.

    Runs as each run's enrollment starts, before careflow reads the clinic's data; once a database
    is found ready, not again in this process. Returns the number of queries it ran.
    """
    engine = engine or get_engine()
    if engine in _ready:
        return 0
    with engine.connect() as conn:
        version = current_version(conn)
        latest = MIGRATIONS[-1].version
        if version == 0 and (out_of_reach := schema_out_of_reach(conn, engine)) is not None:
            raise ConfigurationError(out_of_reach)
        if version < latest:
            raise ConfigurationError(
                f"careflow's tables are at version {version}, the code needs {latest}: run `careflow db upgrade`"
            )
        newer = _newer_than_this_careflow(conn, engine, version)
        if newer is not None:
            raise ConfigurationError(newer)
        problems, queries = clinic_data_problems(conn)
    if problems:
        raise ConfigurationError("; and ".join(problems))
    _ready.add(engine)
    return 2 + queries


def schema_out_of_reach(conn: Connection, engine: Engine) -> str | None:
    """Where careflow's tables exist (Postgres) in a schema this role may not use, what to grant;
    else None. Without USAGE on the schema (``REVOKE ALL ON SCHEMA public FROM PUBLIC``, as
    hardening guides advise, and nothing granted back), its tables look missing to the role."""
    if conn.dialect.name != "postgresql":
        return None
    found = conn.execute(
        text(
            "SELECT n.nspname, current_user FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :table AND NOT has_schema_privilege(n.oid, 'USAGE') LIMIT 1"
        ),
        {"table": tables.schema_migrations.name},
    ).first()
    if found is None:
        return None
    schema, role = found
    return (
        f"careflow's tables are in schema {schema} of {database_name(engine)}, which the role {role} "
        f"may not use: as the schema's owner, GRANT USAGE ON SCHEMA {schema} TO {role}"
    )


def _newer_than_this_careflow(conn: Connection, engine: Engine, version: int | None = None) -> str | None:
    """Why this careflow must not use tables a newer careflow upgraded (after a release was rolled
    back, or beside workers of the newer one), or None where it knows their version.

    Its writes would not be the ones the newer version's tables expect, the exactly-once ledger's
    among them; Airflow refuses a metadata database migrated past its own version likewise.
    """
    version = current_version(conn) if version is None else version
    latest = MIGRATIONS[-1].version
    if version <= latest:
        return None
    return (
        f"careflow's tables in {database_name(engine)} are at version {version}, newer than this "
        f"careflow knows (up to {latest}): a newer careflow upgraded them. Run that careflow (or a "
        "newer one) in every Airflow component; careflow never downgrades its tables"
    )


#: The id columns of each clinic relation (``id`` and the ids of the rows it refers to).
_CLINIC_IDS = {
    table.name: [c.name for c in table.c if c.name == "id" or c.name.endswith("_id")]
    for table in tables.CLINIC_TABLES
}


def clinic_data_problems(conn: Connection) -> tuple[list[str], int]:
    """What keeps careflow from reading the clinic's four relations, each said with what to do
    (none where it can read them), and the number of queries it took to find out: a relation that
    does not exist, columns careflow reads that a relation lacks (a clinic's view that maps only
    some), ids that are not text."""
    columns, not_text, queries = _clinic_columns(conn)
    absent = [table.name for table in tables.CLINIC_TABLES if table.name not in columns]
    hidden: dict[str, str] = {}
    if absent:
        hidden, _ = _found_elsewhere(conn, absent)
        queries += conn.dialect.name == "postgresql"
        absent = [name for name in absent if name not in hidden]
    lacking = [
        f"{table.name} has no {', '.join(_missing_columns(conn, table, columns[table.name]))}"
        for table in tables.CLINIC_TABLES
        if table.name in columns and not {c.name for c in table.c} <= columns[table.name]
    ]
    problems = []
    if absent:
        problems.append(
            f"the clinic's data has no {', '.join(absent)} (docs/contracts.md §2): run `careflow db "
            "upgrade`, which creates what is absent, or create the view careflow reads"
        )
    problems += dict.fromkeys(hidden.values())  # one for the relations of one schema
    if lacking:
        problems.append(
            f"the clinic's data lacks columns careflow reads (docs/contracts.md §2): {'; '.join(lacking)}; "
            "add them, or map the clinic's own columns in the view careflow reads (a constant where it "
            "has none, for example false AS consent_marketing)"
        )
    if not_text:
        problems.append(
            f"the clinic's ids must be text (docs/contracts.md §2): {', '.join(not_text)}; cast each "
            "to text in the view careflow reads, for example CAST(id AS text) AS id"
        )
    return problems, queries


def _missing_columns(conn: Connection, table: Table, has: set[str]) -> list[str]:
    """The columns careflow reads that a clinic relation lacks, each that the relation has under
    capitals (``"Name"``, created in quotes: Postgres keeps them) with how to map it."""
    quote = conn.dialect.identifier_preparer.quote
    missing = []
    for column in (c.name for c in table.c if c.name not in has):
        alike = sorted(h for h in has if h.lower() == column)
        missing.append(
            f"{column} (it has {quote(alike[0])}: {quote(alike[0])} AS {column})" if alike else column
        )
    return missing


def _found_elsewhere(conn: Connection, names: Sequence[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Where the database holds one of the clinic relations ``names`` (which careflow's statements
    do not find) out of the role's reach, on Postgres: by name, what keeps careflow from reading it,
    with what to do, where it is surely the one careflow should read; and, apart, where one of that
    name sits in a schema the role's search path does not name, which may or may not be the
    clinic's, what to do if it is.

    Surely the clinic's: one in a schema the search path names but the role may not use (Postgres
    passes over such a schema without a word), or one on the search path named with capitals
    (``CREATE TABLE "Patients"``: Postgres keeps a quoted name as it is, careflow's ``patients``
    is another name). SQLite has neither (names are not case-sensitive there, :func:`_relations`).
    """
    if not names or conn.dialect.name != "postgresql":
        return {}, {}
    found = conn.execute(
        text(
            "SELECT lower(c.relname), c.relname, n.nspname, has_schema_privilege(n.oid, 'USAGE'), "
            "n.nspname = ANY(current_schemas(false)), current_setting('search_path'), current_user "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE lower(c.relname) = ANY(CAST(:names AS text[])) AND c.relkind IN ('r', 'v', 'm', 'f', 'p') "
            "AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY n.nspname"
        ),
        {"names": list(names)},
    ).all()
    if not found:
        return {}, {}
    quote = conn.dialect.identifier_preparer.quote
    search_path, role = found[0][5:]
    named_schemas = _search_path_schemas(search_path, role)
    hidden: dict[str, str] = {}
    aside: dict[str, list[str]] = {}
    unusable: dict[str, list[str]] = {}  # by schema, careflow's names of the relations in it
    for name, relname, schema, usable, on_path, *_ in sorted(found, key=lambda row: names.index(row[0])):
        named = schema in named_schemas
        where = f"{quote(schema)}.{quote(relname)}"
        if relname == name and named and not usable:
            unusable.setdefault(schema, []).append(name)
        elif relname != name and on_path:
            hidden.setdefault(
                name,
                f"the clinic's {where} is not the {name} careflow reads (Postgres keeps the capitals "
                f"of a name created in quotes): create the view careflow reads over it, CREATE VIEW "
                f"{quote(schema)}.{name} AS SELECT * FROM {where}, naming each column as careflow "
                "reads it (docs/contracts.md §2)",
            )
        elif relname == name and not named:
            aside.setdefault(name, []).append(
                f"{where} is not on the role {role}'s search_path ({search_path}): careflow reads "
                f"the {name} it created, empty. Where {where} is the clinic's, drop the one created "
                f"and put {quote(schema)} on the search_path (ALTER ROLE {quote(role)} SET search_path "
                f"= {search_path}, {quote(schema)})"
            )
    for schema, in_it in unusable.items():
        said = (
            f"the clinic's {', '.join(in_it)} {'is' if len(in_it) == 1 else 'are'} in schema {schema}, "
            f"which the role {role}'s search_path ({search_path}) names but the role may not use, so "
            f"Postgres passes over it: as the schema's owner, GRANT USAGE ON SCHEMA {quote(schema)} "
            f"TO {quote(role)}"
        )
        hidden.update((name, said) for name in in_it if name not in hidden)
    return hidden, aside


def _search_path_schemas(setting: str, role: str) -> set[str]:
    """The schemas a ``search_path`` setting names, as Postgres reads it: an unquoted name in
    lower case, a quoted one as it is, ``$user`` the role's own."""
    named = set()
    for item in re.findall(r'(?:"(?:[^"]|"")*"|[^,"])+', setting):
        item = item.strip()
        quoted = len(item) > 1 and item[0] == item[-1] == '"'
        item = item[1:-1].replace('""', '"') if quoted else item.lower()
        named.add(role if item == "$user" else item)
    return named


def _clinic_columns(conn: Connection) -> tuple[dict[str, set[str]], list[str], int]:
    """The columns of each clinic relation that exists (by its name), its id columns that are not
    text ("patients.id is integer"), and the number of queries it took to find them.

    An integer id never matches the text careflow stores and binds: Postgres refuses to compare
    them, SQLite finds no row or the wrong one.
    """
    columns: dict[str, set[str]] = {}
    if conn.dialect.name == "postgresql":
        # Each name as careflow's statements resolve it (the search path), table or view alike.
        found = conn.execute(
            text(
                "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid IN (SELECT to_regclass(name) FROM unnest(CAST(:names AS text[])) AS name) "
                "AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            {"names": list(_CLINIC_IDS)},
        ).all()
        for relation, column, _, _ in found:
            columns.setdefault(relation, set()).add(column)
        return (
            columns,
            [
                f"{relation}.{column} is {type_}"
                for relation, column, type_, category in found
                if column in _CLINIC_IDS.get(relation, ()) and category != "S"
            ],
            1,
        )
    # SQLite: a column declared INTEGER (REAL, NUMERIC…) keeps numbers; a view's computed column
    # declares nothing, and what it holds tells (one row of each).
    declared = conn.exec_driver_sql(
        # Names as careflow's statements find them: SQLite's are not case-sensitive.
        "SELECT lower(m.name), lower(p.name), p.type FROM sqlite_master m JOIN pragma_table_info(m.name) p "
        f"WHERE m.type IN ('table', 'view') AND lower(m.name) IN ({', '.join('?' * len(_CLINIC_IDS))})",
        tuple(_CLINIC_IDS),
    ).all()
    for relation, column, _ in declared:
        columns.setdefault(relation, set()).add(column)
    ids = [(r, c, t) for r, c, t in declared if c in _CLINIC_IDS.get(r, ())]
    not_text = [f"{r}.{c} is {t.lower()}" for r, c, t in ids if _numeric_affinity(t)]
    sampled = [(r, c) for r, c, t in ids if not t]
    if not sampled:
        return columns, not_text, 1
    preparer = conn.dialect.identifier_preparer
    held = conn.exec_driver_sql(
        "SELECT "
        + ", ".join(
            f"(SELECT typeof({preparer.quote(c)}) FROM {preparer.quote(r)} LIMIT 1)" for r, c in sampled
        )
    ).one()
    not_text += [
        f"{r}.{c} holds {kind} values"
        for (r, c), kind in zip(sampled, held, strict=True)
        if kind in ("integer", "real")
    ]
    return columns, not_text, 2


def _numeric_affinity(declared: str) -> bool:
    """Whether SQLite stores a number written into a column declared ``declared`` as a number."""
    declared = declared.upper()
    if "INT" in declared:
        return True
    return bool(declared) and not any(word in declared for word in ("CHAR", "CLOB", "TEXT", "BLOB"))
