"""Database engines for the ``careflow_db`` connection (Postgres or the embedded SQLite)."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, create_engine, make_url

from careflow import settings
from careflow.exceptions import first_line, this_user
from careflow.servers import split_servers

#: The isolation level of every careflow transaction on Postgres (see :func:`get_engine`).
POSTGRES_ISOLATION = "READ COMMITTED"
#: The encoding careflow's Postgres sessions speak, whatever the database's (see :func:`get_engine`).
POSTGRES_CLIENT_ENCODING = "UTF8"

#: How long an SQLite statement waits for another connection's write lock before it fails.
SQLITE_BUSY_TIMEOUT_S = 30.0

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets task processes read while one writes; busy_timeout queues writers instead of failing.
    # pysqlite's own transaction handling is switched off so that _sqlite_begin decides.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _postgres_utc(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # A clinic's view may serve times without a zone: careflow reads them as UTC (docs/contracts.md
    # §2), and so must the session, which compares them with careflow's times in its own TimeZone.
    # Set on the connection, not as a startup option: poolers such as PgBouncer refuse those.
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    cur = dbapi_conn.cursor()
    cur.execute("SET TIME ZONE 'UTC'")
    cur.close()
    dbapi_conn.autocommit = autocommit


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    # Take the write lock up front: a read lock upgraded later fails under contention.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def engine_url(url: str) -> str:
    """``url`` with the Postgres driver careflow speaks through (psycopg2) made explicit.

    ``postgresql://`` (and the ``postgres://`` many hosts hand out) mean psycopg2 here, whatever
    SQLAlchemy's default driver is; another driver named in the URL is refused with the forms that
    work, since careflow's bulk statements are written for psycopg2. An SQLite URL is taken as it is
    where it names a file by its absolute path (:func:`_sqlite_refusal`); another database is refused.
    """
    from sqlalchemy.exc import ArgumentError

    from careflow.exceptions import ConfigurationError

    try:
        parsed = make_url(_servers_as_query(url))
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"careflow_db: {hidden_url(url)!r} is not a database URL ({exc})") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        refusal = _sqlite_refusal(parsed.database or "", driver, dict(parsed.query))
        if refusal is not None:  # named as given: an SQLite URL holds no password
            raise ConfigurationError(f"careflow_db: {url!r} {refusal}")
        return url
    if backend not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"careflow_db: {hidden_url(url)!r} names a {backend!r} database, which careflow does not "
            "support; it keeps its tables in Postgres (postgresql://…) or, where one machine runs every "
            f"task, in an SQLite file ({_SQLITE_EXAMPLE})"
        )
    if driver not in ("", "psycopg2"):
        raise ConfigurationError(
            f"careflow_db: {hidden_url(url)!r} names the Postgres driver {driver!r}; careflow speaks to "
            "Postgres through psycopg2: write postgresql://… or postgresql+psycopg2://…"
        )
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


#: An SQLite URL careflow takes, as its errors give it.
_SQLITE_EXAMPLE = "sqlite:////var/lib/airflow/careflow.db"


def _sqlite_refusal(database: str, driver: str, query: dict[str, Any]) -> str | None:
    """Why an SQLite URL of ``database`` (through ``driver``, with ``query``) cannot hold careflow's
    tables, or None where it can: a file named by its absolute path, through Python's sqlite3.

    An in-memory database would be each process's own, empty, and gone with it (the ledger of what
    was sent with it); a relative path is found from each process's working directory (the
    scheduler's, a worker's, the command's), so each could write a file of its own.
    """
    if driver not in ("", "pysqlite"):
        return (
            f"names the SQLite driver {driver!r}; careflow speaks to SQLite through Python's sqlite3: "
            f"write sqlite:////… ({_SQLITE_EXAMPLE})"
        )
    uri = str(query.get("uri", "")).lower() in ("true", "1")  # ``file:…`` with SQLite's own parameters
    path = database.removeprefix("file:") if uri else database
    if path in ("", ":memory:") or (uri and query.get("mode") == "memory"):
        return (
            "is an in-memory SQLite database: each process would have one of its own, empty, and lose "
            f"it when it ends, with the record of what was sent; name a file by its absolute path ({_SQLITE_EXAMPLE})"
        )
    if not os.path.isabs(path):
        return (
            "names a relative path, which each process (the scheduler, each worker, this command) would "
            f"find from its own working directory: write the absolute path, sqlite:///{os.path.abspath(path)}"
        )
    return None


#: A Postgres URL: its scheme, login, servers (one, or a list in libpq's form), path and query.
#: The servers hold no ``@``: a comma in the login's password is not a list.
_ADDRESS = re.compile(
    r"^(?P<scheme>postgres(?:ql)?(?:\+\w+)?)://(?P<login>[^@/?#]*@)?(?P<servers>[^@/?#]*)"
    r"(?P<path>/[^?#]*)?(?:\?(?P<query>[^#]*))?$"
)


def _servers_as_query(url: str) -> str:
    """``url`` with what SQLAlchemy cannot read from its address moved to ``?host=…&port=…``.

    SQLAlchemy reads one host and one port from a URL's address: it fails on a list of servers
    that name ports (``h1:5432,h2:5433``), and hands a Unix socket's directory, which libpq's form
    writes percent-encoded (``%2Fvar%2Frun%2Fpostgresql``), to libpq as a host name. libpq takes
    both from the query as it takes them from the address, and SQLAlchemy decodes the query. A
    list without ports (``h1,h2``) and a single server are left in the address, where SQLAlchemy
    passes them on.
    """
    match = _ADDRESS.match(url)
    if match is None:
        return url
    hosts, ports = split_servers(match["servers"])
    sockets = any(host[:3].upper() == "%2F" for host in hosts)
    if not sockets and (len(hosts) < 2 or not any(ports)):
        return url
    query = [
        f"host={','.join(hosts)}",
        *([f"port={','.join(ports)}"] if any(ports) else []),
        *([match["query"]] if match["query"] else []),
    ]
    return f"{match['scheme']}://{match['login'] or ''}{match['path'] or '/'}?{'&'.join(query)}"


def database_name(engine: Engine) -> str:
    """The engine's database URL with its password hidden: how messages name the database."""
    return engine.url.render_as_string(hide_password=True)


