"""Namespaced caches in Redis (shared by every worker) with an in-process LRU + TTL fallback.

A cache never decides correctness: every value can be recomputed from its source (a workflow
snapshot, a template, the ledger), and a miss, an expired entry or a lost Redis only cost time.
Idempotency in particular is decided by the ledger; ``sent_keys`` only spares it a query for keys
sent moments ago.

Values are ``str`` or ``bytes`` (callers serialize) and come back with the type they were stored
with. Keys in Redis are ``<prefix>:cache:{<name>}:v:<key>`` and hit/miss counters live in
``<prefix>:cache:{<name>}:stats`` (``HINCRBY``, shared by every worker). Without Redis configured
each process keeps its own LRU (``backend == "local"``); when Redis is unreachable the same LRU is
used (``"local-fallback"``) until it is back. Invalidations made during an outage do not reach
Redis: an entry invalidated then may be served again until its TTL ends.

Compiled workflows are not cached here: :mod:`careflow.snapshots` keeps them in each process
(a compile costs less than a Redis round trip).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from careflow.resilience.redis_link import DOWN, RedisLink, key_prefix

Value = str | bytes

VALIDATION = "validation"
VALIDATION_TTL = 10 * 60.0
TEMPLATES = "templates"
TEMPLATES_TTL = 3600.0
SENT_KEYS = "sent_keys"
SENT_KEYS_TTL = 5 * 60.0  # recently sent idempotency keys, in front of the ledger

STANDARD_CACHES: dict[str, float] = {
    VALIDATION: VALIDATION_TTL,
    TEMPLATES: TEMPLATES_TTL,
    SENT_KEYS: SENT_KEYS_TTL,
}

MAX_LOCAL_ENTRIES = 10_000
_SCAN_BATCH = 500

_STR, _BYTES = b"s", b"b"

log = logging.getLogger(__name__)


def _encode(value: Value) -> bytes:
    if isinstance(value, bytes):
        return _BYTES + value
    if isinstance(value, str):
        return _STR + value.encode("utf-8")
    raise TypeError(f"cache values are str or bytes (serialize first), not {type(value).__name__}")


def _decode(raw: bytes | None) -> Value | None:
    if raw is None:
        return None
    if raw[:1] == _STR:
        return raw[1:].decode("utf-8")
    return raw[1:]


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class LocalStore:
    """A thread-safe LRU with per-entry expiry (monotonic clock)."""

    def __init__(
        self, max_entries: int = MAX_LOCAL_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, Value]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Value | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry[1]

    def set(self, key: str, value: Value, ttl: float) -> None:
        with self._lock:
            self._data[key] = (self._clock() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith(prefix)]
            for k in doomed:
                del self._data[k]
            return len(doomed)

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for expires, _ in self._data.values() if expires > now)


class Cache:
    """One namespace of cached values; see the module docstring."""

    def __init__(
        self,
        name: str,
        ttl_seconds: float,
        *,
        link: RedisLink | None = None,
        prefix: str | None = None,
        max_local_entries: int = MAX_LOCAL_ENTRIES,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"cache {name!r}: ttl_seconds must be > 0, got {ttl_seconds}")
        self.name = name
        self.ttl_seconds = float(ttl_seconds)
        self.link = link
        self.prefix = prefix or key_prefix()
        self.local = LocalStore(max_local_entries)
        self._hits = 0
        self._misses = 0
        self._count_lock = threading.Lock()
        self._get_script: Any = link.register_script(_lua("cache_get.lua")) if link is not None else None
        self._set_script: Any = link.register_script(_lua("cache_set.lua")) if link is not None else None
        self._base = f"{self.prefix}:cache:{{{name}}}"
        self._registered = False

    def __repr__(self) -> str:
        return f"Cache({self.name!r}, ttl_seconds={self.ttl_seconds}, backend={self.backend!r})"

    @property
    def backend(self) -> str:
        """ "redis", "local" (no Redis configured) or "local-fallback" (Redis unreachable)."""
        if self.link is None:
            return "local"
        return "local-fallback" if self.link.down else "redis"

    def _key(self, key: str) -> str:
        return f"{self._base}:v:{key}"

    def _stats_key(self) -> str:
        return f"{self._base}:stats"

    def _ttl(self, ttl: float | None) -> float:
        ttl = self.ttl_seconds if ttl is None else float(ttl)
        if ttl <= 0:
            raise ValueError(f"cache {self.name!r}: ttl must be > 0, got {ttl}")
        return ttl

    def _count(self, hits: int, misses: int) -> None:
        with self._count_lock:
            self._hits += hits
            self._misses += misses

    def _redis(self, fn: Callable[[Any], Any]) -> Any:
        if self.link is None:
            return DOWN
        if not self._registered:
            result = self.link.run(lambda c: c.sadd(f"{self.prefix}:caches", self.name))
            if result is DOWN:
                return DOWN
            self._registered = True
        return self.link.run(fn)

    def warm(self) -> None:
        """Reach Redis once ahead of the first read: the connection opened, the cache registered and
        its scripts loaded there, so that the first read is one round trip instead of four.

        Nothing is read or written. What goes wrong here goes wrong again at the first read, which
        deals with it.
        """
        scripts = [script for script in (self._get_script, self._set_script) if script is not None]
        if scripts:
            self._redis(lambda client: [client.script_load(script.script) for script in scripts])

    # reads --------------------------------------------------------------------------------------

    def get(self, key: str) -> Value | None:
        """The value stored under ``key``, or None (missing or expired)."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Value]:
        """The values found among ``keys`` (missing keys are left out); one round trip."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        script = self._get_script
        raw = self._redis(
            lambda client: script(keys=[self._stats_key(), *map(self._key, keys)], args=[], client=client)
        )
        if raw is DOWN:
            found = {k: v for k in keys if (v := self.local.get(k)) is not None}
            self._count(len(found), len(keys) - len(found))
            return found
        return {k: v for k, item in zip(keys, raw, strict=True) if (v := _decode(item)) is not None}

    # writes -------------------------------------------------------------------------------------

    def set(self, key: str, value: Value, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (default: the cache's TTL)."""
        self.set_many({key: value}, ttl)

    def set_many(self, mapping: Mapping[str, Value], ttl: float | None = None) -> None:
        """Store several values with the same TTL; one round trip, one command (a script)."""
        seconds = self._ttl(ttl)
        encoded = {k: _encode(v) for k, v in mapping.items()}
        if not encoded:
            return
        ms = max(1, int(seconds * 1000))
        script = self._set_script

        def write(client):
            script(keys=[self._key(k) for k in encoded], args=[*encoded.values(), ms], client=client)
            return True

        if self._redis(write) is DOWN:
            for k, v in mapping.items():
                self.local.set(k, v, seconds)

    def invalidate(self, key: str) -> None:
        """Forget ``key``."""
        self.local.delete(key)
        self._redis(lambda client: client.unlink(self._key(key)))

    def invalidate_prefix(self, prefix: str) -> int:
        """Forget every key that starts with ``prefix``; returns how many entries were removed."""
        removed = self.local.delete_prefix(prefix)
        pattern = self._key(_glob_escape(prefix)) + "*"

        def scan_and_unlink(client):
            count = 0
            batch: list = []
            for k in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(k)
                if len(batch) >= _SCAN_BATCH:
                    count += client.unlink(*batch)
                    batch = []
            if batch:
                count += client.unlink(*batch)
            return count

        result = self._redis(scan_and_unlink)
        return removed + (0 if result is DOWN else int(result))

    # numbers ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``{"name", "ttl_seconds", "hits", "misses", "backend"}`` plus ``"size"`` for a local store.

        On Redis the counts are every worker's (shared counters); otherwise this process's.
        """
        base: dict[str, Any] = {"name": self.name, "ttl_seconds": self.ttl_seconds}
        raw = self._redis(lambda client: client.hmget(self._stats_key(), "hits", "misses"))
        if raw is DOWN:
            with self._count_lock:
                hits, misses = self._hits, self._misses
            return {**base, "hits": hits, "misses": misses, "backend": self.backend, "size": len(self.local)}
        hits, misses = (int(x or 0) for x in raw)
        return {**base, "hits": hits, "misses": misses, "backend": "redis"}


def _lua(filename: str) -> str:
    return resources.files("careflow.resilience").joinpath(f"lua/{filename}").read_text(encoding="utf-8")


# registry ---------------------------------------------------------------------------------------

_caches: dict[str, Cache] = {}
_caches_lock = threading.Lock()


def _default_link() -> RedisLink | None:
    from careflow.settings import REDIS_CONN_ID, redis_url

    # A process that has not loaded Airflow (``careflow workflows validate``) finds Redis in the
    # environment only: asking Airflow for the connection would cost seconds of imports.
    in_env = "CAREFLOW_REDIS_URL" in os.environ or f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}" in os.environ
    if not in_env and "airflow" not in sys.modules:
        return None
    url = redis_url()
    if not url:
        return None
    from careflow.resilience.redis_link import link_for

    return link_for(url)


def get_cache(name: str, ttl_seconds: float) -> Cache:
    """The process' cache ``name``; asking for it again with another TTL is an error."""
    with _caches_lock:
        cache = _caches.get(name)
        if cache is None:
            cache = _caches[name] = Cache(name, ttl_seconds, link=_default_link())
        elif cache.ttl_seconds != float(ttl_seconds):
            raise ValueError(
                f"cache {name!r} already exists with ttl_seconds={cache.ttl_seconds}, not {ttl_seconds}: "
                "use one TTL per cache name (pass ttl= to set() for a different one per entry)"
            )
        return cache


