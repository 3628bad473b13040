"""The circuit breaker's state machine, written once as a pure function: ``step(state, event, config, now)``.

The in-process and embedded (SQLite) backends call :func:`step`; ``lua/breaker.lua`` is a line-for-line
mirror that Redis runs atomically, and a test feeds both the same random event sequences and compares
every resulting state. Change one, change the other.

States: ``closed`` (sending), ``open`` (refusing until ``open_until``), ``half_open`` (at most
``half_open_probes`` probe permits in flight).

- closed -> open when the sliding window holds at least ``min_calls`` calls and the failure rate is
  at least ``failure_rate_threshold`` (reason ``failure_rate``), or after ``consecutive_failures``
  failures in a row (reason ``consecutive_failures``). The seed's rule "N failures in a row" is the
  special case ``min_calls = N, failure_rate_threshold = 1.0`` of the rate rule over a window that
  only holds those calls; the dedicated counter keeps it exact whatever the window holds.
- open -> half_open at the first acquire after ``open_until``.
- half_open -> closed once every probe succeeded; -> open on a probe failure, or when all probe slots
  are taken and no result came back within ``probe_timeout_seconds`` (a lost probe is not a success).
- Each open starts a new ``generation``; results carrying another generation are ignored, so a
  result from before the open cannot close or re-open the breaker.
- The open wait doubles on each consecutive open (``open_seconds * 2**(streak-1)``), capped at
  ``max_open_seconds``; closing resets the streak.
- A throttled answer (429) sets ``paused_until`` whatever the generation: every worker stops sending
  until then. It is not a failure.
- The sliding window is a ring of ``BUCKETS`` buckets of ``window_seconds / BUCKETS`` each; it covers
  between 90% and 100% of ``window_seconds``. Successes of one event are counted before its failures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

BUCKETS = 10
MAX_BACKOFF_EXPONENT = 30  # 2**30 * open_seconds is past any sensible cap; keeps floats finite
MAX_PAUSE_SECONDS = 3600.0  # a provider asking for more than an hour is treated as asking for an hour
DEFAULT_PAUSE_SECONDS = 1.0  # a 429 without Retry-After

EMPTY_BUCKET = (-1, 0, 0)


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and how long it stays open; see the module docstring for the rules."""

    window_seconds: float = 30.0
    min_calls: int = 10
    failure_rate_threshold: float = 0.5
    consecutive_failures: int = 5
    open_seconds: float = 5.0
    max_open_seconds: float = 60.0
    half_open_probes: int = 2
    probe_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if self.window_seconds <= 0:
            problems.append("window_seconds must be > 0")
        if self.min_calls < 1:
            problems.append("min_calls must be >= 1")
        if not 0 < self.failure_rate_threshold <= 1:
            problems.append("failure_rate_threshold must be in (0, 1]")
        if self.consecutive_failures < 1:
            problems.append("consecutive_failures must be >= 1")
        if self.open_seconds <= 0 or self.max_open_seconds < self.open_seconds:
            problems.append("need 0 < open_seconds <= max_open_seconds")
        if self.half_open_probes < 1:
            problems.append("half_open_probes must be >= 1")
        if self.probe_timeout_seconds <= 0:
            problems.append("probe_timeout_seconds must be > 0")
        if problems:
            raise ValueError(f"invalid BreakerConfig: {'; '.join(problems)}")


@dataclass(frozen=True)
class State:
    """Everything a backend stores for one breaker."""

    state: str = CLOSED
    generation: int = 0
    streak: int = 0  # consecutive opens without a close in between: drives the growing wait
    opens: int = 0  # opens since the state was created
    open_until: float = 0.0
    probes_granted: int = 0
    probe_successes: int = 0
    last_probe_at: float = 0.0
    consecutive: int = 0  # failures in a row while closed
    paused_until: float = 0.0
    last_transition_at: float = 0.0
    buckets: tuple[tuple[int, int, int], ...] = field(default=(EMPTY_BUCKET,) * BUCKETS)

    def to_fields(self) -> dict[str, str]:
        """The flat string form stored in Redis' hash (and the SQLite row)."""
        fields = {
            "state": self.state,
            "generation": str(self.generation),
            "streak": str(self.streak),
            "opens": str(self.opens),
            "open_until": repr(float(self.open_until)),
            "probes_granted": str(self.probes_granted),
            "probe_successes": str(self.probe_successes),
            "last_probe_at": repr(float(self.last_probe_at)),
            "consecutive": str(self.consecutive),
            "paused_until": repr(float(self.paused_until)),
            "last_transition_at": repr(float(self.last_transition_at)),
        }
        for i, (bucket_id, calls, failures) in enumerate(self.buckets):
            fields[f"b{i}"] = f"{bucket_id},{calls},{failures}"
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> State:
        """Inverse of :meth:`to_fields`; missing fields take their defaults (a fresh breaker)."""
        if not fields:
            return cls()

        def num(key: str) -> float:
            return float(fields.get(key) or 0)

        def integer(key: str) -> int:
            return int(float(fields.get(key) or 0))

        buckets = []
        for i in range(BUCKETS):
            raw = fields.get(f"b{i}")
            if raw:
                bucket_id, calls, failures = (int(float(part)) for part in raw.split(","))
                buckets.append((bucket_id, calls, failures))
            else:
                buckets.append(EMPTY_BUCKET)
        return cls(
            state=fields.get("state") or CLOSED,
            generation=integer("generation"),
            streak=integer("streak"),
            opens=integer("opens"),
            open_until=num("open_until"),
            probes_granted=integer("probes_granted"),
            probe_successes=integer("probe_successes"),
            last_probe_at=num("last_probe_at"),
            consecutive=integer("consecutive"),
            paused_until=num("paused_until"),
            last_transition_at=num("last_transition_at"),
            buckets=tuple(buckets),
        )


