"""The Lua breaker and the Python state machine agree on the same random event sequences."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careflow.resilience.state_machine import Acquire, BreakerConfig, Record, Reset, State, step

pytestmark = pytest.mark.redis

# Small numbers so that random sequences reach every state; times are multiples of 1/8 s so both
# sides compute with exact binary fractions.
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

advance = st.tuples(st.just("advance"), st.integers(0, 24).map(lambda n: n / 8))
acquire = st.just(("acquire",))
record = st.tuples(
    st.just("record"),
    st.sampled_from(["current", "previous", "stale"]),
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 2),
    st.one_of(st.none(), st.integers(0, 16).map(lambda n: n / 8)),
)
reset = st.just(("reset",))
operations = st.lists(
    st.one_of(advance, acquire, acquire, record, record, record, reset), min_size=1, max_size=60
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lua(redis_backend):
    clock = Clock()
    return redis_backend(clock=clock), clock


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_lua_and_python_agree(lua, ops):
    backend, clock = lua
    name = f"parity:{uuid.uuid4().hex}"  # a fresh breaker per example
    state = State()
    for op in ops:
        if op[0] == "advance":
            clock.now += op[1]
            continue
        if op[0] == "acquire":
            event = Acquire()
        elif op[0] == "reset":
            event = Reset("ops")
        else:
            _, which, probe, successes, failures, pause = op
            generation = {"current": state.generation, "previous": state.generation - 1, "stale": -1}[which]
            event = Record(
                generation, probe=probe, successes=successes, failures=failures, pause_seconds=pause
            )
        expected = step(state, event, CONFIG, clock.now)
        applied = backend.apply(name, CONFIG, event)
        assert applied.backend == "redis"
        got = applied.result
        assert got.state == expected.state, (event, clock.now)
        assert got.decision == expected.decision, (event, clock.now)
        assert got.transitions == expected.transitions, (event, clock.now)
        assert got.ignored == expected.ignored
        state = expected.state
    stored, now, _ = backend.peek(name, CONFIG)
    assert stored == state and now == clock.now
