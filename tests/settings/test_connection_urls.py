"""The connections careflow reads (docs/contracts.md §3), in every form Airflow gives them.

An ``AIRFLOW_CONN_*`` variable holds a URI (its fields percent-encoded) or JSON; either way a
password or token may hold any character, and the connection's options reach the driver.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from careflow import settings

#: Characters a URL gives a meaning to, and a percent sign that looks like an escape.
PASSWORDS = ["p@ss", "a/b", "50%off", "x#y", "p@ss/w%rd", "tok/en+abc==", "a:b?c d&e=%2F"]


@pytest.fixture(autouse=True)
def env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    monkeypatch.delenv("CAREFLOW_DB_URL", raising=False)
    monkeypatch.delenv("CAREFLOW_REDIS_URL", raising=False)
    for conn_id in ("DB", "REDIS", "MESSAGING"):
        monkeypatch.delenv(f"AIRFLOW_CONN_CAREFLOW_{conn_id}", raising=False)


# careflow_db ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_db_password_with_url_characters_reaches_the_driver(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_DB",
        f"postgresql://careflow:{quote(password, safe='')}@db.internal:5432/careflow",
    )
    url = make_url(settings.db_url())
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2",
        "careflow",
        password,
        "db.internal",
        5432,
        "careflow",
    )


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_json_db_connection_keeps_its_password(password: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "postgres", "host": "db.internal", "port": "5432", "login": "care@flow"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps({**conn, "password": password}))
    url = make_url(settings.db_url())
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "care@flow",
        password,
        "db.internal",
        5432,
        "postgres",
    )


def test_the_uri_query_options_reach_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_DB",
        "postgresql://careflow:secret@db.internal:5432/careflow?sslmode=require&application_name=careflow",
    )
    assert dict(make_url(settings.db_url()).query) == {"sslmode": "require", "application_name": "careflow"}


def test_only_the_driver_options_of_the_extra_reach_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/certs/db ca.pem",
        "options": "-c search_path=clinic,public",
        "connect_timeout": 10,
        "keepalives": True,
        # not libpq's: Airflow's Postgres hook's, and anything else an operator keeps there
        "cursor": "dictcursor",
        "sqlalchemy_scheme": "postgresql",
        "max_concurrency": 5,
    }
    conn = {"conn_type": "postgres", "host": "db.internal", "login": "careflow", "schema": "careflow"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps({**conn, "extra": extra}))
    assert dict(make_url(settings.db_url()).query) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/certs/db ca.pem",
        "options": "-c search_path=clinic,public",
        "connect_timeout": "10",
        "keepalives": "1",
    }
    # The same options in Airflow's URI form of the extra.
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_DB",
        "postgresql://careflow@db.internal/careflow?" + urlencode({"__extra__": json.dumps(extra)}),
    )
    assert make_url(settings.db_url()).query["sslrootcert"] == "/etc/ssl/certs/db ca.pem"


def test_the_extra_sqlalchemy_url_is_careflows_own(monkeypatch: pytest.MonkeyPatch) -> None:
    target = "postgresql+psycopg2://other:pw@elsewhere:6432/careflow?sslmode=require"
    extra = {"sqlalchemy_url": target, "sslmode": "disable"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps({"conn_type": "postgres", "extra": extra}))
    assert settings.db_url() == target
    extra = {"sqlalchemy_url": "", "sslmode": "require"}
    conn = settings.ConnectionInfo("careflow_db", "postgres", host="db.internal", extra=extra)
    assert dict(make_url(settings.sqlalchemy_url(conn)).query) == {"sslmode": "require"}


def test_a_host_listing_a_primary_and_its_standbys_connects_to_the_first_that_answers(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's host in libpq's form, ``primary:port,standby``; the port field for those without one."""
    from careflow.store.db import dispose_engines, get_engine
    from support import free_port

    server = make_url(pg_server_url)
    conn = {
        "conn_type": "postgres",
        "host": f"127.0.0.1:{free_port()},{server.host}",
        "port": server.port or 5432,
        "login": server.username,
        "schema": server.database,
        "extra": {"target_session_attrs": "read-write"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps(conn))
    url = settings.db_url()
    assert make_url(url).query["host"] == f"127.0.0.1,{server.host}"
    try:
        with get_engine(url).connect() as db:
            assert db.execute(text("SELECT inet_server_port()")).scalar() == (server.port or 5432)
    finally:
        dispose_engines()


def test_a_hosts_port_that_is_not_a_number_and_another_type_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from careflow.exceptions import ConfigurationError

    conn = {"conn_type": "postgres", "host": "db1:54x,db2", "login": "u", "password": "hunter2"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps(conn))
    with pytest.raises(
        ConfigurationError, match="the port '54x' of the server 'db1:54x' is not a number"
    ) as caught:
        settings.db_url()
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps({"conn_type": "mysql", "host": "db"}))
    with pytest.raises(ConfigurationError, match="careflow_db must be postgres or sqlite"):
        settings.db_url()