# Events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acquire:
    """A caller asks to send one message."""


@dataclass(frozen=True)
class Record:
    """Results of sends made with permits of ``generation`` (successes counted before failures).

    ``pause_seconds`` is set for a throttled answer; a probe with no success and no failure (a
    neutral or throttled answer) gives its probe slot back.
    """

    generation: int
    probe: bool = False
    successes: int = 0
    failures: int = 0
    pause_seconds: float | None = None


@dataclass(frozen=True)
class Reset:
    """An operator closes the breaker by hand."""

    by: str


Event = Acquire | Record | Reset


# Results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The answer to an :class:`Acquire`."""

    granted: bool
    generation: int
    probe: bool = False
    retry_at: float | None = None


@dataclass(frozen=True)
class Transition:
    """One state change, as kept in the transitions log."""

    at: float
    from_state: str
    to_state: str
    reason: str
    generation: int
    by: str | None = None

    def to_dict(self) -> dict:
        return {
            "at": self.at,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "by": self.by,
            "generation": self.generation,
        }


@dataclass(frozen=True)
class StepResult:
    """New state, the decision (acquire only), the transitions made, and whether a record was ignored."""

    state: State
    decision: Decision | None = None
    transitions: tuple[Transition, ...] = ()
    ignored: bool = False


# The machine ------------------------------------------------------------------------------------


def bucket_width(config: BreakerConfig) -> float:
    return config.window_seconds / BUCKETS


def window_totals(state: State, config: BreakerConfig, now: float) -> tuple[int, int]:
    """(calls, failures) in the sliding window ending at ``now``."""
    current = math.floor(now / bucket_width(config))
    calls = failures = 0
    for bucket_id, bucket_calls, bucket_failures in state.buckets:
        if bucket_id <= current and current - bucket_id < BUCKETS:
            calls += bucket_calls
            failures += bucket_failures
    return calls, failures


def open_wait(config: BreakerConfig, streak: int) -> float:
    """Seconds an open lasts when it is the ``streak``-th consecutive open."""
    exponent = min(streak - 1, MAX_BACKOFF_EXPONENT)
    return min(config.open_seconds * 2.0**exponent, config.max_open_seconds)


def _open(s: State, config: BreakerConfig, now: float, reason: str, out: list[Transition]) -> State:
    streak = s.streak + 1
    out.append(Transition(now, s.state, OPEN, reason, s.generation + 1))
    return replace(
        s,
        state=OPEN,
        generation=s.generation + 1,
        streak=streak,
        opens=s.opens + 1,
        open_until=now + open_wait(config, streak),
        probes_granted=0,
        probe_successes=0,
        last_probe_at=0.0,
        consecutive=0,
        last_transition_at=now,
        buckets=(EMPTY_BUCKET,) * BUCKETS,
    )


def _close(s: State, now: float, reason: str, out: list[Transition], by: str | None = None) -> State:
    out.append(Transition(now, s.state, CLOSED, reason, s.generation, by))
    return replace(
        s,
        state=CLOSED,
        streak=0,
        open_until=0.0,
        probes_granted=0,
        probe_successes=0,
        last_probe_at=0.0,
        consecutive=0,
        last_transition_at=now,
        buckets=(EMPTY_BUCKET,) * BUCKETS,
    )


