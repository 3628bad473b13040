"""Fixtures for the resilience tests: a unique Redis key prefix per test (cleaned up), backends."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from careflow.resilience import events
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.resilience.redis_link import RedisLink

REDIS_URL = os.environ.get("CAREFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS_URL = "redis://127.0.0.1:6390/0"  # nothing listens there


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"the resilience tests need Redis at {REDIS_URL}")
    return client


@pytest.fixture
def prefix(redis_client: redis.Redis):
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    value = f"cftest:{uuid.uuid4().hex[:12]}"
    yield value
    keys = list(redis_client.scan_iter(match=f"{value}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(autouse=True)
def breaker_file(tmp_path, monkeypatch):
    """The machine's breaker file of this test (``CAREFLOW_BREAKER_DB``): the embedded backend and
    the Redis backend's fallback while Redis is unreachable."""
    path = tmp_path / "breakers.db"
    monkeypatch.setenv("CAREFLOW_BREAKER_DB", str(path))
    return path


@pytest.fixture
def redis_backend(prefix: str):
    """Factory of RedisBackend objects on the test prefix, each with its own link (like another worker
    of this machine: they share the test's breaker file while Redis is unreachable)."""

    def make(clock=None, url: str = REDIS_URL, retry_seconds: float = 3.0) -> RedisBackend:
        return RedisBackend(RedisLink(url, retry_seconds=retry_seconds), prefix=prefix, clock=clock)

    return make


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[Callable[[list[str], list[str]], str]]:
    """``acl_user(keys, commands)``: an ACL user of the test Redis with the password ``pw``; its URL."""
    made: list[str] = []

    def make(keys: list[str], commands: list[str]) -> str:
        user = f"cftest-{uuid.uuid4().hex[:8]}"
        redis_client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=keys, commands=commands)
        made.append(user)
        return REDIS_URL.replace("redis://", f"redis://{user}:pw@")

    yield make
    for user in made:
        redis_client.acl_deluser(user)


@pytest.fixture
def embedded_backend(breaker_file):
    """Factory of EmbeddedBackend objects on one SQLite file of the test."""
    path = breaker_file

    def make(clock=None) -> EmbeddedBackend:
        return EmbeddedBackend(path, **({"clock": clock} if clock else {}))

    return make


@pytest.fixture
def emitted():
    """Events emitted during the test, as (name, fields) pairs."""
    seen: list[tuple[str, dict]] = []
    unsubscribe = events.subscribe(lambda name, **fields: seen.append((name, fields)))
    yield seen
    unsubscribe()


class FakeClock:
    """A controllable clock (unix seconds)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _acquire_in_child(backend: RedisBackend, answers) -> None:  # type: ignore[no-untyped-def]
    from careflow.exceptions import BreakerOpen
    from careflow.resilience import BreakerConfig, CircuitBreaker

    try:
        CircuitBreaker("fork:sms", BreakerConfig(), backend=backend).acquire()
        answers.put("granted")
    except BreakerOpen:
        answers.put("open")
    except Exception as exc:  # noqa: BLE001 - what went wrong is the test's answer
        answers.put(repr(exc))


def breaker_seen_from_a_fork(backend: RedisBackend) -> str:
    """Open the breaker ``fork:sms`` through ``backend``, then ask a forked child (as an action
    task forks its send process, after its breaker has reached Redis) what it finds there:
    ``"open"``, ``"granted"`` or the child's error."""
    import multiprocessing

    from careflow.resilience import BreakerConfig, CircuitBreaker

    breaker = CircuitBreaker("fork:sms", BreakerConfig(), backend=backend)
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(breaker.acquire(), "transient")
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()
    child = ctx.Process(target=_acquire_in_child, args=(backend, answers))
    child.start()
    child.join(30)
    return str(answers.get(timeout=5))


def opened_by_one_worker_for_the_other(name: str, backends: list[RedisBackend]) -> Any:
    """Open the breaker ``name`` through the first of two workers' backends (its consecutive
    failures); the second worker's breaker, which refuses sends from then on."""
    from careflow.exceptions import BreakerOpen
    from careflow.resilience import BreakerConfig, CircuitBreaker

    sender, observer = (CircuitBreaker(name, BreakerConfig(), backend=b) for b in backends)
    for _ in range(sender.config.consecutive_failures):
        sender.record(sender.acquire(), "transient")
    with pytest.raises(BreakerOpen):
        observer.acquire()
    return observer