def cache_stats() -> list[dict[str, Any]]:
    """Stats of the standard caches and of every cache this process created, by name."""
    for name, ttl in STANDARD_CACHES.items():
        get_cache(name, ttl)
    with _caches_lock:
        caches = sorted(_caches.values(), key=lambda c: c.name)
    return [cache.stats() for cache in caches]


def workflow_key(workflow_id: str, digest: str) -> str:
    """Key of an entry about one version of a workflow in ``validation``."""
    return f"{workflow_id}:{digest}"


def invalidate_workflow(workflow_id: str, digest: str | None = None) -> int:
    """Drop what ``validation`` holds about a workflow (called on publish).

    Removes every :func:`workflow_key` entry of ``workflow_id`` and an entry keyed by the bare
    ``digest``; returns how many entries went. Never raises for an unreachable Redis.
    """
    cache = get_cache(VALIDATION, VALIDATION_TTL)
    removed = cache.invalidate_prefix(workflow_key(workflow_id, ""))
    if digest:
        cache.invalidate(digest)
    return removed


def forget_caches() -> None:
    """Drop every cache object of the process (tests; a process whose settings changed)."""
    with _caches_lock:
        _caches.clear()


def read_sound_entry(
    cache_factory: Callable[[], Any],
    key: str,
    decode: Callable[[str, Any], Any],
    *,
    label: str,
) -> Any:
    """A decoded cache entry, or None on a miss, an unusable cache or an unsound entry.

    ``decode(key, text)`` returns None for an entry it cannot trust; that entry is dropped so the
    next reader recomputes it. A cache problem costs the work it would have saved, never an answer.
    """
    try:
        cache = cache_factory()
        text = None if cache is None else cache.get(key)
    except Exception as exc:
        log.debug("%s cache unavailable: %s", label, type(exc).__name__)
        return None
    if text is None:
        return None
    entry = decode(key, text)
    if entry is None:
        log.warning("%s cache: dropped an unsound entry (%s…)", label, key[:12])
        cache.invalidate(key)
    return entry
