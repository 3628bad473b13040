"""Redis unreachable: the breaker keeps working on the machine's breaker file (per process if that
file is unusable too), says so once, and returns to Redis."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import subprocess
import time

import pytest
import redis

from careflow.exceptions import BreakerOpen
from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.resilience.cache import Cache
from careflow.resilience.redis_link import RedisLink
from careflow.resilience.state_machine import State
from support import free_port

from .conftest import DEAD_REDIS_URL, REDIS_URL

pytestmark = pytest.mark.redis


def test_unreachable_redis_falls_back_to_the_breaker_file_and_says_so_once(redis_backend, emitted, caplog):
    backend = redis_backend(url=DEAD_REDIS_URL)
    breaker = CircuitBreaker("down:sms", BreakerConfig(), backend=backend)
    caplog.set_level(logging.WARNING, logger="careflow.resilience")

    permit = breaker.acquire()
    assert permit.backend == "local-fallback"
    for _ in range(5):  # the fallback has the same rules: five failures in a row open it
        breaker.record(breaker.acquire(), "transient")
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    snap = breaker.snapshot()
    assert (snap.state, snap.backend) == ("open", "local-fallback")

    assert breaker.fallback_events == 1
    assert [name for name, _ in emitted if name.startswith("breaker_redis")] == ["breaker_redis_fallback"]
    assert emitted[0][1]["url"] == DEAD_REDIS_URL
    warnings = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1
    # What the socket said, not the error's class alone: where to look is in it.
    port = DEAD_REDIS_URL.rsplit(":", 1)[1].split("/")[0]
    assert emitted[0][1]["error"].startswith(f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}.")


def test_what_the_server_said_names_why_it_cannot_be_used():
    """A database past the server's count: the server's own words, where "ResponseError" was all."""
    from careflow.resilience.redis_link import unusable_reason

    assert unusable_reason(REDIS_URL.rsplit("/", 1)[0] + "/999") == "ResponseError: DB index is out of range"
    assert unusable_reason(REDIS_URL) is None


def _open_in_another_process(name: str) -> None:
    """A worker process of this machine: its own link to the unreachable Redis, its own backend."""
    breaker = CircuitBreaker(name, BreakerConfig(), backend=RedisBackend(RedisLink(DEAD_REDIS_URL)))
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(breaker.acquire(), "transient")
    if breaker.snapshot().state != "open":
        raise SystemExit(1)


def test_processes_of_one_machine_share_the_fallback_breaker_through_the_file(breaker_file):
    ours = CircuitBreaker(
        "machine:sms", BreakerConfig(), backend=RedisBackend(RedisLink(DEAD_REDIS_URL)), verdict_seconds=0
    )
    assert ours.acquire().backend == "local-fallback"

    child = multiprocessing.get_context("fork").Process(
        target=_open_in_another_process, args=("machine:sms",)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0

    # the other process's failures opened the breaker this one sends through
    with pytest.raises(BreakerOpen):
        ours.acquire()
    snap = ours.snapshot()
    assert (snap.state, snap.backend) == ("open", "local-fallback")
    assert EmbeddedBackend(breaker_file).names() == ["machine:sms"]


def test_fallback_breakers_of_two_workers_share_the_probe_slots_on_the_test_clock(redis_backend, clock):
    config = BreakerConfig(open_seconds=5, max_open_seconds=10, half_open_probes=1)
    a, b = (
        CircuitBreaker(
            "pair:sms", config, backend=redis_backend(clock=clock, url=DEAD_REDIS_URL), verdict_seconds=0
        )
        for _ in range(2)
    )
    for _ in range(config.consecutive_failures):
        a.record(a.acquire(), "transient")
    with pytest.raises(BreakerOpen) as refused:
        b.acquire()
    assert refused.value.retry_at == clock.now + config.open_seconds  # the test's clock reached the file

    clock.advance(config.open_seconds)
    probe = b.acquire()
    assert probe.probe and probe.backend == "local-fallback"
    with pytest.raises(BreakerOpen):  # the one probe slot is taken, whichever worker asks
        a.acquire()
    b.record(probe, "accepted")
    assert a.snapshot().state == "closed"


def test_with_an_unusable_breaker_file_each_process_keeps_its_own_fallback(tmp_path, monkeypatch, caplog):
    not_a_directory = tmp_path / "not-a-directory"
    not_a_directory.write_text("")
    monkeypatch.setenv("CAREFLOW_BREAKER_DB", str(not_a_directory / "breakers.db"))
    caplog.set_level(logging.WARNING, logger="careflow.resilience")
    a, b = (
        CircuitBreaker(
            "nofile:sms", BreakerConfig(), backend=RedisBackend(RedisLink(DEAD_REDIS_URL)), verdict_seconds=0
        )
        for _ in range(2)
    )

    for _ in range(a.config.consecutive_failures):
        a.record(a.acquire(), "transient")
    with pytest.raises(BreakerOpen):
        a.acquire()
    assert a.snapshot().backend == "local-fallback"
    # the other worker's breaker never saw those failures: it sends on
    assert b.acquire().backend == "local-fallback" and b.snapshot().state == "closed"
    unusable = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
    assert unusable and str(not_a_directory / "breakers.db") in unusable[0]


def test_cache_without_redis_works_in_process():
    cache = Cache("templates", 60, link=RedisLink(DEAD_REDIS_URL), prefix="cftest-dead")
    assert cache.get("t1") is None
    cache.set("t1", "compiled")
    assert cache.get("t1") == "compiled"
    stats = cache.stats()
    assert (stats["backend"], stats["hits"], stats["misses"], stats["size"]) == ("local-fallback", 1, 1, 1)


def _start_redis(port: int, workdir) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"private redis-server on port {port} did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_the_breaker_file_is_opened_only_once_redis_cannot_answer(tmp_path, breaker_file):
    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        link = RedisLink(f"redis://127.0.0.1:{port}/0", retry_seconds=60)
        breaker = CircuitBreaker("lazy:sms", backend=RedisBackend(link, prefix="cftest"), verdict_seconds=0)
        for _ in range(breaker.config.consecutive_failures):
            breaker.record(breaker.acquire(), "transient")
        breaker.reset(by="ops.lee")
        assert breaker.snapshot().backend == "redis" and breaker.transitions()
        assert breaker.backend.names() == ["lazy:sms"]
        assert list(tmp_path.glob(f"{breaker_file.name}*")) == []  # Redis answered every call

        _stop(proc)
        breaker.record(breaker.acquire(), "transient")
        assert breaker.snapshot().backend == "local-fallback"
        assert EmbeddedBackend(breaker_file).names() == ["lazy:sms"]
    finally:
        _stop(proc)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_restart_fallback_then_recovery(tmp_path, emitted):
    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        link = RedisLink(f"redis://127.0.0.1:{port}/0", retry_seconds=0.2)
        from careflow.resilience.backends.redis_backend import RedisBackend

        breaker = CircuitBreaker(
            "restart:sms", backend=RedisBackend(link, prefix="cftest"), verdict_seconds=0
        )
        cache = Cache("validation", 60, link=link, prefix="cftest")
        assert breaker.acquire().backend == "redis"
        cache.set("wf-1", "ok")

        _stop(proc)
        during = breaker.acquire()
        assert during.backend == "local-fallback"
        assert cache.get("wf-1") is None and cache.stats()["backend"] == "local-fallback"
        assert breaker.snapshot().backend == "local-fallback"

        proc = _start_redis(port, tmp_path)
        time.sleep(0.25)  # the link retries Redis at most every retry_seconds
        after = breaker.acquire()
        assert after.backend == "redis"
        # a permit from the outage belongs to the fallback breaker: Redis ignores its result
        breaker.record(during, "transient")
        assert breaker.snapshot().consecutive_failures == 0
        breaker.record(after, "transient")
        assert breaker.snapshot().consecutive_failures == 1
        assert cache.stats()["backend"] == "redis"

        names = [name for name, _ in emitted if name.startswith("breaker_redis")]
        assert names == ["breaker_redis_fallback", "breaker_redis_recovered"]
        assert link.fallback_events == 1 and link.recoveries == 1
    finally:
        _stop(proc)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_probe_granted_by_the_breaker_file_is_answered_there_after_redis_came_back(
    tmp_path, breaker_file, clock, emitted
):
    config = BreakerConfig(
        consecutive_failures=2, open_seconds=1, probe_timeout_seconds=2, half_open_probes=1
    )
    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        link = RedisLink(f"redis://127.0.0.1:{port}/0", retry_seconds=0.05)
        backend = RedisBackend(link, prefix="cftest", clock=clock)
        breaker = CircuitBreaker("blip:sms", config, backend=backend, verdict_seconds=0)
        _stop(proc)  # a network blip: Redis and the provider fail together
        for _ in range(config.consecutive_failures):
            breaker.record(breaker.acquire(), "transient")
        clock.advance(config.open_seconds)
        probe = breaker.acquire()
        assert probe.probe and probe.backend == "local-fallback"

        proc = _start_redis(port, tmp_path)
        time.sleep(0.1)  # the link retries Redis at most every retry_seconds
        breaker.record(probe, "accepted")  # the provider is back too
        assert EmbeddedBackend(breaker_file).peek("blip:sms", config)[0].state == "closed"
        assert breaker.acquire().backend == "redis"

        # much later Redis alone is lost: the healthy provider is not refused, no breaker opens
        clock.advance(10 * config.probe_timeout_seconds)
        _stop(proc)
        assert breaker.acquire().backend == "local-fallback"
        opened = [
            f["reason"] for name, f in emitted if name == "breaker_transition" and f["to_state"] == "open"
        ]
        assert opened == ["consecutive_failures"]
    finally:
        _stop(proc)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_result_counts_only_on_the_backend_that_granted_its_permit(tmp_path, breaker_file):
    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        link = RedisLink(f"redis://127.0.0.1:{port}/0", retry_seconds=0.05)
        breaker = CircuitBreaker("cross:sms", backend=RedisBackend(link, prefix="cftest"), verdict_seconds=0)

        def breaker_file_state() -> State:
            return EmbeddedBackend(breaker_file).peek("cross:sms", breaker.config)[0]

        from_redis = breaker.acquire()
        assert from_redis.backend == "redis"
        _stop(proc)
        breaker.record(from_redis, "transient")  # Redis is gone: the result is dropped
        assert link.down and breaker_file_state().consecutive == 0

        from_file = breaker.acquire()
        assert from_file.backend == "local-fallback"
        proc = _start_redis(port, tmp_path)
        time.sleep(0.1)
        breaker.record(from_file, "transient")  # Redis is back: the result still goes to the file
        assert breaker_file_state().consecutive == 1
        snap = breaker.snapshot()
        assert (snap.backend, snap.consecutive_failures) == ("redis", 0)

        # a 429 answered to a Redis permit while Redis is gone still pauses the sends of the file
        throttled = breaker.acquire()
        _stop(proc)
        breaker.record(throttled, "throttled", retry_after=60)
        with pytest.raises(BreakerOpen):
            breaker.acquire()
        assert breaker_file_state().consecutive == 1
    finally:
        _stop(proc)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_redis_that_refuses_writes_is_down_for_the_breaker(tmp_path, emitted):
    from careflow.resilience.backends.redis_backend import RedisBackend

    port = free_port()
    proc = _start_redis(port, tmp_path)
    try:
        client = redis.Redis(port=port)
        link = RedisLink(f"redis://127.0.0.1:{port}/0", retry_seconds=60)
        breaker = CircuitBreaker("oom:sms", backend=RedisBackend(link, prefix="cftest"), verdict_seconds=0)
        assert breaker.acquire().backend == "redis"
        client.set("filler", "x" * 100_000)
        client.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
        # the first result is a Redis permit's, refused by Redis: dropped; the file's permits count
        # there and open the breaker
        for _ in range(1 + breaker.config.consecutive_failures):
            breaker.record(breaker.acquire(), "transient")
        with pytest.raises(BreakerOpen):
            breaker.acquire()
        assert breaker.snapshot().backend == "local-fallback" and link.down
        assert [name for name, _ in emitted if name.startswith("breaker_redis")] == ["breaker_redis_fallback"]
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."), True),
        (redis.exceptions.ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (redis.exceptions.ResponseError("ERR wrong number of arguments for 'evalsha' command"), False),
    ],
)
def test_which_redis_errors_mean_down(error, down):
    link = RedisLink(REDIS_URL)  # reached: the error is the call's own

    def fails(_client):  # type: ignore[no-untyped-def]
        raise error

    if down:
        assert link.run(fails) is not None and not link.run(fails) and link.down
    else:
        with pytest.raises(redis.exceptions.ResponseError):
            link.run(fails)
        assert not link.down


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (
            "sentinel://:secret@sentinel.internal:26379/mymaster",  # Celery's form, not careflow's
            "must specify one of the following schemes",
        ),
        ("redis://:secret@redis.internal:63x9/0", "Port could not be cast to integer"),
        ("rediss://:secret@redis.internal:6379/careflow", "the database 'careflow' is not a number"),
    ],
)
def test_a_url_careflow_cannot_use_is_refused_by_name_not_taken_for_an_outage(url, why):
    from careflow.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        RedisLink(url)
    message = str(refused.value)
    assert message.startswith("careflow_redis: ") and why in message
    assert "secret" not in message and "***@" in message
