"""Where careflow finds its configuration: Airflow connections and the ``[careflow]`` config section.

Names operators rely on (docs/contracts.md §3):

- ``careflow_db``: careflow's and the clinic's tables (type postgres or sqlite; the libpq parameters
  of its extra, such as ``sslmode``, reach the driver). Absent: the embedded SQLite file
  ``$AIRFLOW_HOME/careflow.db``.
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

import contextlib
import json
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

DB_CONN_ID = "careflow_db"
MESSAGING_CONN_ID = "careflow_messaging"
REDIS_CONN_ID = "careflow_redis"
ALERTS_CONN_ID = "careflow_alerts"

# libpq's connection parameters (PostgreSQL 18), less the five the URL itself carries: the keys of
# a careflow_db connection's extra (or of its URI's query) that reach the driver.
_LIBPQ_PARAMETERS = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_issuer",
        "oauth_scope",
        "options",
        "passfile",
        "replication",
        "require_auth",
        "requirepeer",
        "requiressl",
        "scram_client_key",
        "scram_server_key",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslkeylogfile",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)

# RFC 3986's scheme: what may stand between the two "://" of a URI whose host is a URL.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


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

    def __post_init__(self) -> None:
        # Spaces and line breaks around a host (pasted from a secrets manager) are never part of it.
        object.__setattr__(self, "host", self.host.strip())


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


#: The setting :func:`workflows_dir` reads, as messages name it.
WORKFLOWS_DIR_SETTING = "[careflow] workflows_dir (AIRFLOW__CAREFLOW__WORKFLOWS_DIR)"


def workflows_dir() -> Path:
    """``[careflow] workflows_dir``: where published snapshots live (default ``$AIRFLOW_HOME/careflow/workflows``)."""
    value = _config("careflow", "workflows_dir")
    return Path(value) if value else airflow_home() / "careflow" / "workflows"


def send_in_process() -> bool:
    """``[careflow] send_process`` (default true): action tasks send from a forked process of their own.

    False keeps the provider client in a thread of the task process (one interpreter lock for
    preparing and sending: a lower send rate, one process fewer).
    """
    return _setting_flag("send_process", default=True)


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


def allow_simulated_runs() -> bool:
    """``[careflow] allow_simulated_runs`` (default false): whether this process runs simulated runs.

    ``careflow simulate`` turns it on in its own process. A worker leaves it off, so a run whose
    conf asks for a simulated clock or a dry run (anyone who may trigger a DAG can write one)
    fails instead of moving real executions on a made-up clock or recording their messages as
    sent without sending them.
    """
    return _setting_flag("allow_simulated_runs", default=False)


#: The words an on/off ``[careflow]`` setting takes: Airflow's own (``t``, ``true``, ``1``; ``f``,
#: ``false``, ``0``) and ``yes``, ``no``, ``on``, ``off`` (any case).
_ON, _OFF = ("true", "t", "1", "yes", "on"), ("false", "f", "0", "no", "off")


def _setting_flag(key: str, *, default: bool) -> bool:
    """The on/off ``[careflow] key``: ``default`` where it is unset or empty; ValueError naming it
    for any other word, rather than taking a typo (``flase``) for one or the other."""
    value = _config("careflow", key)
    if value is None or not value.strip():
        return default
    word = value.strip().lower()
    if word in _ON or word in _OFF:
        return word in _ON
    raise ValueError(f"[careflow] {key} must be true or false, got {value!r}")


def enrollment_lookback() -> timedelta:
    """``[careflow] enrollment_lookback_minutes`` (default 60): how far before the watermark enrollment reads.

    An event is often committed a while after its ``occurred_at`` (a clinic system stamps it when
    its transaction starts, a sync imports the morning's events at noon): a run that had already
    read past that time would never see it. Each enrollment therefore reads this far back again;
    events already enrolled are skipped by the unique (workflow, trigger event) key. Raise it to
    the longest delay with which the clinic's events arrive; 0 reads from the watermark only.
    """
    value = _config("careflow", "enrollment_lookback_minutes")
    if value is None or not value.strip():
        return timedelta(minutes=60)
    try:
        minutes = int(value)
    except ValueError:
        minutes = -1
    if not 0 <= minutes <= 7 * 24 * 60:
        raise ValueError(
            "[careflow] enrollment_lookback_minutes must be a whole number of minutes from 0 to "
            f"10080 (a week), got {value!r}"
        )
    return timedelta(minutes=minutes)


def _flag(value: Any) -> bool:
    """An extra's on/off value, whether JSON gave a boolean or a URI query a string."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _parse_uri(conn_id: str, uri: str) -> ConnectionInfo:
    """A connection in the form of an ``AIRFLOW_CONN_*`` variable: Airflow's JSON or its URI."""
    if uri.lstrip().startswith("{"):
        data = json.loads(uri)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        port = data.get("port")
        return ConnectionInfo(
            conn_id=conn_id,
            conn_type=data.get("conn_type", ""),
            host=data.get("host") or "",
            port=int(port) if port not in (None, "") else None,
            login=data.get("login") or "",
            password=data.get("password") or "",
            schema=data.get("schema") or "",
            extra=extra,
        )
    parts = urlsplit(uri)
    conn_type = parts.scheme.replace("-", "_")
    # A host that is a URL of another scheme than the connection's type has its scheme written
    # after the type's (``http://https://:TOKEN@sms.example.com%2Fapi``, as Connection.get_uri() does).
    protocol, _, rest = uri.partition("://")[2].partition("://")
    if rest and _SCHEME.fullmatch(protocol):
        parts = urlsplit(f"//{rest}")
    else:
        protocol = ""
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {}
    if "__extra__" in query:
        options = json.loads(query.pop("__extra__"))
    options.update(query)
    host = unquote(parts.hostname or "")
    if "/" in host:
        # A URL (http://…) or a path, quoted whole: read it again from the netloc, which urlsplit
        # has not lowercased. Its own port is inside it; a ":" after it is the connection's port.
        host = unquote(parts.netloc.rpartition("@")[2].partition(":")[0])
    if protocol and host:
        host = f"{protocol}://{host}"
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=host,
        port=parts.port,
        login=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        schema=unquote(parts.path[1:]),
        extra=options,
    )