def hidden_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def get_engine(url: str | None = None) -> Engine:
    """A pooled engine for ``url`` (default: :func:`careflow.settings.db_url`), one per process."""
    url = url or settings.db_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            url_as_given, url = url, engine_url(url)
            # hide_parameters: a failed statement's error (and so the task log) names the statement,
            # never the values it carried (patients' ids, and names and phones where the demo loads them).
            if url.startswith("sqlite"):
                engine = create_engine(
                    url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, future=True, hide_parameters=True
                )
                event.listen(engine, "connect", _sqlite_pragmas)
                event.listen(engine, "begin", _sqlite_begin)
            else:
                # values_plus_batch: bulk UPDATEs go out in pages, not one round trip per row.
                # READ COMMITTED whatever the server's default: careflow's claims and settles are
                # written for it (row locks, SKIP LOCKED, a statement seeing what committed before
                # it), and a clinic database defaulting to REPEATABLE READ or SERIALIZABLE would
                # fail its concurrent batches with serialization errors. psycopg2 sends the level
                # with each BEGIN, so a pooler's server connections keep their own defaults.
                # UTF-8 on the wire whatever the database's encoding or PGCLIENTENCODING: the
                # server converts to and from EUC_KR or LATIN1, passes a SQL_ASCII database's
                # bytes as they are, and a character it cannot store is its error, not psycopg2's
                # (which would encode Korean text for a SQL_ASCII database as ASCII and fail). A
                # startup parameter, so no round trip, and one PgBouncer passes on. The URL's own
                # client_encoding comes first: the bytes a clinic's software wrote into a
                # SQL_ASCII database may be EUC-KR, which only its operator knows.
                named = "client_encoding" in make_url(url).query
                engine = create_engine(
                    url,
                    connect_args={} if named else {"client_encoding": POSTGRES_CLIENT_ENCODING},
                    isolation_level=POSTGRES_ISOLATION,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    executemany_mode="values_plus_batch",
                    executemany_batch_page_size=1000,
                    hide_parameters=True,
                )
                event.listen(engine, "connect", _postgres_utc, insert=True)
            event.listen(engine, "handle_error", _name_the_database)
            _engines[url_as_given] = engine
        return engine