def _acquire(s: State, config: BreakerConfig, now: float) -> StepResult:
    out: list[Transition] = []
    if now < s.paused_until:
        return StepResult(s, Decision(False, s.generation, retry_at=s.paused_until))
    if s.state == CLOSED:
        return StepResult(s, Decision(True, s.generation))
    if s.state == OPEN:
        if now < s.open_until:
            return StepResult(s, Decision(False, s.generation, retry_at=s.open_until))
        out.append(Transition(now, OPEN, HALF_OPEN, "open_elapsed", s.generation))
        s = replace(
            s, state=HALF_OPEN, probes_granted=0, probe_successes=0, last_probe_at=0.0, last_transition_at=now
        )
    # half open
    if s.probes_granted < config.half_open_probes:
        s = replace(s, probes_granted=s.probes_granted + 1, last_probe_at=now)
        return StepResult(s, Decision(True, s.generation, probe=True), tuple(out))
    if now >= s.last_probe_at + config.probe_timeout_seconds:
        s = _open(s, config, now, "probe_timeout", out)
        return StepResult(s, Decision(False, s.generation, retry_at=s.open_until), tuple(out))
    retry_at = now + min(1.0, config.open_seconds)
    return StepResult(s, Decision(False, s.generation, retry_at=retry_at), tuple(out))


def _record(s: State, config: BreakerConfig, now: float, ev: Record) -> StepResult:
    out: list[Transition] = []
    if ev.pause_seconds is not None:
        pause = min(max(ev.pause_seconds, 0.0), MAX_PAUSE_SECONDS)
        s = replace(s, paused_until=max(s.paused_until, now + pause))
    if ev.generation != s.generation:
        return StepResult(s, ignored=True)
    if s.state == CLOSED:
        if ev.successes + ev.failures == 0:
            return StepResult(s)
        current = math.floor(now / bucket_width(config))
        slot = current % BUCKETS
        bucket_id, calls, failures = s.buckets[slot]
        if bucket_id != current:
            bucket_id, calls, failures = current, 0, 0
        buckets = list(s.buckets)
        buckets[slot] = (bucket_id, calls + ev.successes + ev.failures, failures + ev.failures)
        consecutive = (0 if ev.successes > 0 else s.consecutive) + ev.failures
        s = replace(s, buckets=tuple(buckets), consecutive=consecutive)
        if ev.failures > 0:
            window_calls, window_failures = window_totals(s, config, now)
            if consecutive >= config.consecutive_failures:
                s = _open(s, config, now, "consecutive_failures", out)
            elif (
                window_calls >= config.min_calls
                and window_failures / window_calls >= config.failure_rate_threshold
            ):
                s = _open(s, config, now, "failure_rate", out)
        return StepResult(s, transitions=tuple(out))
    if s.state == HALF_OPEN and ev.probe:
        if ev.failures > 0:
            s = _open(s, config, now, "probe_failed", out)
        elif ev.successes > 0:
            s = replace(s, probe_successes=s.probe_successes + ev.successes)
            if s.probe_successes >= config.half_open_probes:
                s = _close(s, now, "probes_succeeded", out)
        else:
            s = replace(s, probes_granted=max(0, s.probes_granted - 1))
        return StepResult(s, transitions=tuple(out))
    return StepResult(s)


def _reset(s: State, now: float, ev: Reset) -> StepResult:
    out: list[Transition] = []
    s = _close(s, now, "reset", out, by=ev.by)
    # A new generation: permits handed out before the reset must not count against the fresh start.
    s = replace(s, generation=s.generation + 1, paused_until=0.0)
    out[-1] = replace(out[-1], generation=s.generation)
    return StepResult(s, transitions=tuple(out))


def step(state: State, event: Event, config: BreakerConfig, now: float) -> StepResult:
    """Apply one event at time ``now`` (unix seconds) and return the new state and what happened."""
    if isinstance(event, Acquire):
        return _acquire(state, config, now)
    if isinstance(event, Record):
        return _record(state, config, now, event)
    if isinstance(event, Reset):
        return _reset(state, now, event)
    raise TypeError(f"unknown breaker event {event!r}")


# Outcomes ---------------------------------------------------------------------------------------

SUCCESS = "success"
FAILURE = "failure"
NEUTRAL = "neutral"
THROTTLED = "throttled"

OUTCOME_KINDS = {
    "accepted": SUCCESS,
    "duplicate": SUCCESS,
    "transient": FAILURE,
    "unknown": FAILURE,
    "permanent": NEUTRAL,
    "configuration": NEUTRAL,
    "throttled": THROTTLED,
    "not_sent": NEUTRAL,  # the batch stopped before this message: it says nothing about the provider
}


def classify(outcome: object) -> str:
    """What a provider outcome means to the breaker: success, failure, neutral or throttled.

    Accepts the outcome string or a str-Enum member (its ``.value``). Only transient failures
    ("transient", "unknown") count against the breaker (docs/contracts.md §1).
    """
    value = getattr(outcome, "value", outcome)
    kind = OUTCOME_KINDS.get(str(value))
    if kind is None:
        raise ValueError(
            f"unknown send outcome {value!r} for the circuit breaker: expected one of {sorted(OUTCOME_KINDS)}"
        )
    return kind