def get_connection(conn_id: str) -> ConnectionInfo | None:
    """An Airflow connection by id, or None when it is not defined anywhere.

    Inside :func:`connections_read_once` for ``conn_id``, the connection as the block read it.
    """
    with _read_once_lock:
        for held in reversed(_read_once):
            if conn_id in held:
                return held[conn_id]
    return _look_up(conn_id)


#: the connections read by the :func:`connections_read_once` blocks in progress, innermost last
_read_once: list[dict[str, ConnectionInfo | None]] = []
_read_once_lock = threading.Lock()


@contextlib.contextmanager
def connections_read_once(*conn_ids: str) -> Iterator[None]:
    """Read these connections now, on this thread, and answer every lookup of them in the block
    from that read, on whatever thread it comes.

    An action task reads this way, on its main thread, the connections its other threads may need
    (the send process's reader thread raising an alert: ``careflow_alerts``, and ``careflow_redis``
    to agree on it with other processes). Airflow's task runner answers a lookup through one
    channel per task process; the one of ``dag.test()`` and ``airflow dags test`` (task and
    supervisor in one process) is not safe to use from two threads at once, and a lookup from the
    reader thread there, while the main thread reported the task deferred, lost that report and
    failed the task.

    What the read finds holds for the whole block, "not defined" included (a secrets backend that
    did not answer says the same, so its alerts are then only logged, as they would be by a lookup
    of their own at that moment). Only a lookup that raises (a malformed ``AIRFLOW_CONN_*`` value)
    is not held: it raises again where the connection is asked for.
    """
    held: dict[str, ConnectionInfo | None] = {}
    for conn_id in conn_ids:
        try:
            held[conn_id] = _look_up(conn_id)
        except Exception:  # the lookup that needs it raises it, where it is asked for
            continue
    with _read_once_lock:
        _read_once.append(held)
    try:
        yield
    finally:
        with _read_once_lock:
            _read_once[:] = [other for other in _read_once if other is not held]


def _look_up(conn_id: str) -> ConnectionInfo | None:
    env = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if env:
        return _parse_uri(conn_id, env)
    if os.environ.get("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY") == "1":
        return None
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:
        if hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS"):
            # In a task, Airflow's task runner gave its answer; the metadata path would only ask it
            # again, with a deprecation warning in the task's log.
            return None
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