#: SQLSTATE of a write refused by a server that takes none (a standby, ``default_transaction_read_only``).
READ_ONLY_SQLSTATE = "25006"
#: SQLSTATE of a write the server had no disk space for.
DISK_FULL_SQLSTATE = "53100"
#: SQLSTATE of a statement on a table the role has no privilege on (tables made by another role).
INSUFFICIENT_PRIVILEGE_SQLSTATE = "42501"
#: SQLite's primary result codes for a full database or disk, and for an I/O error (what opening a
#: database in WAL mode on a full disk fails with: its shared-memory file cannot be made).
SQLITE_FULL, SQLITE_IOERR = 13, 10
#: Under this much free space, an SQLite I/O error is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20
#: SQLite's primary result codes where it could not open or write its file: the cause is on disk.
SQLITE_READONLY, SQLITE_CANTOPEN = 8, 14
#: SQLite's primary result code for a write lock another connection held past the busy timeout.
SQLITE_BUSY = 5


#: What careflow says where its database itself is the problem, by the kind :func:`_name_the_database`
#: tagged the error with: ``name`` the database's URL (its password hidden), ``origin`` where that
#: URL came from, ``said`` the driver's first line (or nothing), ``detail`` what is on disk.
_PROBLEMS = {
    "full": "careflow's database {name} (from {origin}) has no space left{said}; free space on the "
    "disk that holds it (what could not be written was rolled back)",
    "file": "cannot open or write careflow's database {name} (from {origin}){said}: {detail}",
    "locked": "careflow's database {name} (from {origin}) stayed locked by another writer for "
    "{detail} s{said}: another careflow process, or another program (a database browser, a backup), "
    "holds a write transaction on it; try again once it ends",
    "unreachable": "cannot connect to careflow's database {name} (from {origin}){said}",
    "read_only": "careflow's database {name} (from {origin}) takes no writes{said}; it is a standby, "
    "or its sessions are read-only: name the primary (or, with several servers, add "
    "target_session_attrs=read-write)",
    "denied": "careflow's database {name} (from {origin}) refused the role {detail}{said}: the tasks, "
    "the careflow command and the api-server need SELECT, INSERT, UPDATE and DELETE on careflow's "
    "tables and USAGE on their sequences; as their owner, in each schema that holds them (public "
    "unless the role's search_path names others): GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN "
    "SCHEMA public TO {detail} and GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {detail}",
    # A table or view of the clinic's (docs/contracts.md §2), which careflow only reads: often
    # another team's, in a schema of its own. ``detail`` is (the relation, the role).
    "denied_clinic": "careflow's database {name} (from {origin}) refused the role {detail[1]} the "
    "clinic's {detail[0]}{said}: careflow reads the clinic's four tables or views; as the owner of "
    "{detail[0]}: GRANT SELECT ON {detail[0]} TO {detail[1]}",
}

#: How Postgres names the relation a role may not read ("permission denied for view patients").
_DENIED_RELATION = re.compile(
    r"permission denied for (?:table|view|materialized view|foreign table|relation) \"?([^\s\"]+)\"?"
)


