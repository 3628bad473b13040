"""The ``careflow_db`` URL forms careflow takes: Postgres through psycopg2 however the URL says it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from careflow.cli import main
from careflow.exceptions import ConfigurationError
from careflow.store.db import database_name, dispose_engines, engine_url, get_engine, unreachable_database
from support import as_nobody, free_port, open_directory, remount_read_only


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2"])
def test_every_plain_postgres_form_connects_through_psycopg2(pg_server_url, scheme):
    url = scheme + pg_server_url[pg_server_url.index("://") :]
    engine = get_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert engine.dialect.driver == "psycopg2"
    finally:
        dispose_engines()


def test_db_upgrade_takes_a_plain_postgresql_url(pg_server_url, monkeypatch, capsys):
    monkeypatch.setenv("CAREFLOW_DB_URL", "postgresql" + pg_server_url[pg_server_url.index("://") :])
    try:
        assert main(["db", "upgrade"]) == 0
    finally:
        dispose_engines()
    assert "unexpected error" not in capsys.readouterr().err


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg", "pg8000"])
def test_another_postgres_driver_is_refused_with_the_forms_that_work(driver):
    with pytest.raises(ConfigurationError) as caught:
        engine_url(f"postgresql+{driver}://clinic:s3cret@db.example:5432/careflow")
    message = str(caught.value)
    assert repr(driver) in message and "postgresql+psycopg2://" in message
    assert "s3cret" not in message


def test_sqlite_and_the_password_are_left_as_they_are():
    assert engine_url("sqlite:////tmp/careflow.db") == "sqlite:////tmp/careflow.db"
    assert engine_url("postgresql://u:p%40ss@h:5/db") == "postgresql+psycopg2://u:p%40ss@h:5/db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///file::memory:?uri=true",
        "sqlite:///file:careflow?mode=memory&cache=shared&uri=true",
    ],
)
def test_an_in_memory_sqlite_database_is_refused(url):
    """Each process would hold its own, empty, and lose the ledger with it."""
    with pytest.raises(ConfigurationError) as caught:
        engine_url(url)
    message = str(caught.value)
    assert message.startswith(f"careflow_db: {url!r} is an in-memory SQLite database")
    assert "sqlite:////var/lib/airflow/careflow.db" in message


def test_a_relative_sqlite_path_is_refused_with_its_absolute_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, named in [
        ("sqlite:///careflow.db", tmp_path / "careflow.db"),
        ("sqlite:///data/careflow.db", tmp_path / "data" / "careflow.db"),
        ("sqlite:///file:careflow.db?uri=true", tmp_path / "careflow.db"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            engine_url(url)
        assert str(caught.value) == (
            f"careflow_db: {url!r} names a relative path, which each process (the scheduler, each "
            "worker, this command) would find from its own working directory: write the absolute "
            f"path, sqlite:///{named}"
        )
    assert not list(tmp_path.iterdir())  # nothing was created where this process happens to be


def test_an_absolute_sqlite_file_is_taken_in_either_form(tmp_path):
    for url in (
        f"sqlite:///{tmp_path}/a.db",
        f"sqlite+pysqlite:///{tmp_path}/b.db",
        f"sqlite:///file:{tmp_path}/c.db?mode=rwc&uri=true",
    ):
        assert engine_url(url) == url
        try:
            with get_engine(url).connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            dispose_engines()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.db", "b.db", "c.db"]


def test_another_sqlite_driver_is_refused():
    with pytest.raises(ConfigurationError, match="names the SQLite driver 'aiosqlite'; careflow speaks"):
        engine_url("sqlite+aiosqlite:////tmp/careflow.db")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("mysql://root:s3cret@127.0.0.1/test", "mysql"),
        ("mariadb+pymysql://root:s3cret@127.0.0.1/test", "mariadb"),
        ("mssql+pyodbc://sa:s3cret@db/careflow", "mssql"),
        ("redis://:s3cret@localhost:6379/0", "redis"),
    ],
)
def test_a_database_careflow_does_not_support_is_named_not_an_unexpected_error(
    url, kind, monkeypatch, capsys
):
    """Before, SQLAlchemy's search for a driver failed the command: "unexpected error:
    ModuleNotFoundError: No module named 'MySQLdb'"."""
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert f"names a {kind!r} database, which careflow does not support" in err
    assert "Postgres (postgresql://…)" in err and "sqlite:////var/lib/airflow/careflow.db" in err
    assert "s3cret" not in err and "unexpected" not in err


def test_an_unreadable_url_is_named_without_its_password():
    with pytest.raises(ConfigurationError, match="is not a database URL") as caught:
        engine_url("not a url://u:hunter2@host/db")
    assert "hunter2" not in str(caught.value)