def _postgres_options(extra: dict[str, Any]) -> dict[str, str]:
    """The driver's options in a ``careflow_db`` connection's extra: its libpq parameters.

    The other keys are not the driver's, and libpq refuses a connection with a key it does not
    know: careflow's own ``sqlalchemy_url``, those of Airflow's Postgres hook (``cursor``,
    ``sqlalchemy_scheme``…) and anything else an operator keeps there.
    """
    options: dict[str, str] = {}
    for key, value in extra.items():
        if key in _LIBPQ_PARAMETERS and value is not None:
            options[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return options


def sqlalchemy_url(conn: ConnectionInfo) -> str:
    """The SQLAlchemy URL of a ``careflow_db`` connection.

    The extra's ``sqlalchemy_url`` is taken as it is; otherwise the URL is built from the
    connection's fields, with the libpq parameters of its extra (``{"sslmode": "verify-full"}``,
    or ``?sslmode=verify-full`` in its URI) as query parameters.
    """
    from sqlalchemy.engine import URL

    from careflow.exceptions import ConfigurationError

    if conn.extra.get("sqlalchemy_url"):
        return str(conn.extra["sqlalchemy_url"]).strip()
    kind = conn.conn_type.lower()
    if kind in ("sqlite",):
        path = conn.host or conn.schema
        if conn.host and conn.schema:
            path = f"{conn.host}/{conn.schema}"
        return URL.create("sqlite", database=path).render_as_string(hide_password=False)
    if kind in ("postgres", "postgresql", "postgresql+psycopg2"):
        from careflow.servers import split_servers

        query = _postgres_options(conn.extra)
        given = conn.host or "localhost"
        host: str | None = given
        port = conn.port
        if given.startswith("/"):
            # The directory of the server's Unix socket: libpq takes it as the host, a URL cannot.
            query["host"], host = given, None
        elif "," in given:
            # A primary and its standbys (``primary:5432,standby``; the port field is the port of
            # those that name none): libpq takes the lists from the query, a URL's address holds one.
            try:
                hosts, ports = split_servers(given)
            except ValueError as exc:
                raise ConfigurationError(f"connection {conn.conn_id!r}: its host {given!r}: {exc}") from None
            query["host"] = ",".join(hosts)
            if port or any(ports):
                query["port"] = ",".join(own or str(port or "") for own in ports)
            host = port = None
        url = URL.create(
            "postgresql+psycopg2",
            # A password without a login needs the empty login, or the URL leaves it out.
            username=conn.login if conn.login or conn.password else None,
            password=conn.password or None,
            host=host,
            port=port,
            database=conn.schema or "postgres",
            query=query,
        )
        return url.render_as_string(hide_password=False)
    raise ConfigurationError(
        f"connection {conn.conn_id!r} has type {conn.conn_type!r}: careflow_db must be postgres or sqlite"
    )


#: Airflow's executors that run every task on the machine of the scheduler that queued it.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def remote_executors() -> list[str]:
    """The executors of ``[core] executor`` that may run tasks on other machines (class names).

    The setting lists one or more, each a name, a class path or ``alias:class path``; with
    teams, ``;`` separates the lists and ``team=`` starts a team's.
    """
    names = [
        entry.split(":")[-1].strip().rsplit(".", 1)[-1]
        for executors in (_config("core", "executor") or "").split(";")
        for entry in executors.split("=", 1)[-1].split(",")
    ]
    return [name for name in names if name and name not in LOCAL_EXECUTORS]


def db_url() -> str:
    """SQLAlchemy URL of careflow's tables: ``CAREFLOW_DB_URL``, else ``careflow_db``, else embedded SQLite.

    The embedded SQLite file is the fallback only where Airflow runs every task on one machine.
    With an executor that runs them elsewhere, each worker would keep a file and a ledger of its
    own, and a message could go out once from each: careflow refuses (``ConnectionMissing``).
    A secrets backend that fails to answer looks like a missing connection to Airflow's lookup,
    so a worker there fails its task and Airflow retries it.
    """
    if os.environ.get("CAREFLOW_DB_URL", "").strip():
        # Stripped: a URL kept in a file or a secret often ends in a line break ("test\n" is no database).
        return os.environ["CAREFLOW_DB_URL"].strip()
    conn = get_connection(DB_CONN_ID)
    if conn is not None:
        return sqlalchemy_url(conn)
    remote = remote_executors()
    if remote:
        from careflow.exceptions import ConnectionMissing

        raise ConnectionMissing(
            DB_CONN_ID,
            f"connection 'careflow_db' is not defined (or the secrets backend did not return it), and "
            f"Airflow runs tasks with {', '.join(remote)}: each worker would keep its own "
            "$AIRFLOW_HOME/careflow.db, and its own record of what was sent. Add careflow_db, the "
            "Postgres database every worker shares, e.g. "
            "AIRFLOW_CONN_CAREFLOW_DB='postgresql://careflow:PASSWORD@db-host:5432/careflow' "
            "(or set CAREFLOW_DB_URL)",
        )
    home = airflow_home()
    if not home.is_absolute():
        from careflow.exceptions import ConfigurationError

        raise ConfigurationError(
            f"AIRFLOW_HOME {str(home)!r} is a relative path: careflow's embedded database "
            "($AIRFLOW_HOME/careflow.db), like Airflow's own, would be found from each process's working "
            f"directory; set AIRFLOW_HOME={home.absolute()} (or name careflow_db)"
        )
    return f"sqlite:///{home / 'careflow.db'}"


def db_url_origin() -> str:
    """Where :func:`db_url` finds careflow's database, for messages: the variable, the connection,
    or the embedded default."""
    if os.environ.get("CAREFLOW_DB_URL", "").strip():
        return "CAREFLOW_DB_URL"
    if get_connection(DB_CONN_ID) is not None:
        return f"the {DB_CONN_ID} connection"
    return "the embedded default"


def redis_connection_used() -> bool:
    """Whether :func:`redis_url` reads the ``careflow_redis`` connection: not when ``CAREFLOW_REDIS_URL`` is set."""
    return "CAREFLOW_REDIS_URL" not in os.environ


def redis_url() -> str | None:
    """Redis URL from ``careflow_redis`` (or ``CAREFLOW_REDIS_URL``); None means the embedded fallbacks."""
    if not redis_connection_used():
        return os.environ["CAREFLOW_REDIS_URL"].strip() or None
    conn = get_connection(REDIS_CONN_ID)
    if conn is None:
        return None
    # TLS: a connection of type rediss, or Airflow's Redis hook's extra {"ssl": true}.
    scheme = "rediss" if conn.conn_type == "rediss" or _flag(conn.extra.get("ssl")) else "redis"
    auth = quote(conn.login, safe="") + (f":{quote(conn.password, safe='')}" if conn.password else "")
    at = f"{auth}@" if auth else ""
    db = conn.extra.get("db", conn.schema or 0)
    sentinels = conn.extra.get("sentinels")
    if sentinels:
        return _sentinel_url(conn, sentinels, f"{scheme}+sentinel", at, db)
    if conn.host.startswith("/"):  # the server's Unix socket, on this machine
        return f"unix://{at}{quote(conn.host, safe='/')}?db={quote(str(db), safe='')}"
    return f"{scheme}://{at}{conn.host or '127.0.0.1'}:{conn.port or 6379}/{db}"


def _sentinel_url(conn: ConnectionInfo, sentinels: Any, scheme: str, at: str, db: Any) -> str:
    """The ``redis+sentinel://`` (``rediss+sentinel://``) URL of a ``careflow_redis`` connection whose
    extra names the Sentinels (``["s1:26379", "s2:26379"]`` or ``"s1:26379,s2:26379"``) and their
    ``service``."""
    from careflow.exceptions import ConfigurationError

    servers = sentinels.split(",") if isinstance(sentinels, str) else sentinels
    service = conn.extra.get("service")
    if not isinstance(servers, list) or not all(isinstance(s, str) and s.strip() for s in servers):
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extra.sentinels must be a list of host:port, got {sentinels!r}"
        )
    if not isinstance(service, str) or not service:
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extra.sentinels needs extra.service, the name the Sentinels "
            'monitor the master by (e.g. "mymaster")'
        )
    query = ""
    if conn.extra.get("sentinel_password"):
        query = f"?sentinel_password={quote(str(conn.extra['sentinel_password']), safe='')}"
    hosts = ",".join(server.strip() for server in servers)
    return f"{scheme}://{at}{hosts}/{quote(service, safe='')}/{db}{query}"


