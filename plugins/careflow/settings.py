"""Where careflow finds its configuration: Airflow connections and the ``[careflow]`` config section.

Names operators rely on (docs/contracts.md §3):

- ``careflow_db``: SQLAlchemy URI of careflow's and the clinic's tables. Absent: the embedded
  SQLite file ``$AIRFLOW_HOME/careflow.db``.
- ``careflow_messaging``: the provider (type http; ``host`` base URL, ``password`` bearer token,
  extra ``{"max_concurrency": 50, "timeout": 10}``).
- ``careflow_redis``: breaker state and caches. Absent: embedded fallbacks.
- ``careflow_alerts``: webhook for alerts.
- ``[careflow] workflows_dir``: where published snapshots are read from.
- ``[careflow] send_process``: whether action tasks send from a process of their own (default true).

Lookups never touch the network while a DAG file is parsed: environment first, then Airflow's
secrets backends (the metadata DB only when asked for a connection at run time).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

DB_CONN_ID = "careflow_db"
MESSAGING_CONN_ID = "careflow_messaging"
REDIS_CONN_ID = "careflow_redis"
ALERTS_CONN_ID = "careflow_alerts"


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection careflow uses."""

    conn_id: str
    conn_type: str
    host: str = ""
    port: int | None = None
    login: str = ""
    password: str = ""
    schema: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def airflow_home() -> Path:
    """``$AIRFLOW_HOME`` (default ``~/airflow``)."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def _config(section: str, key: str) -> str | None:
    env = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if env:
        return env
    try:
        from airflow.configuration import conf

        value = conf.get(section, key, fallback=None)
        return str(value) if value else None
    except Exception:  # Airflow not importable or not configured: the default applies
        return None


def workflows_dir() -> Path:
    """``[careflow] workflows_dir``: where published snapshots live (default ``$AIRFLOW_HOME/careflow/workflows``)."""
    value = _config("careflow", "workflows_dir")
    return Path(value) if value else airflow_home() / "careflow" / "workflows"


def send_in_process() -> bool:
    """``[careflow] send_process`` (default true): action tasks send from a forked process of their own.

    False keeps the provider client in a thread of the task process (one interpreter lock for
    preparing and sending: a lower send rate, one process fewer).
    """
    value = _config("careflow", "send_process")
    if value is None:
        return True
    return value.strip().lower() not in ("0", "false", "no", "off")


def prepare_nice() -> int:
    """``[careflow] prepare_nice`` (default 5): how far an action task's preparing thread lowers its priority.

    While its send process runs, the thread that prepares and records batches gives way to the
    processes that cannot wait without leaving the provider's connections idle: the send process,
    the database, and whatever else shares the cores. It takes its priority back when the action
    ends, where the operating system allows that. 0 keeps it as it is; at most 19.
    """
    value = _config("careflow", "prepare_nice")
    if value is None or not value.strip():
        return 5
    try:
        nice = int(value)
    except ValueError:
        raise ValueError(
            f"[careflow] prepare_nice must be a whole number from 0 to 19, got {value!r}"
        ) from None
    if not 0 <= nice <= 19:
        raise ValueError(f"[careflow] prepare_nice must be a whole number from 0 to 19, got {nice}")
    return nice


def _parse_uri(conn_id: str, uri: str) -> ConnectionInfo:
    if uri.lstrip().startswith("{"):
        data = json.loads(uri)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        return ConnectionInfo(
            conn_id=conn_id,
            conn_type=data.get("conn_type", ""),
            host=data.get("host") or "",
            port=data.get("port"),
            login=data.get("login") or "",
            password=data.get("password") or "",
            schema=data.get("schema") or "",
            extra=extra,
        )
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {}
    if "__extra__" in query:
        options = json.loads(query.pop("__extra__"))
    options.update(query)
    host = unquote(parts.hostname or "")
    conn_type = parts.scheme.replace("-", "_")
    # Airflow encodes a URL host (http://…) inside the host part: keep it as a base URL.
    if "%2F" in (parts.netloc or "") or "://" in host:
        host = unquote(parts.netloc.split("@")[-1])
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=host,
        port=parts.port,
        login=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        schema=unquote(parts.path.lstrip("/")),
        extra=options,
    )


def get_connection(conn_id: str) -> ConnectionInfo | None:
    """An Airflow connection by id, or None when it is not defined anywhere."""
    env = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if env:
        return _parse_uri(conn_id, env)
    if os.environ.get("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY") == "1":
        return None
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:
        try:
            from airflow.models.connection import Connection

            conn = Connection.get_connection_from_secrets(conn_id)
        except Exception:
            return None
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host or "",
        port=conn.port,
        login=conn.login or "",
        password=conn.password or "",
        schema=conn.schema or "",
        extra=dict(extra or {}),
    )


def sqlalchemy_url(conn: ConnectionInfo) -> str:
    """The SQLAlchemy URL of a ``careflow_db`` connection."""
    if conn.extra.get("sqlalchemy_url"):
        return str(conn.extra["sqlalchemy_url"])
    kind = conn.conn_type.lower()
    if kind in ("sqlite",):
        path = conn.host or conn.schema
        if conn.host and conn.schema:
            path = f"{conn.host}/{conn.schema}"
        return f"sqlite:///{path}"
    if kind in ("postgres", "postgresql", "postgresql+psycopg2"):
        auth = conn.login + (f":{conn.password}" if conn.password else "")
        at = f"{auth}@" if auth else ""
        port = f":{conn.port}" if conn.port else ""
        return f"postgresql+psycopg2://{at}{conn.host or 'localhost'}{port}/{conn.schema or 'postgres'}"
    raise ValueError(
        f"connection {conn.conn_id!r} has type {conn.conn_type!r}: careflow_db must be postgres or sqlite"
    )


def db_url() -> str:
    """SQLAlchemy URL of careflow's tables: ``CAREFLOW_DB_URL``, else ``careflow_db``, else embedded SQLite."""
    if os.environ.get("CAREFLOW_DB_URL"):
        return os.environ["CAREFLOW_DB_URL"]
    conn = get_connection(DB_CONN_ID)
    if conn is not None:
        return sqlalchemy_url(conn)
    return f"sqlite:///{airflow_home() / 'careflow.db'}"