def test_a_list_of_servers_with_their_ports_connects_to_the_first_that_answers(pg_server_url):
    """libpq's form of a primary and its standbys, which SQLAlchemy alone cannot read."""
    server = make_url(pg_server_url)
    nobody = free_port()
    url = (
        f"postgresql://{server.username}@127.0.0.1:{nobody},{server.host}:{server.port}/{server.database}"
        "?target_session_attrs=read-write"
    )
    engine = get_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT inet_server_port()")).scalar() == server.port
    finally:
        dispose_engines()


def test_a_list_of_servers_keeps_ipv6_addresses_and_the_query():
    url = make_url(engine_url("postgresql://u:p%40ss@[::1]:5432,standby/db?sslmode=require"))
    assert (url.drivername, url.host, url.username, url.password, url.database) == (
        "postgresql+psycopg2",
        None,
        "u",
        "p@ss",
        "db",
    )
    assert dict(url.query) == {"host": "::1,standby", "port": "5432,", "sslmode": "require"}
    # Without a port the list is the address's host, as libpq and SQLAlchemy both read it.
    assert engine_url("postgresql://u@h1,h2/db") == "postgresql+psycopg2://u@h1,h2/db"
    # A comma in the password is the password's, with one server or several.
    one = make_url(engine_url("postgresql://u:pa,ss@h:5432/db"))
    assert (one.password, one.host, one.port, dict(one.query)) == ("pa,ss", "h", 5432, {})
    several = make_url(engine_url("postgresql://u:pa,ss@h1:5432,h2:5433/db"))
    assert (several.password, dict(several.query)) == ("pa,ss", {"host": "h1,h2", "port": "5432,5433"})


def test_a_servers_port_that_is_not_a_number_is_named_without_the_password():
    with pytest.raises(ConfigurationError, match="is not a database URL") as caught:
        engine_url("postgresql://u:hunter2@h1:5432,h2:54x/db")
    message = str(caught.value)
    assert "the port '54x' of the server 'h2:54x' is not a number" in message
    assert "hunter2" not in message


def test_a_unix_socket_directory_in_libpq_form_connects(pg_server_url):
    """``postgresql://user@%2Fvar%2Frun%2Fpostgresql/db``: libpq's form of a socket's directory,
    which SQLAlchemy alone hands to libpq as a host name that does not resolve."""
    server = make_url(pg_server_url)
    with get_engine(pg_server_url).connect() as conn:
        directories = conn.execute(text("SHOW unix_socket_directories")).scalar() or ""
    dispose_engines()
    directory = next((d.strip() for d in directories.split(",") if d.strip().startswith("/")), None)
    if directory is None or not Path(directory, f".s.PGSQL.{server.port}").exists():
        pytest.skip("the Postgres server has no Unix socket on this machine")
    encoded = quote(directory, safe="")
    for address in (encoded, f"{encoded}:{server.port}"):
        engine = get_engine(f"postgresql://{server.username}@{address}/{server.database}")
        try:
            with engine.connect() as conn:
                # A socket connection has no client address.
                assert conn.execute(text("SELECT inet_client_addr() IS NULL")).scalar() is True
        finally:
            dispose_engines()


def test_a_socket_directory_moves_to_the_query_and_a_single_server_stays():
    url = make_url(engine_url("postgresql://u:pw@%2Frun%2Fpg:5433/db?sslmode=disable"))
    assert (url.host, url.port, url.password) == (None, None, "pw")
    assert dict(url.query) == {"host": "/run/pg", "port": "5433", "sslmode": "disable"}
    assert dict(make_url(engine_url("postgresql://u@%2frun%2fpg/db")).query) == {"host": "/run/pg"}
    assert engine_url("postgresql://u@db.internal:5433/db") == "postgresql+psycopg2://u@db.internal:5433/db"
    assert engine_url("postgresql:///db?host=/run/pg") == "postgresql+psycopg2:///db?host=%2Frun%2Fpg"