@dataclass(frozen=True)
class MessagingConfig:
    """How to reach the messaging provider."""

    base_url: str
    token: str
    max_concurrency: int = 50
    timeout: float = 10.0
    name: str = "default"
    #: the proxy the connection names for the base URL's scheme (extra ``proxies``), if any
    proxy: str | None = None

    @classmethod
    def of(cls, conn: ConnectionInfo, name: str) -> MessagingConfig:
        """A messaging connection as a config; ``name`` unless its extra names the provider.

        The proxy is the one the extra's ``proxies`` names for the base URL's scheme
        (:func:`connection_proxy`), used instead of the environment's.
        """
        base_url = messaging_base_url(conn)
        return cls(
            base_url=base_url,
            token=conn.password.strip(),  # a bearer token never ends in a line break; a pasted one may
            max_concurrency=int(_extra_number(conn, "max_concurrency", 50, whole=True)),
            timeout=_extra_number(conn, "timeout", 10),
            name=str(conn.extra.get("provider_name", name)),
            proxy=connection_proxy(conn, base_url),
        )


def _extra_number(conn: ConnectionInfo, key: str, default: float, *, whole: bool = False) -> float:
    """A number in a connection's extra (JSON's, or text such as ``"50"``); ConfigurationError naming it otherwise."""
    from careflow.exceptions import ConfigurationError

    value = conn.extra.get(key, default)
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)
        if not math.isfinite(number) or (whole and not number.is_integer()):
            raise ValueError(value)
    except (TypeError, ValueError):
        kind = "a whole number" if whole else "a number"
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extra.{key} must be {kind}, got {value!r}"
        ) from None
    return number


