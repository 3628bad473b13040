"""The CircuitBreaker API, on Redis and on the embedded SQLite file, against a simple model of the rules."""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from careflow.exceptions import BreakerOpen
from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.resilience.redis_link import RedisLink

from .conftest import REDIS_URL

pytestmark = pytest.mark.redis

CONFIG = BreakerConfig(
    window_seconds=4.0,
    min_calls=4,
    failure_rate_threshold=0.5,
    consecutive_failures=3,
    open_seconds=0.5,
    max_open_seconds=2.0,
    half_open_probes=2,
    probe_timeout_seconds=1.5,
)
OUTCOMES = ["accepted", "duplicate", "transient", "unknown", "permanent", "configuration", "throttled"]
# Failures and successes drawn more often than the rest, so that runs open and close the breaker.
OUTCOME = st.sampled_from(["transient"] * 3 + ["accepted"] * 4 + OUTCOMES)


class Model:
    """The rules as a list of calls and a few counters, written without the state machine's ring."""

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.state = "closed"
        self.generation = 0
        self.streak = 0
        self.open_until = 0.0
        self.probes_out = 0
        self.probe_ok = 0
        self.last_probe = 0.0
        self.calls: list[tuple[float, bool]] = []
        self.in_a_row = 0
        self.paused_until = 0.0

    def window(self, now: float) -> list[bool]:
        width = self.cfg.window_seconds / 10
        current = math.floor(now / width)
        return [failed for t, failed in self.calls if current - math.floor(t / width) < 10]

    def open(self, now: float) -> None:
        self.streak += 1
        self.generation += 1
        self.state = "open"
        self.open_until = now + min(self.cfg.open_seconds * 2 ** (self.streak - 1), self.cfg.max_open_seconds)
        self.calls, self.in_a_row = [], 0

    def acquire(self, now: float) -> tuple[bool, bool, float | None]:
        """(granted, probe, retry_at)"""
        if now < self.paused_until:
            return False, False, self.paused_until
        if self.state == "closed":
            return True, False, None
        if self.state == "open":
            if now < self.open_until:
                return False, False, self.open_until
            self.state, self.probes_out, self.probe_ok = "half_open", 0, 0
        if self.probes_out < self.cfg.half_open_probes:
            self.probes_out += 1
            self.last_probe = now
            return True, True, None
        if now >= self.last_probe + self.cfg.probe_timeout_seconds:
            self.open(now)
            return False, False, self.open_until
        return False, False, now + min(1.0, self.cfg.open_seconds)

    def record(
        self, generation: int, probe: bool, outcome: str, retry_after: float | None, now: float
    ) -> None:
        success = outcome in ("accepted", "duplicate")
        failure = outcome in ("transient", "unknown")
        if outcome == "throttled":
            self.paused_until = max(self.paused_until, now + (1.0 if retry_after is None else retry_after))
        if not (success or failure or probe or outcome == "throttled"):
            return
        if generation != self.generation:
            return
        if self.state == "closed":
            if not (success or failure):
                return
            self.calls.append((now, failure))
            self.in_a_row = self.in_a_row + 1 if failure else 0
            window = self.window(now)
            if failure and (
                self.in_a_row >= self.cfg.consecutive_failures
                or (
                    len(window) >= self.cfg.min_calls
                    and sum(window) / len(window) >= self.cfg.failure_rate_threshold
                )
            ):
                self.open(now)
        elif self.state == "half_open" and probe:
            if failure:
                self.open(now)
            elif success:
                self.probe_ok += 1
                if self.probe_ok >= self.cfg.half_open_probes:
                    self.state, self.streak, self.calls, self.in_a_row = "closed", 0, [], 0
            else:
                self.probes_out = max(0, self.probes_out - 1)

    def reset(self) -> None:
        self.state, self.streak, self.calls, self.in_a_row, self.paused_until = "closed", 0, [], 0, 0.0
        self.generation += 1


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


class BreakerMachine(RuleBasedStateMachine):
    backend_kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.model = Model(CONFIG)
        self.prefix = f"cftest:{uuid.uuid4().hex[:12]}"
        self.tmp = None
        if self.backend_kind == "redis":
            backend = RedisBackend(RedisLink(REDIS_URL), prefix=self.prefix, clock=self.clock)
        else:
            self.tmp = tempfile.mkdtemp(prefix="careflow-breaker-")
            backend = EmbeddedBackend(Path(self.tmp) / "b.db", clock=self.clock)
        # No cached verdicts, no buffering: every call reaches the backend, so the model is exact.
        self.breaker = CircuitBreaker("model:sms", CONFIG, backend=backend, verdict_seconds=0, flush_every=1)
        self.permits: list = []

    def teardown(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{self.prefix}:*"))
            if keys:
                client.delete(*keys)

    @rule(eighths=st.integers(1, 12))
    def advance(self, eighths):
        self.clock.now += eighths / 8

    @precondition(lambda self: self.model.state == "open")
    @rule()
    def wait_until_probing(self):
        self.clock.now = max(self.clock.now, self.model.open_until)

    @rule()
    def acquire(self):
        granted, probe, retry_at = self.model.acquire(self.clock.now)
        if granted:
            permit = self.breaker.acquire()
            assert (permit.generation, permit.probe) == (self.model.generation, probe)
            self.permits.append(permit)
        else:
            with pytest.raises(BreakerOpen) as info:
                self.breaker.acquire()
            assert info.value.retry_at == retry_at

    @precondition(lambda self: self.permits)
    @rule(index=st.integers(0, 50), outcome=OUTCOME, retry=st.sampled_from([None, 0.25, 2.0]))
    def record(self, index, outcome, retry):
        permit = self.permits.pop(index % len(self.permits))
        self.model.record(permit.generation, permit.probe, outcome, retry, self.clock.now)
        self.breaker.record(permit, outcome, retry_after=retry)

    @rule(outcome=OUTCOME)
    def send(self, outcome):
        """acquire, then record at once: what most sends do."""
        self.acquire()
        if self.permits:
            self.record(len(self.permits) - 1, outcome, None)

    @precondition(lambda self: self.model.streak >= 2)  # an operator steps in during a long outage
    @rule()
    def reset(self):
        self.model.reset()
        self.breaker.reset(by="ops")
        assert self.breaker.transitions(1)[0]["by"] == "ops"

    @invariant()
    def snapshot_matches_model(self):
        snap = self.breaker.snapshot()
        now = self.clock.now
        assert snap.state == self.model.state
        assert snap.generation == self.model.generation
        assert snap.paused_until == (self.model.paused_until if self.model.paused_until > now else None)
        assert snap.next_probe_at == (self.model.open_until if self.model.state == "open" else None)
        window = self.model.window(now) if self.model.state == "closed" else []
        assert snap.calls == len(window)
        assert snap.backend == self.backend_kind


class EmbeddedBreakerMachine(BreakerMachine):
    backend_kind = "embedded"


STATEFUL = settings(max_examples=30, stateful_step_count=50, deadline=None)
TestBreakerOnRedis = BreakerMachine.TestCase
TestBreakerOnRedis.settings = STATEFUL
TestBreakerEmbedded = EmbeddedBreakerMachine.TestCase
TestBreakerEmbedded.settings = STATEFUL