def test_only_a_failure_to_connect_names_the_database_as_unreachable(pg_server_url):
    engine = get_engine(pg_server_url)
    try:
        with pytest.raises(DBAPIError) as failed_statement, engine.connect() as conn:
            conn.execute(text("SELECT no_such_column"))
        assert unreachable_database(failed_statement.value) is None
        nobody = get_engine(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db")
        with pytest.raises(DBAPIError) as refused:
            nobody.connect()
        assert unreachable_database(refused.value) == database_name(nobody)
        assert "hunter2" not in database_name(nobody)
    finally:
        dispose_engines()


def test_a_pooled_connection_the_server_closed_is_replaced_on_checkout(pg_server_url):
    """The server ended the session (``idle_session_timeout``, a restart, a pooler): the next
    checkout's ping notices and the pool connects again, with no error for the caller."""
    engine = get_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with get_engine(pg_server_url).pool._creator() as admin:  # a connection outside the pool
            admin.autocommit = True
            admin.cursor().execute("SELECT pg_terminate_backend(%s)", (first,))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    finally:
        dispose_engines()


def test_an_embedded_database_in_a_directory_that_does_not_exist_is_named(tmp_path, monkeypatch, capsys):
    """SQLite says only "unable to open database file"; careflow says which directory is missing."""
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("CAREFLOW_DB_URL", f"sqlite:///{missing / 'careflow.db'}")
    try:
        assert main(["db", "upgrade"]) == 2
    finally:
        dispose_engines()
    assert capsys.readouterr().err == (
        f"careflow: cannot open or write careflow's database sqlite:///{missing / 'careflow.db'} (from "
        f"CAREFLOW_DB_URL): unable to open database file: its directory {missing} does not exist: create "
        "it, or correct the URL\n"
    )
    assert not missing.exists()


def test_an_embedded_database_on_a_read_only_filesystem_is_named(small_disk, monkeypatch, capsys):
    url = f"sqlite:///{small_disk / 'careflow.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    try:
        assert main(["db", "upgrade"]) == 0
        dispose_engines()
        remount_read_only(small_disk)
        assert main(["db", "upgrade"]) == 2
    finally:
        dispose_engines()
    err = capsys.readouterr().err
    assert err.endswith(
        f"careflow: cannot open or write careflow's database {url} (from CAREFLOW_DB_URL): unable to open "
        f"database file: {small_disk} is on a read-only filesystem: mount it writable\n"
    )


def _write_a_clinic(url: str) -> tuple[str | None, str | None] | None:
    """What careflow says (to the CLI, to alerts) of writing to ``url``; None where it worked."""
    from careflow.store import tables
    from careflow.store.db import database_unusable

    try:
        with get_engine(url).begin() as conn:
            conn.execute(tables.clinics.insert().values(id="c1", name="Seoul", timezone="Asia/Seoul"))
    except Exception as exc:
        return database_unusable(exc), database_unusable(exc, driver_message=False)
    return None


@pytest.mark.parametrize("where", ["a file it may not write", "a directory it may not enter"])
def test_an_embedded_database_another_user_created_is_named_with_the_user(where, tmp_path, monkeypatch):
    """`careflow db upgrade` run as root, the tasks as Airflow's user: SQLite says "attempt to write a
    readonly database" or "unable to open database file"; careflow names the user and the file or
    directory, for the CLI and for alerts."""
    from careflow.store.migrations import upgrade

    with contextlib.ExitStack() as stack:
        if where == "a file it may not write":
            folder = stack.enter_context(open_directory())
        else:
            folder = tmp_path / "home"  # pytest's own temporary directory is root's alone
            folder.mkdir()
        url = f"sqlite:///{folder / 'careflow.db'}"
        monkeypatch.setenv("CAREFLOW_DB_URL", url)
        stack.callback(dispose_engines)
        upgrade()
        dispose_engines()
        told, alerted = as_nobody(lambda: _write_a_clinic(url))
    if where == "a file it may not write":
        driver = "attempt to write a readonly database"
        problem = (
            f"this user (nobody, uid 65534) may not write {folder / 'careflow.db'}: SQLite writes the file "
            "and, beside it, its -wal and -shm files; let the user every Airflow component runs as write both"
        )
    else:
        driver = "unable to open database file"
        problem = (
            f"this user (nobody, uid 65534) may not reach {folder}: let the user every Airflow component "
            "runs as enter every directory above the file"
        )
    said = f"cannot open or write careflow's database {url} (from CAREFLOW_DB_URL)"
    assert (told, alerted) == (f"{said}: {driver}: {problem}", f"{said}: {problem}")


def test_an_embedded_database_locked_by_another_writer_is_named(tmp_path, monkeypatch, capsys):
    """Another program holds a write transaction on careflow.db past SQLite's busy timeout (30 s;
    half a second here): SQLite says only "database is locked"."""
    import sqlite3

    from careflow.store import db

    path = tmp_path / "careflow.db"
    url = f"sqlite:///{path}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.5)
    try:
        assert main(["db", "upgrade"]) == 0
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a database browser with changes not yet written
        try:
            assert main(["db", "upgrade"]) == 2
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        dispose_engines()
    assert capsys.readouterr().err.endswith(
        f"careflow: careflow's database {url} (from CAREFLOW_DB_URL) stayed locked by another writer for "
        "0.5 s: database is locked: another careflow process, or another program (a database browser, a "
        "backup), holds a write transaction on it; try again once it ends\n"
    )