def connection_proxy(conn: ConnectionInfo, url: str) -> str | None:
    """The proxy an HTTP connection names for ``url``'s scheme, or None (then the environment's).

    The extra's ``proxies`` is Airflow's HTTP connections' own: proxy URLs by scheme,
    ``{"https": "http://proxy.internal:3128"}``. ConfigurationError when it is not that.
    """
    from careflow.exceptions import ConfigurationError

    proxies = conn.extra.get("proxies") or {}
    if not isinstance(proxies, dict) or not all(isinstance(v, str) for v in proxies.values()):
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extra.proxies must be an object of proxy URLs by scheme, "
            'such as {"https": "http://proxy.internal:3128"}'
        )
    return proxies.get(url.split("://", 1)[0].lower()) or None


def messaging_base_url(conn: ConnectionInfo) -> str:
    """The provider's base URL in a messaging connection.

    ``host`` is the base URL, or its host name alone: then the connection type (``https``), a
    ``schema`` of ``http`` or ``https`` (as Airflow's HTTP hook reads it) or the extra
    ``{"https": true}`` gives the scheme, and ``port`` the port. Any other ``schema`` is the path
    (where Airflow puts it from a URI like ``https://:TOKEN@sms.example.com/api``).
    """
    url = conn.host
    path = conn.schema.strip("/")
    scheme_in_schema = path.lower() in ("http", "https")
    if not url.startswith(("http://", "https://")):
        if scheme_in_schema:
            scheme = path.lower()
        else:
            scheme = "https" if conn.conn_type == "https" or conn.extra.get("https") else "http"
        host = f"[{url}]" if ":" in url and not url.startswith("[") else url  # an IPv6 address
        url = f"{scheme}://{host}"
        if conn.port:
            url = f"{url}:{conn.port}"
    if path and not scheme_in_schema:
        url = f"{url.rstrip('/')}/{path}"
    return url.rstrip("/")


def messaging_config() -> MessagingConfig:
    """The ``careflow_messaging`` connection (ConnectionMissing, a ConfigurationError, when missing)."""
    from careflow.exceptions import ConnectionMissing

    conn = get_connection(MESSAGING_CONN_ID)
    if conn is None:
        raise ConnectionMissing(
            MESSAGING_CONN_ID,
            "connection 'careflow_messaging' is not defined: add it (type http, host = provider base URL, "
            "password = bearer token), e.g. AIRFLOW_CONN_CAREFLOW_MESSAGING='http://:TOKEN@127.0.0.1:8025'",
        )
    return MessagingConfig.of(conn, "default")