def _name_the_database(context: Any) -> None:
    """Tag an error with the database's URL where the database itself is the problem (a kind of
    :data:`_PROBLEMS`): its disk is full, SQLite's file cannot be opened or written or stayed
    locked, connecting failed (no statement of careflow's ran), the server takes no writes, or it
    refuses the role the privileges careflow's statements need.

    A pooled connection's ping that fails has no engine in its context and is none of these: the
    pool replaces that connection, and only a new one that cannot be made is.
    """
    if context.is_pre_ping or context.engine is None or context.sqlalchemy_exception is None:
        return
    engine, exc = context.engine, context.original_exception
    detail: str | tuple[str, str] = ""  # what the kind's message in _PROBLEMS fills in
    if out_of_space(engine, exc):
        kind = "full"
    elif (file_problem := _sqlite_file_problem(engine, exc)) is not None:
        kind, detail = "file", file_problem
    elif getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY:
        kind, detail = "locked", f"{SQLITE_BUSY_TIMEOUT_S:g}"
    elif context.connection is None:
        kind = "unreachable"
    elif getattr(exc, "pgcode", None) == READ_ONLY_SQLSTATE:
        kind = "read_only"
    elif getattr(exc, "pgcode", None) == INSUFFICIENT_PRIVILEGE_SQLSTATE:
        role = engine.url.username or getpass.getuser()  # libpq's default role
        kind, detail = "denied", role
        if (relation := _clinic_relation_denied(exc)) is not None:
            kind, detail = "denied_clinic", (relation, role)
    else:
        return
    context.sqlalchemy_exception.careflow_database_problem = (kind, database_name(engine), detail)


def _clinic_relation_denied(exc: BaseException | None) -> str | None:
    """The clinic relation (docs/contracts.md §2) a refused read named, or None where the refusal
    was of careflow's own tables (or named nothing)."""
    from careflow.store.tables import CLINIC_TABLES

    found = _DENIED_RELATION.search(str(exc))
    if found is None or found[1] not in {table.name for table in CLINIC_TABLES}:
        return None
    return found[1]


def out_of_space(engine: Engine, exc: BaseException | None) -> bool:
    """Whether ``exc``, a driver's error on ``engine`` (careflow's, or Airflow's metadata
    database's), says the database's disk (or, for SQLite, the database itself) is full."""
    if getattr(exc, "pgcode", None) == DISK_FULL_SQLSTATE:
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return False
    if code & 0xFF == SQLITE_FULL:
        return True
    path = _sqlite_file(engine) if code & 0xFF == SQLITE_IOERR else None
    if path is None:
        return False
    try:
        return shutil.disk_usage(path.parent).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _sqlite_file(engine: Engine) -> Path | None:
    """The absolute path of an SQLite engine's database file; None for an in-memory one, a
    ``file:`` URI, or a server's database."""
    database = engine.url.database
    if (
        engine.dialect.name != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
    ):
        return None
    return Path(os.path.abspath(database))


