"""The breaker's rules as a pure function: no Redis, no files, milliseconds."""

from __future__ import annotations

import pytest

from careflow.resilience.state_machine import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Acquire,
    BreakerConfig,
    Record,
    Reset,
    State,
    classify,
    step,
    window_totals,
)

CFG = BreakerConfig()


def run(state: State, events, now: float, config: BreakerConfig = CFG) -> State:
    for event in events:
        state = step(state, event, config, now).state
    return state


def half_open_with_both_probes_out() -> State:
    """Opened at 100 (generation 1), both probe slots taken at 105."""
    return run(run(State(), [Record(0, failures=5)], 100.0), [Acquire(), Acquire()], 105.0)


def test_five_failures_in_a_row_open_the_breaker():
    s = run(State(), [Record(0, failures=1)] * 4, 100.0)
    assert s.state == CLOSED and s.consecutive == 4
    result = step(s, Record(0, failures=1), CFG, 100.0)
    assert result.state.state == OPEN
    assert result.transitions[0].reason == "consecutive_failures"
    assert result.state.generation == 1
    assert result.state.open_until == 105.0


def test_a_success_breaks_the_run_of_failures():
    s = run(
        State(), [Record(0, failures=1)] * 4 + [Record(0, successes=1)] + [Record(0, failures=1)] * 4, 100.0
    )
    assert s.state == CLOSED and s.consecutive == 4


def test_failure_rate_over_min_calls_opens():
    config = BreakerConfig(consecutive_failures=100)
    # 5 successes then 4 failures: 9 calls, below min_calls
    s = run(State(), [Record(0, successes=5), Record(0, failures=4)], 100.0, config)
    assert s.state == CLOSED
    result = step(s, Record(0, failures=1), config, 100.0)  # 10 calls, 50 % failures
    assert result.state.state == OPEN and result.transitions[0].reason == "failure_rate"


def test_failure_rate_below_threshold_stays_closed():
    config = BreakerConfig(consecutive_failures=100)
    s = run(State(), [Record(0, successes=6), Record(0, failures=4)], 100.0, config)
    assert s.state == CLOSED


def test_old_calls_leave_the_window():
    config = BreakerConfig(consecutive_failures=100)
    s = run(State(), [Record(0, failures=9)], 100.0, config)
    assert window_totals(s, config, 100.0) == (9, 9)
    assert window_totals(s, config, 131.0) == (0, 0)
    s = step(s, Record(0, failures=1), config, 131.0).state  # only 1 call in the window now
    assert s.state == CLOSED


def test_open_then_half_open_allows_only_the_probe_slots():
    s = run(State(), [Record(0, failures=5)], 100.0)
    denied = step(s, Acquire(), CFG, 104.9).decision
    assert not denied.granted and denied.retry_at == 105.0
    r1 = step(s, Acquire(), CFG, 105.0)
    assert r1.state.state == HALF_OPEN and r1.decision.granted and r1.decision.probe
    r2 = step(r1.state, Acquire(), CFG, 105.0)
    assert r2.decision.granted and r2.decision.probe
    r3 = step(r2.state, Acquire(), CFG, 105.0)
    assert not r3.decision.granted and r3.decision.retry_at == 106.0


def test_all_probes_succeeding_close_and_a_probe_failure_reopens_longer():
    s = half_open_with_both_probes_out()
    half_way = step(s, Record(1, probe=True, successes=1), CFG, 105.5).state
    assert half_way.state == HALF_OPEN
    closed = step(half_way, Record(1, probe=True, successes=1), CFG, 105.5).state
    assert closed.state == CLOSED and closed.streak == 0
    reopened = step(half_way, Record(1, probe=True, failures=1), CFG, 106.0)
    assert reopened.state.state == OPEN and reopened.transitions[0].reason == "probe_failed"
    assert reopened.state.generation == 2 and reopened.state.open_until == 106.0 + 10.0


def test_open_wait_doubles_and_is_capped():
    config = BreakerConfig(open_seconds=5, max_open_seconds=60)
    s = run(State(), [Record(0, failures=5)], 0.0, config)
    waits = []
    now = 0.0
    for _ in range(6):
        waits.append(s.open_until - now)
        now = s.open_until
        s = run(s, [Acquire()], now, config)
        s = step(s, Record(s.generation, probe=True, failures=1), config, now).state
    assert waits == [5, 10, 20, 40, 60, 60]


def test_results_of_an_older_generation_are_ignored():
    s = half_open_with_both_probes_out()
    result = step(s, Record(0, probe=True, successes=2), CFG, 105.0)
    assert result.ignored and result.state == s
    late_failure = step(s, Record(0, failures=1), CFG, 105.0)
    assert late_failure.ignored and late_failure.state.state == HALF_OPEN


def test_a_neutral_probe_gives_its_slot_back():
    s = half_open_with_both_probes_out()
    assert not step(s, Acquire(), CFG, 105.0).decision.granted
    s = step(s, Record(1, probe=True), CFG, 105.0).state
    assert step(s, Acquire(), CFG, 105.0).decision.granted


def test_lost_probes_reopen_after_the_probe_timeout():
    s = half_open_with_both_probes_out()
    assert step(s, Acquire(), CFG, 134.9).state.state == HALF_OPEN
    result = step(s, Acquire(), CFG, 135.0)
    assert result.state.state == OPEN and result.transitions[-1].reason == "probe_timeout"
    assert result.state.open_until == 135.0 + 10.0


def test_throttle_pauses_whatever_the_generation_and_is_not_a_failure():
    s = step(State(), Record(-1, pause_seconds=3.0), CFG, 100.0).state
    assert s.paused_until == 103.0 and s.consecutive == 0
    decision = step(s, Acquire(), CFG, 101.0).decision
    assert not decision.granted and decision.retry_at == 103.0
    assert step(s, Acquire(), CFG, 103.0).decision.granted
    assert step(State(), Record(0, pause_seconds=10_000.0), CFG, 0.0).state.paused_until == 3600.0


def test_reset_closes_starts_a_generation_and_clears_the_pause():
    s = run(State(), [Record(0, failures=5), Record(-1, pause_seconds=30)], 100.0)
    result = step(s, Reset("nurse.kim"), CFG, 101.0)
    assert result.state.state == CLOSED and result.state.generation == 2 and result.state.paused_until == 0
    t = result.transitions[0]
    assert (t.from_state, t.to_state, t.reason, t.by) == (OPEN, CLOSED, "reset", "nurse.kim")


def test_state_fields_round_trip():
    s = run(State(), [Record(0, successes=3, failures=2), Record(-1, pause_seconds=0.3)], 123.456)
    assert State.from_fields(s.to_fields()) == s
    assert State.from_fields({}) == State()


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        ("accepted", "success"),
        ("duplicate", "success"),
        ("transient", "failure"),
        ("unknown", "failure"),
        ("permanent", "neutral"),
        ("configuration", "neutral"),
        ("throttled", "throttled"),
        ("not_sent", "neutral"),
    ],
)
def test_outcomes_classify(outcome, kind):
    assert classify(outcome) == kind


def test_unknown_outcome_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="accepted"):
        classify("exploded")


def test_invalid_config_says_what_is_wrong():
    with pytest.raises(ValueError, match="half_open_probes"):
        BreakerConfig(half_open_probes=0)