def redis_url() -> str | None:
    """Redis URL from ``careflow_redis`` (or ``CAREFLOW_REDIS_URL``); None means the embedded fallbacks."""
    if "CAREFLOW_REDIS_URL" in os.environ:
        return os.environ["CAREFLOW_REDIS_URL"] or None
    conn = get_connection(REDIS_CONN_ID)
    if conn is None:
        return None
    auth = f":{conn.password}@" if conn.password else ""
    db = conn.extra.get("db", conn.schema or 0)
    return f"redis://{auth}{conn.host or '127.0.0.1'}:{conn.port or 6379}/{db}"


@dataclass(frozen=True)
class MessagingConfig:
    """How to reach the messaging provider."""

    base_url: str
    token: str
    max_concurrency: int = 50
    timeout: float = 10.0
    name: str = "default"


def messaging_config() -> MessagingConfig:
    """The ``careflow_messaging`` connection (ConfigurationError when missing)."""
    from careflow.exceptions import ConfigurationError

    conn = get_connection(MESSAGING_CONN_ID)
    if conn is None:
        raise ConfigurationError(
            "connection 'careflow_messaging' is not defined: add it (type http, host = provider base URL, "
            "password = bearer token), e.g. AIRFLOW_CONN_CAREFLOW_MESSAGING='http://:TOKEN@127.0.0.1:8025'"
        )
    host = conn.host
    if not host.startswith(("http://", "https://")):
        scheme = "https" if conn.conn_type == "https" or conn.extra.get("https") else "http"
        host = f"{scheme}://{host}"
        if conn.port:
            host = f"{host}:{conn.port}"
    return MessagingConfig(
        base_url=host.rstrip("/"),
        token=conn.password,
        max_concurrency=int(conn.extra.get("max_concurrency", 50)),
        timeout=float(conn.extra.get("timeout", 10)),
        name=str(conn.extra.get("provider_name", "default")),
    )