def _sqlite_file_problem(engine: Engine, exc: BaseException | None) -> str | None:
    """What on disk keeps SQLite from opening or writing careflow's database file (where SQLite says
    only "unable to open database file" or "attempt to write a readonly database"), with what to
    do; None for any other error, or where nothing on disk explains it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code & 0xFF not in (SQLITE_READONLY, SQLITE_CANTOPEN):
        return None
    path = _sqlite_file(engine)
    if path is None:
        return None
    folder = path.parent
    let = "let the user every Airflow component runs as"
    try:
        if not stat.S_ISDIR(folder.stat().st_mode):
            return f"{folder} is not a directory: correct the URL"
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return f"its directory {folder} does not exist: create it, or correct the URL"
    except PermissionError:
        return f"{this_user()} may not reach {folder}: {let} enter every directory above the file"
    except OSError:
        return None
    if read_only:
        return f"{folder} is on a read-only filesystem: mount it writable"
    for target in (path, folder):
        if os.path.exists(target) and not os.access(target, os.W_OK):
            return (
                f"{this_user()} may not write {target}: SQLite writes the file and, beside it, its "
                f"-wal and -shm files; {let} write both"
            )
    return None


def database_problem_kind(exc: BaseException) -> str | None:
    """The kind of :data:`_PROBLEMS` careflow's engine tagged ``exc`` with ("full", "file",
    "locked", "unreachable", "read_only", "denied", "denied_clinic"), or None where the database
    itself is not the problem."""
    return getattr(exc, "careflow_database_problem", (None,))[0]


def unreachable_database(exc: BaseException) -> str | None:
    """The URL (its password hidden) of the careflow database that ``exc`` failed to connect to;
    None for any other error."""
    kind, name, _ = getattr(exc, "careflow_database_problem", (None, None, None))
    return name if kind == "unreachable" else None


def database_unusable(exc: BaseException, *, driver_message: bool = True) -> str | None:
    """What to tell of ``exc`` where careflow's database itself is the problem: it cannot be reached
    (the server down, a name that does not resolve, a database, role or password it refuses), it
    takes no writes (a standby), its disk is full, or (SQLite) its file cannot be opened or written
    or stayed locked. Names the database, where its URL came from and, unless ``driver_message``
    is false (an alert, which never quotes a driver), the driver's first line; None for any other
    error."""
    problem = getattr(exc, "careflow_database_problem", None)
    if problem is None:
        return None
    kind, name, detail = problem
    said = f": {first_line(getattr(exc, 'orig', None) or exc)}" if driver_message else ""
    return _PROBLEMS[kind].format(name=name, origin=settings.db_url_origin(), said=said, detail=detail)


def what_failed(exc: BaseException) -> str:
    """One line for ``exc``: careflow's words where its database itself is the problem (see
    :func:`database_unusable`), else the error's type and the first line of its message (a driver's
    runs on over several: the statement, a link)."""
    return database_unusable(exc) or f"{type(exc).__name__}: {first_line(exc)}"


def unstorable_character(conn: Connection, value: str) -> tuple[str, str] | None:
    """The first character of ``value`` that the database of ``conn`` cannot store, with the
    encoding it would be stored in (``EUC_KR``, ``LATIN1``…); None where every one can be (UTF8,
    SQL_ASCII, SQLite). That encoding is the database's, or the session's where the URL names one
    (a SQL_ASCII database keeps whatever bytes the session sends). Asks nothing of the server:
    Postgres names both encodings as a session starts.
    """
    if conn.dialect.name != "postgresql":
        return None
    import psycopg2.extensions

    session: Any = conn.connection.dbapi_connection
    for encoding in map(session.get_parameter_status, ("client_encoding", "server_encoding")):
        codec = psycopg2.extensions.encodings.get(encoding or "")
        if encoding in ("UTF8", "SQL_ASCII") or codec is None:
            continue
        try:
            value.encode(codec)
        except UnicodeEncodeError as exc:
            return value[exc.start], encoding
        except LookupError:  # an encoding Python has no codec for: the server decides
            continue
    return None


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


def clock_offset(bind: Connection | Engine) -> timedelta:
    """The database server's clock minus this process's: added to this machine's time, the server's.

    Zero on SQLite (a file of this machine, read by its clock). On Postgres, the server's
    ``clock_timestamp()`` (the time it answers, not its transaction's start) against the middle of
    the round trip that asked for it, so exact to within half of that round trip. On a connection,
    one statement in its transaction.
    """
    from careflow.clock import wall_clock

    if bind.dialect.name != "postgresql":
        return timedelta(0)
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return clock_offset(conn)
    asked = wall_clock()
    server = bind.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    answered = wall_clock()
    return server - (asked + (answered - asked) / 2)


def is_postgres(conn: Connection | Engine) -> bool:
    """True on Postgres (row locks with SKIP LOCKED are available)."""
    return conn.dialect.name == "postgresql"
