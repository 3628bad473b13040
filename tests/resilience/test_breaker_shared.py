"""One breaker shared by several workers: probe limits, generations, pauses, the send gate, operators."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from careflow.exceptions import BreakerOpen
from careflow.providers.client import Outcome, SendGate, SendResult
from careflow.resilience import BreakerConfig, CircuitBreaker, get_breaker, list_breakers
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.resilience.breaker import forget_breakers
from careflow.resilience.redis_link import RedisLink, forget_links

from .conftest import REDIS_URL

pytestmark = pytest.mark.redis

FAST = BreakerConfig(open_seconds=0.3, max_open_seconds=1.0, half_open_probes=2)
WORKERS = 6


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(breaker.acquire(), "transient")
    assert breaker.snapshot().state == "open"


def _hammer(kind: str, where: str, barrier, grants, stop_at: float) -> None:
    """A worker process: ask for permits as fast as it can, keep (never report) the ones it gets."""
    if kind == "redis":
        prefix = where
        backend = RedisBackend(RedisLink(REDIS_URL), prefix=prefix)
    else:
        backend = EmbeddedBackend(Path(where))
    breaker = CircuitBreaker("shared:sms", FAST, backend=backend)
    barrier.wait()
    got = []
    while time.time() < stop_at:
        try:
            permit = breaker.acquire()
        except BreakerOpen:
            continue
        got.append((permit.generation, permit.probe))
    grants.put(got)


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_half_open_grants_at_most_the_probe_slots_across_processes(kind, prefix, tmp_path):
    where = prefix if kind == "redis" else str(tmp_path / "breakers.db")
    backend = RedisBackend(RedisLink(REDIS_URL), prefix=prefix) if kind == "redis" else EmbeddedBackend(where)
    breaker = CircuitBreaker("shared:sms", FAST, backend=backend)
    open_breaker(breaker)

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    grants = ctx.Queue()
    stop_at = time.time() + FAST.open_seconds + 0.6  # the open ends while they hammer
    workers = [
        ctx.Process(target=_hammer, args=(kind, where, barrier, grants, stop_at)) for _ in range(WORKERS)
    ]
    for w in workers:
        w.start()
    results = [grants.get(timeout=20) for _ in workers]
    for w in workers:
        w.join(timeout=10)
        assert w.exitcode == 0

    granted = [g for worker in results for g in worker]
    assert sorted(granted) == [(1, True), (1, True)]
    snap = breaker.snapshot()
    assert snap.state == "half_open" and snap.generation == 1 and snap.probes_in_flight == 2


def test_results_from_an_older_generation_are_ignored(redis_backend):
    breaker = CircuitBreaker("gen:sms", FAST, backend=redis_backend())
    before_open = breaker.acquire()
    open_breaker(breaker)
    time.sleep(FAST.open_seconds + 0.05)
    probe = breaker.acquire()
    assert probe.probe and probe.generation == before_open.generation + 1

    breaker.record(before_open, "transient")  # would re-open if it counted
    breaker.record(before_open, "accepted")  # would count towards closing if it counted
    snap = breaker.snapshot()
    assert snap.state == "half_open" and snap.generation == probe.generation

    breaker.record(probe, "accepted")
    breaker.record(breaker.acquire(), "accepted")
    assert breaker.snapshot().state == "closed"


def test_open_wait_grows_on_each_reopen_and_is_capped(redis_backend, clock):
    config = BreakerConfig(open_seconds=1.0, max_open_seconds=4.0, half_open_probes=1)
    breaker = CircuitBreaker("backoff:sms", config, backend=redis_backend(clock=clock))
    open_breaker(breaker)
    waits = []
    for _ in range(5):
        snap = breaker.snapshot()
        waits.append(snap.next_probe_at - snap.last_transition_at)
        with pytest.raises(BreakerOpen) as info:
            breaker.acquire()
        assert info.value.retry_at == snap.next_probe_at
        clock.now = snap.next_probe_at
        breaker.record(breaker.acquire(), "transient")  # the probe fails
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert [t["reason"] for t in breaker.transitions(3)] == ["probe_failed", "open_elapsed", "probe_failed"]
    clock.now += 4.0
    breaker.record(breaker.acquire(), "accepted")
    closed = breaker.snapshot()
    assert closed.state == "closed" and closed.open_streak == 0
    open_breaker(breaker)
    again = breaker.snapshot()
    assert again.next_probe_at - again.last_transition_at == 1.0  # closing forgot the streak


def test_a_429_pauses_every_worker_without_counting_as_a_failure(redis_backend):
    worker_a = CircuitBreaker("pause:sms", backend=redis_backend())
    worker_b = CircuitBreaker("pause:sms", backend=redis_backend())
    worker_b.acquire()  # worker b is sending (it holds a cached verdict from now on)
    worker_b_fresh = CircuitBreaker("pause:sms", backend=redis_backend())

    worker_a.record(worker_a.acquire(), "throttled", retry_after=0.4)
    with pytest.raises(BreakerOpen) as info:
        worker_b_fresh.acquire()
    snap = worker_b_fresh.snapshot()
    assert snap.paused_until == pytest.approx(info.value.retry_at)
    assert snap.state == "closed" and snap.calls == 0 and snap.consecutive_failures == 0
    with pytest.raises(BreakerOpen):
        worker_a.acquire()

    time.sleep(0.5)  # b's cached verdict ends too
    worker_b_fresh.acquire()
    worker_b.acquire()
    assert worker_b.snapshot().paused_until is None


def test_failures_are_seen_by_other_workers_at_once_while_successes_are_batched(redis_backend):
    sender = CircuitBreaker("batch:sms", backend=redis_backend())
    observer = CircuitBreaker("batch:sms", backend=redis_backend())
    for _ in range(20):
        sender.record(sender.acquire(), "accepted")
    assert observer.snapshot().calls == 0  # still buffered in the sender
    sender.flush()
    assert observer.snapshot().calls == 20
    for _ in range(5):
        sender.record(sender.acquire(), "transient")
    with pytest.raises(BreakerOpen):
        observer.acquire()


def test_a_busy_closed_breaker_rarely_asks_redis(redis_backend):
    backend = redis_backend()
    calls = []
    real_apply = backend.apply
    backend.apply = lambda *a: calls.append(a[2]) or real_apply(*a)
    breaker = CircuitBreaker("busy:sms", backend=backend)
    started = time.monotonic()
    for _ in range(2000):
        breaker.record(breaker.acquire(), "accepted")
    elapsed = time.monotonic() - started
    breaker.flush()
    flushes = [op for op in calls if type(op).__name__ == "Record"]
    # Every 1,000 successes, or every 0.2 s (a slow machine), and the last flush.
    assert 1 <= len(flushes) <= 2 + int(elapsed / breaker.flush_seconds) + 1
    assert len(calls) - len(flushes) <= 2 + int(elapsed / breaker.verdict_seconds) + 1  # acquires
    assert breaker.snapshot().calls == 2000


def Result(outcome: Outcome, retry_after: float | None = None) -> SendResult:
    return SendResult("idem-1", outcome, retry_after=retry_after)


def test_gate_speaks_the_send_gate_protocol(redis_backend):
    gate: SendGate = CircuitBreaker("gate:sms", FAST, backend=redis_backend(), flush_every=1).gate()
    assert gate.before_send() is None
    gate.after_send(Result(Outcome.NOT_SENT))
    gate.after_send(Result(Outcome.ACCEPTED))
    for _ in range(5):
        assert gate.before_send() is None
        gate.after_send(Result(Outcome.TRANSIENT))
    retry_at = gate.before_send()
    assert isinstance(retry_at, float) and retry_at > time.time() - 5
    assert gate.breaker.snapshot().state == "open"


def test_gate_applies_a_429_pause(redis_backend):
    gate = CircuitBreaker("gate429:sms", backend=redis_backend()).gate()
    assert gate.before_send() is None
    gate.after_send(Result(Outcome.THROTTLED, retry_after=30))
    paused = gate.before_send()
    assert paused == pytest.approx(gate.breaker.snapshot().paused_until)
    assert paused > time.time() + 20


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_operator_reset_is_logged_and_listed(kind, monkeypatch, prefix, tmp_path, emitted):
    monkeypatch.setenv("CAREFLOW_REDIS_URL", REDIS_URL if kind == "redis" else "")
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    monkeypatch.setenv("CAREFLOW_BREAKER_DB", str(tmp_path / "b.db"))
    forget_breakers()
    forget_links()
    try:
        breaker = get_breaker("default:sms")
        assert get_breaker("default:sms") is breaker
        open_breaker(breaker)
        breaker.reset(by="ops.lee")
        latest = breaker.transitions(1)[0]
        assert (latest["from"], latest["to"], latest["reason"], latest["by"]) == (
            "open",
            "closed",
            "reset",
            "ops.lee",
        )
        assert latest["at"] == pytest.approx(time.time(), abs=5)
        snap = breaker.snapshot()
        assert snap.state == "closed" and snap.generation == 2 and snap.backend == kind
        get_breaker("default:email").acquire()  # used once, never failed: listed all the same
        listed = {s.name: s for s in list_breakers()}
        assert listed["default:sms"].generation == 2
        assert listed["default:email"].state == "closed" and listed["default:email"].backend == kind
        assert [e[1]["to_state"] for e in emitted if e[0] == "breaker_transition"] == ["open", "closed"]
    finally:
        forget_breakers()
        forget_links()


def test_a_breaker_used_after_redis_lost_its_data_is_listed_again(
    monkeypatch, prefix, redis_client, redis_backend
):
    worker = CircuitBreaker("lost:sms", backend=redis_backend(), verdict_seconds=0)
    worker.record(worker.acquire(), "accepted")
    # Redis restarted without persistence (or was flushed): this test's keys are gone
    redis_client.delete(*redis_client.scan_iter(match=f"{prefix}:*"))
    open_breaker(worker)

    # the api-server, another process, lists the breaker (so /api/breakers/{name}/reset finds it)
    monkeypatch.setenv("CAREFLOW_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    forget_breakers()
    forget_links()
    try:
        listed = {s.name: s for s in list_breakers()}
        assert listed["lost:sms"].state == "open"
    finally:
        forget_breakers()
        forget_links()


def test_a_worker_whose_clock_is_off_waits_as_long_as_the_shared_clock_says(redis_backend):
    from careflow.airflow.operators.action import resume_at

    ahead = 3600.0  # the shared clock (Redis TIME) an hour ahead of this worker's
    config = BreakerConfig(open_seconds=30.0, max_open_seconds=60.0)
    breaker = CircuitBreaker("skew:sms", config, backend=redis_backend(clock=lambda: time.time() + ahead))
    open_breaker(breaker)
    snap = breaker.snapshot()
    assert snap.next_probe_at > time.time() + ahead  # kept on the shared clock, as every worker reads it
    # what a worker waits for is on its own clock: the breaker's 30 s, not an hour and 30 s
    for until in (snap.sends_resume_at(), breaker.gate().before_send(), resume_at(breaker, None)):
        assert until is not None and time.time() + 25 < until <= time.time() + 30, until
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.retry_at == pytest.approx(snap.next_probe_at)
    assert time.time() + 25 < info.value.local_retry_at <= time.time() + 30