def test_a_password_without_a_login_and_a_socket_directory() -> None:
    conn = settings.ConnectionInfo("careflow_db", "postgres", password="p@ss", schema="careflow")
    url = make_url(settings.sqlalchemy_url(conn))
    assert (url.username, url.password, url.host) == ("", "p@ss", "localhost")
    socket = settings.ConnectionInfo("careflow_db", "postgres", host="/var/run/postgresql", login="careflow")
    url = make_url(settings.sqlalchemy_url(socket))
    assert (url.host, dict(url.query)) == (None, {"host": "/var/run/postgresql"})
    connect_args = create_engine(url).dialect.create_connect_args(url)[1]
    assert connect_args == {"host": "/var/run/postgresql", "user": "careflow", "dbname": "postgres"}


def test_an_absolute_sqlite_path_in_a_uri_stays_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "Care Flow?.db"
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", f"sqlite:///{quote(str(path))}")
    assert make_url(settings.db_url()).database == str(path)
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    assert make_url(settings.db_url()).database == str(path)


@pytest.mark.parametrize(
    ("executor", "refused"),
    [
        ("LocalExecutor", None),
        ("CeleryExecutor", "CeleryExecutor"),
        ("LocalExecutor,KubernetesExecutor", "KubernetesExecutor"),
        ("LocalExecutor,edge:airflow.providers.edge3.executors.EdgeExecutor", "EdgeExecutor"),
        ("LocalExecutor;team1=CeleryExecutor", "runs tasks with CeleryExecutor: each worker"),
    ],
)
def test_the_embedded_database_only_where_every_task_runs_on_one_machine(
    executor: str, refused: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without careflow_db, a worker elsewhere would keep a ledger of its own: careflow refuses, naming why."""
    from careflow.exceptions import ConnectionMissing

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    if refused is None:
        assert settings.db_url() == f"sqlite:///{tmp_path / 'careflow.db'}"
    else:
        with pytest.raises(ConnectionMissing, match=f"careflow_db.*{refused}.*own record of what was sent"):
            settings.db_url()
        assert not (tmp_path / "careflow.db").exists()
    # Defined, or set explicitly, it is used whatever the executor.
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", "postgresql://careflow@db.internal/careflow")
    assert make_url(settings.db_url()).host == "db.internal"
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_DB")
    monkeypatch.setenv("CAREFLOW_DB_URL", f"sqlite:///{tmp_path / 'chosen.db'}")
    assert settings.db_url() == f"sqlite:///{tmp_path / 'chosen.db'}"


# Airflow's own URI of a connection ---------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=16)


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    conn_type=st.sampled_from(["http", "https", "postgres", "redis", "sqlite"]),
    host=st.sampled_from(
        [
            "db.internal",
            "127.0.0.1",
            "http://fake-provider:8025",
            "https://Sms.Example.com:8443/V1",
            "/tmp/Care Flow.db",
        ]
    ),
    login=_TEXT,
    password=_TEXT,
    port=st.none() | st.integers(1, 65535),
    schema=_TEXT,
    extra=st.dictionaries(
        st.sampled_from(["sslmode", "timeout", "max_concurrency"]),
        st.sampled_from(["require", "10", "a b&c=d/%2F"]),
        max_size=2,
    ),
)
def test_connection_get_uri_reads_back_field_for_field(
    conn_type: str, host: str, login: str, password: str, port: int | None, schema: str, extra: dict[str, str]
) -> None:
    from airflow.models.connection import Connection

    uri = Connection(
        conn_id="careflow_db",
        conn_type=conn_type,
        host=host,
        login=login or None,
        password=password or None,
        port=port,
        schema=schema or None,
        extra=json.dumps(extra) if extra else None,
    ).get_uri()
    conn = settings._parse_uri("careflow_db", uri)
    assert (conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra) == (
        host,
        port,
        login,
        password,
        schema,
        extra,
    )


# careflow_redis -------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_redis_login_and_password_with_url_characters(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_REDIS",
        f"redis://cf%40user:{quote(password, safe='')}@redis.internal:6380/1",
    )
    url = settings.redis_url()
    assert url is not None and url.startswith("redis://")
    kwargs = redis.Redis.from_url(url).connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == (
        "cf@user",
        password,
        "redis.internal",
        6380,
        1,
    )


def test_a_redis_connection_over_tls_stays_rediss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_REDIS", "rediss://:p%40ss@redis.internal:6379/2")
    assert settings.redis_url() == "rediss://:p%40ss@redis.internal:6379/2"
    conn = {
        "conn_type": "redis",
        "host": "redis.internal",
        "password": "p/ss",
        "extra": {"ssl": True, "db": 3},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_REDIS", json.dumps(conn))
    assert settings.redis_url() == "rediss://:p%2Fss@redis.internal:6379/3"
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_REDIS", "redis://redis.internal/0?ssl=false")
    assert settings.redis_url() == "redis://redis.internal:6379/0"


# careflow_messaging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", PASSWORDS)
def test_the_provider_token_and_base_url_from_airflows_uri(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.connection import Connection

    conn = Connection(
        conn_id="careflow_messaging", conn_type="http", host="api.provider.example", port=8443, password=token
    )
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", conn.get_uri())
    config = settings.messaging_config()
    assert (config.base_url, config.token) == ("http://api.provider.example:8443", token)


def test_spaces_and_line_breaks_pasted_around_a_host_and_the_token_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = {"conn_type": "http", "host": " https://sms.example.com/api \n", "password": "tok-123\n"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
    config = settings.messaging_config()
    assert (config.base_url, config.token) == ("https://sms.example.com/api", "tok-123")
    redis = {
        "conn_type": "redis",
        "host": "redis.internal\n",
        "password": "p w ",
    }  # a password keeps its spaces
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_REDIS", json.dumps(redis))
    assert settings.redis_url() == "redis://:p%20w%20@redis.internal:6379/0"
    db = {"conn_type": "postgres", "host": " db.internal ", "login": "careflow", "schema": "careflow"}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps(db))
    assert settings.db_url() == "postgresql+psycopg2://careflow@db.internal/careflow"


def test_a_base_url_of_another_scheme_in_airflows_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.models.connection import Connection

    conn = Connection(
        conn_id="careflow_messaging",
        conn_type="http",
        host="https://sms.example.com:8443/API",
        password="tok/en%2F",
        extra=json.dumps({"timeout": 4}),
    )
    uri = conn.get_uri()
    assert uri.startswith("http://https://")
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", uri)
    config = settings.messaging_config()
    assert (config.base_url, config.token, config.timeout) == (
        "https://sms.example.com:8443/API",
        "tok/en%2F",
        4.0,
    )


# over real connections ------------------------------------------------------------------------------


@pytest.fixture
def pg_role(pg_server_url: str) -> Iterator[tuple[str, str, str]]:
    """A role with the password ``p@ss/w%rd`` owning a database of its own: (role, password, database)."""
    from careflow.store.db import dispose_engines

    suffix = uuid.uuid4().hex[:10]
    role, password, database = f"careflow_role_{suffix}", "p@ss/w%rd", f"careflow_conn_{suffix}"
    admin = create_engine(make_url(pg_server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{database}" OWNER "{role}"'))
    try:
        yield role, password, database
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _session(role_url: str) -> tuple[str, str, str, str | None, str]:
    from careflow.store.db import get_engine

    engine = get_engine(role_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("select current_user, current_database(), current_setting('application_name')")
        ).one()
        dbapi = conn.connection.dbapi_connection
        info = dbapi.info  # type: ignore[union-attr]
        return row[0], row[1], row[2], info.password, info.dsn_parameters["sslmode"]


@pytest.mark.postgres
def test_careflow_connects_with_a_uri_whose_password_has_url_characters(
    pg_role: tuple[str, str, str], pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.cli import main

    role, password, database = pg_role
    server = make_url(pg_server_url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_DB",
        f"postgresql://{role}:{quote(password, safe='')}@{server.host}:{server.port or 5432}/{database}"
        "?application_name=careflow-settings-test&sslmode=disable",
    )
    assert _session(settings.db_url()) == (role, database, "careflow-settings-test", password, "disable")
    assert main(["db", "upgrade"]) == 0
    engine = create_engine(make_url(pg_server_url).set(database=database))
    with engine.connect() as conn:
        owner = conn.execute(text("select tableowner from pg_tables where tablename = 'careflow_executions'"))
        assert owner.scalar_one() == role
    engine.dispose()


@pytest.mark.postgres
def test_sslmode_in_the_extra_reaches_the_driver(
    pg_role: tuple[str, str, str], pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, password, database = pg_role
    server = make_url(pg_server_url)
    conn = {
        "conn_type": "postgres",
        "host": server.host,
        "port": server.port or 5432,
        "login": role,
        "password": password,
        "schema": database,
        "extra": {"sslmode": "disable", "max_concurrency": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_DB", json.dumps(conn))
    url = settings.db_url()
    assert dict(make_url(url).query) == {"sslmode": "disable"}
    assert _session(url) == (role, database, "", password, "disable")


@pytest.fixture
def redis_user() -> Iterator[tuple[str, str]]:
    """A Redis ACL user with the password ``p@ss/w%rd:1``: (user, password)."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail("Redis is not reachable at 127.0.0.1:6379; .ci/run should have started it")
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    user, password = f"careflow_user_{uuid.uuid4().hex[:10]}", "p@ss/w%rd:1"
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+ping", "+acl|whoami"])
    try:
        yield user, password
    finally:
        client.acl_deluser(user)
        client.close()


@pytest.mark.redis
def test_careflow_reaches_redis_as_a_user_whose_password_has_url_characters(
    redis_user: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = redis_user
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_REDIS", f"redis://{user}:{quote(password, safe='')}@127.0.0.1:6379/0"
    )
    url = settings.redis_url()
    assert url is not None
    client = redis.Redis.from_url(url)
    try:
        assert client.acl_whoami() == user
    finally:
        client.close()


def test_the_embedded_default_under_a_relative_airflow_home_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process would find ``af/careflow.db`` from its own working directory; Airflow refuses
    such a home for its own database too."""
    from careflow.exceptions import ConfigurationError

    monkeypatch.setattr(settings, "remote_executors", lambda: [])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIRFLOW_HOME", "af")
    with pytest.raises(ConfigurationError) as caught:
        settings.db_url()
    assert str(caught.value) == (
        "AIRFLOW_HOME 'af' is a relative path: careflow's embedded database ($AIRFLOW_HOME/careflow.db), "
        "like Airflow's own, would be found from each process's working directory; set "
        f"AIRFLOW_HOME={tmp_path / 'af'} (or name careflow_db)"
    )
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "af"))
    assert settings.db_url() == f"sqlite:///{tmp_path / 'af' / 'careflow.db'}"


def test_a_url_variable_ending_in_a_line_break_is_the_url(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL kept in a file or a secret often ends in a line break: Postgres was asked for the
    database ``test\\n``."""
    from careflow.store.db import dispose_engines, get_engine

    monkeypatch.setenv("CAREFLOW_DB_URL", f"  {pg_server_url}\n")
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "redis://127.0.0.1:6379/0\n")
    assert settings.db_url() == pg_server_url
    assert settings.db_url_origin() == "CAREFLOW_DB_URL"
    assert settings.redis_url() == "redis://127.0.0.1:6379/0"
    try:
        with get_engine(settings.db_url()).connect() as db:
            assert db.execute(text("SELECT 1")).scalar() == 1
    finally:
        dispose_engines()
    monkeypatch.setenv("CAREFLOW_DB_URL", " \n")  # blank: not set
    monkeypatch.setattr(settings, "remote_executors", lambda: [])
    assert settings.db_url().endswith("/careflow.db") and settings.db_url_origin() == "the embedded default"
