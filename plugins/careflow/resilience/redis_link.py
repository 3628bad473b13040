"""One process's connection to Redis, and what happens when Redis is gone.

Breakers and caches run every Redis call through :meth:`RedisLink.run`. A connection error (or a
timeout, a read-only replica after a failover, a Redis refusing writes: out of memory, a
failed background save; or one refusing careflow's credentials or, to an ACL user, a command or
a key) marks the link *down*: the caller gets
:data:`DOWN` and uses its fallback instead of failing the send (breakers: the breaker file shared
by the processes of this machine; caches: per-process memory). While down, Redis is
tried again at most every ``retry_seconds`` so an outage costs no connect timeout per message.
Each change (up -> down, down -> up) is logged once, counted in ``fallback_events`` and emitted as
``breaker_redis_fallback`` / ``breaker_redis_recovered`` (see :mod:`careflow.resilience.events`).

A Redis Cluster is told apart at the first call that reaches the server (``CLUSTER INFO``) and is
then spoken to through a cluster client, which follows its slots to the node that holds them;
each of careflow's scripts touches keys of one slot (one hash tag). A master that Redis Sentinels
watch (``redis+sentinel://``, ``rediss+sentinel://``) is found through them, again after a failover.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from careflow.exceptions import ConfigurationError, first_line
from careflow.resilience import events
from careflow.servers import split_servers

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "careflow"
RETRY_SECONDS = 3.0
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 1.0

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,  # OOM: at maxmemory with noeviction, every write is refused
    # an ACL user refused a command or a key careflow needs (a wrong password is a ConnectionError):
    # the connection is to mend, and meanwhile the fallbacks keep the sends going, as in an outage
    redis.exceptions.NoPermissionError,
    # a cluster that cannot be reached, has a slot no node serves, or kept redirecting
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
    OSError,
)
#: Replies of a Redis that is up but refuses to work right now (a failed background save that
#: stops writes, a replica without its master, a script running too long, a cluster slot moving).
UNAVAILABLE_REPLIES = ("MISCONF", "MASTERDOWN", "BUSY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot be used now (rather than that careflow asked it wrongly)."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(UNAVAILABLE_REPLIES)


class _Down:
    def __repr__(self) -> str:
        return "DOWN"

    def __bool__(self) -> bool:
        return False


DOWN: Any = _Down()
"""Returned by :meth:`RedisLink.run` instead of a value when Redis cannot be used right now."""


def key_prefix() -> str:
    """Prefix of every careflow key in Redis: ``CAREFLOW_REDIS_PREFIX`` or ``careflow``."""
    return os.environ.get("CAREFLOW_REDIS_PREFIX") or DEFAULT_PREFIX


def redact(url: str) -> str:
    """The URL without its passwords (its own, and a Sentinel's in the query), for logs and events."""
    parts = urlsplit(url)
    query = re.sub(r"(?<![^&])(sentinel_password=)[^&]*", r"\1***", parts.query)
    if parts.password is None and query == parts.query:
        return url
    netloc = parts.netloc if parts.password is None else f"***@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class RedisLink:
    """A Redis client plus the up/down bookkeeping shared by every breaker and cache of the process."""

    def __init__(
        self,
        url: str,
        *,
        retry_seconds: float = RETRY_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self._timeouts = {"socket_connect_timeout": connect_timeout, "socket_timeout": socket_timeout}
        #: the client of a single server; it also registers the scripts, whichever client runs them
        self.client = _client(url, self._timeouts)
        #: the client of a Redis Cluster, once the server said it is one of its nodes
        self.cluster: redis.RedisCluster | None = None
        self._kind_known = False
        self._kind_lock = threading.Lock()
        self.fallback_events = 0
        self.recoveries = 0
        self._down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """True while the process works on its fallbacks."""
        return self._down

    def register_script(self, source: str) -> Any:
        return self.client.register_script(source)

    def run(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(client)``, or :data:`DOWN` when Redis is unreachable (now, or recently enough)."""
        if self._down and time.monotonic() < self._retry_at:
            return DOWN
        try:
            value = fn(self._server_client())
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            if not unavailable(exc):
                raise
            self._mark_down(exc)
            return DOWN
        if self._down:
            self._mark_up()
        return value

    def _server_client(self) -> Any:
        """The client that speaks to the server: a cluster client where it is a Redis Cluster node.

        The server is asked once, at the first call that reaches it.
        """
        if not self._kind_known:
            with self._kind_lock:
                if not self._kind_known:
                    cluster = self._is_cluster()
                    if cluster:
                        self.cluster = _cluster_client(self.url, self._timeouts)
                    self._kind_known = True
        return self.cluster if self.cluster is not None else self.client

    def _is_cluster(self) -> bool:
        """Whether the server is a node of a Redis Cluster (``CLUSTER INFO``, which ACLs that
        deny ``@dangerous`` commands such as ``INFO`` allow)."""
        try:
            self.client.execute_command("CLUSTER INFO")
        except redis.exceptions.ResponseError as exc:
            message = str(exc)
            if "cluster support disabled" in message:
                return False
            if message.startswith("SELECT is not allowed in cluster mode"):
                return True  # a cluster node refused the database the URL names
            if isinstance(exc, redis.exceptions.NoPermissionError):
                log.warning(
                    "careflow_redis: the user of %s may not run CLUSTER INFO; careflow takes the server "
                    "for a single Redis, not a node of a Redis Cluster",
                    redact(self.url),
                )
                return False
            raise
        return True

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_seconds
            if self._down:
                return
            self._down = True
            self.fallback_events += 1
        why = _why_unusable(exc, self.url)
        log.warning(
            "Redis at %s cannot be used (%s): until it can, circuit breakers use this machine's "
            "breaker file and caches use per-process state",
            redact(self.url),
            why,
        )
        events.emit("breaker_redis_fallback", url=redact(self.url), error=why)

    def _mark_up(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            self.recoveries += 1
        log.warning(
            "Redis at %s is reachable again: circuit breakers and caches use it again", redact(self.url)
        )
        events.emit("breaker_redis_recovered", url=redact(self.url))


def _client(url: str, timeouts: dict[str, float]) -> redis.Redis:
    """The client of ``url``; ConfigurationError naming ``careflow_redis`` for a URL it cannot use."""
    parts = urlsplit(url)
    try:
        if parts.scheme in SENTINEL_SCHEMES:
            return _sentinel_client(url, timeouts)
        if parts.scheme in ("redis", "rediss"):
            database = parts.path.strip("/")
        else:  # unix:///run/redis.sock?db=1
            database = parse_qs(parts.query).get("db", [""])[-1]
        if database and not database.isdigit():  # redis-py would take database 0 instead
            raise ValueError(f"the database {database!r} is not a number")
        return redis.Redis.from_url(url, **timeouts)
    except ValueError as exc:
        raise ConfigurationError(
            f"careflow_redis: {redact(url)} is not a Redis URL careflow can use ({exc}): "
            "redis://[[user]:password@]host[:port][/database], rediss://… for TLS, unix://path, or "
            "redis+sentinel://[[user]:password@]sentinel[:port][,sentinel[:port]…]/service[/database] "
            "(rediss+sentinel://… for TLS)"
        ) from None


#: The schemes of a Redis its Sentinels name: ``redis+sentinel://[[user]:password@]sentinel[:26379]
#: [,sentinel…]/service[/database][?sentinel_password=…]``, and ``rediss+sentinel://…`` where the
#: Sentinels and the servers speak TLS (certificates checked as ``rediss://`` checks them).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


def _sentinel_client(url: str, timeouts: dict[str, float]) -> redis.Redis:
    """The client of the master the Sentinels of ``url`` name for its service.

    Each new connection asks the Sentinels where the master is, and one to a master that became
    a replica is dropped: after a failover the next call after :data:`RETRY_SECONDS` reaches the
    new master (meanwhile the link is down and the fallbacks work). The URL's user and password
    are the master's; the Sentinels' own, where they ask for one, is ``?sentinel_password=``.
    """
    parts = urlsplit(url)
    hosts, ports = split_servers(parts.netloc.rpartition("@")[2])
    if not all(hosts):
        raise ValueError("a Sentinel's host is empty")
    sentinels = [(host, int(port or SENTINEL_PORT)) for host, port in zip(hosts, ports, strict=True)]
    path = _sentinel_path(parts.path)
    if not path or len(path) > 2:
        raise ValueError("the path must be /service or /service/database, the service the Sentinels monitor")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database {path[1]!r} is not a number")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"sentinel_password", "sentinel_username"})
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} (sentinel_username and sentinel_password are taken)"
        )
    sentinel_auth = {key.removeprefix("sentinel_"): value for key, value in query.items() if value}
    tls = {"ssl": True} if parts.scheme.startswith("rediss") else {}
    # Each Sentinel asked once: careflow tries again itself, every RETRY_SECONDS. redis-py's own
    # retries (with backoff) would hold every attempt 3 s for each Sentinel that is down.
    once = {"retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel(sentinels, sentinel_kwargs={**timeouts, **sentinel_auth, **tls, **once}, **timeouts)
    return sentinel.master_for(
        path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **timeouts,
        **tls,
    )


def _sentinel_path(path: str) -> list[str]:
    """The segments of a Sentinel URL's path, decoded: its service, then its database if named."""
    return [unquote(segment) for segment in path.split("/") if segment]


def unusable_reason(url: str) -> str | None:
    """Why careflow cannot use the Redis at ``url`` now (one call, as a worker's first one makes:
    a Redis Cluster's nodes, or the master its Sentinels name, included), or None where it answers.
    A URL careflow cannot read at all is a ConfigurationError."""
    link = RedisLink(url)
    try:
        link._server_client().ping()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        return _why_unusable(exc, url)
    return None


def _why_unusable(exc: BaseException, url: str) -> str:
    """What to tell of a Redis that cannot be used: the error's type, and what to do where waiting
    will not mend it (its TLS certificate refused, careflow's credentials or an ACL refused)."""
    if isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return (
            f"{type(exc).__name__}: its TLS certificate was refused ({exc.__context__.verify_message}); "
            "trust the CA that signed it with SSL_CERT_FILE or SSL_CERT_DIR"
        )
    if isinstance(exc, redis.exceptions.AuthenticationError):
        if urlsplit(url).password is None:
            return (
                "AuthenticationError: it asks for a password and careflow_redis gives none; set its password"
            )
        return (
            f"AuthenticationError: it refused careflow_redis's user and password ({exc}); "
            "set the connection's login and password"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"NoPermissionError: {exc}; grant careflow_redis's user the commands the README lists, "
            f"on the keys under {key_prefix()!r}"
        )
    if isinstance(exc, MasterNotFoundError):
        parts = urlsplit(url)
        service = next(iter(_sentinel_path(parts.path)), "")
        trusted = (
            " and that their TLS certificate is trusted (SSL_CERT_FILE or SSL_CERT_DIR)"
            if parts.scheme.startswith("rediss")
            else ""
        )
        return (
            f"MasterNotFoundError: no Sentinel named a master for {service!r}; check that the Sentinels "
            f"run{trusted}, that sentinel_password is theirs where they ask for one, and that this is "
            "the name they monitor the master by"
        )
    # What the socket or the server said: "Error 111 connecting to redis.internal:6379. Connection
    # refused.", "DB index is out of range" (a URL's database past the server's count).
    said = first_line(exc)
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def _cluster_client(url: str, timeouts: dict[str, float]) -> redis.RedisCluster:
    """A cluster client that starts from the node at ``url``; a cluster has database 0 only."""
    db = int(parse_url(url).get("db") or 0)
    if db != 0:
        raise ConfigurationError(
            f"careflow_redis: {redact(url)} is a node of a Redis Cluster, which has database 0 only, "
            f"and the connection names database {db}: set it to 0"
        )
    return redis.RedisCluster.from_url(url, **timeouts)


_links: dict[str, RedisLink] = {}
_links_lock = threading.Lock()


def link_for(url: str) -> RedisLink:
    """The process' link to ``url`` (one per URL, so up/down is decided once for everyone)."""
    with _links_lock:
        link = _links.get(url)
        if link is None:
            link = _links[url] = RedisLink(url)
        return link


def forget_links() -> None:
    """Drop every link (tests, and a process that changed its configuration)."""
    with _links_lock:
        _links.clear()
