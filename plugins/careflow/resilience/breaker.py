"""The circuit breaker of one provider channel (``"default:sms"``), shared by every worker.

Usage in the send path::

    breaker = get_breaker("default:sms")
    permit = breaker.acquire()            # raises BreakerOpen(name, retry_at)
    result = send(message)
    breaker.record(permit, result.outcome.value, retry_after=result.retry_after)

or hand ``breaker.gate()`` to the provider client, which calls ``before_send()`` / ``after_send()``.

Backends (picked by :func:`get_breaker`): Redis when ``careflow_redis`` is configured (state shared
by every worker, each transition one Lua script, time from Redis); otherwise the embedded SQLite
file shared by the processes of one machine. The rules are in
:mod:`careflow.resilience.state_machine`.

Redis down: the process keeps sending under the embedded breaker file with the same rules, shared
by the processes of this machine (a task that defers and resumes, the send process it forks), not
with other hosts; per-process memory if that file is unusable too (``backend == "local-fallback"``
in snapshots either way). We chose to keep sending rather than refuse every message: a Redis outage
is not a provider outage, and the machine's breaker still protects the provider from each worker.
The switch is logged once, counted (``fallback_events``) and emitted as ``breaker_redis_fallback``;
Redis is retried every few seconds and ``breaker_redis_recovered`` is emitted when it answers
again. Permits handed out by Redis are ignored by the fallback, and the other way round: a result
is recorded on the backend that granted its permit, so a fallback permit's result goes to the
breaker file even after Redis came back (a probe granted by the file frees its slot there), and a
Redis permit's result that arrives while Redis is unreachable is dropped (its generation means
nothing to the file; a 429's pause still applies).

Cost in the send path: while closed, a granted verdict is reused for up to ``verdict_seconds``
(0.5 s) or ``verdict_calls`` acquires without asking the backend, and successes are buffered and
flushed every ``flush_every`` (1,000) results or ``flush_seconds`` (0.2 s), whichever comes first.
A flush is a round trip to Redis on the send process's event loop, which writes no request while
it waits: at thousands of messages a second the time bound alone keeps the shared counts fresh.
Failures, 429s and every probe go to the backend at once, so opening is prompt and the half-open
probe limit holds across processes. The price: a worker may keep sending for up to
``verdict_seconds`` after another worker opened the breaker or a 429 paused it; those sends'
results carry the old generation and are ignored.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from careflow.exceptions import BreakerOpen
from careflow.resilience import events
from careflow.resilience.backends import STALE_GENERATION, Applied, BreakerBackend
from careflow.resilience.state_machine import (
    CLOSED,
    FAILURE,
    NEUTRAL,
    OPEN,
    SUCCESS,
    THROTTLED,
    Acquire,
    BreakerConfig,
    Record,
    Reset,
    State,
    classify,
    window_totals,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Permit:
    """Leave to send one message; hand it back to :meth:`CircuitBreaker.record` with the outcome."""

    name: str
    generation: int
    probe: bool
    backend: str = ""  # which backend granted it: its result is recorded there


@dataclass(frozen=True)
class BreakerSnapshot:
    """A breaker as operators see it.

    ``opens`` counts opens since the breaker's state was created; ``open_streak`` the consecutive
    opens that set the current wait. Times are unix seconds.
    """

    name: str
    state: str  # "closed" | "open" | "half_open"
    failure_rate: float
    calls: int
    generation: int
    opens: int
    next_probe_at: float | None
    paused_until: float | None
    backend: str  # "redis" | "embedded" | "local" | "local-fallback"
    last_transition_at: float | None
    open_streak: int = 0
    consecutive_failures: int = 0
    probes_in_flight: int = 0
    #: the backend's clock (Redis ``TIME``) when this was read, and this host's at the same moment
    read_at: float | None = None
    read_here_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def sends_resume_at(self) -> float | None:
        """When sends may go again, on this host's clock (None: now).

        An open breaker's next probe, or the end of a 429 pause, moved :func:`on_this_clock`: the
        backend keeps its times on its own clock (Redis ``TIME``, shared by every worker).
        """
        if self.state == "open" and self.next_probe_at:
            until = float(self.next_probe_at)
        elif self.paused_until:
            until = float(self.paused_until)
        else:
            return None
        if self.read_at is None or self.read_here_at is None:
            return until
        return on_this_clock(until, self.read_at, self.read_here_at)


def on_this_clock(moment: float, backend_now: float, here_now: float) -> float:
    """``moment`` of the backend's clock on this host's: as far from ``here_now`` as from ``backend_now``.

    The backend's clock (Redis ``TIME``) is read as ``backend_now`` when this host's reads
    ``here_now``; a worker whose clock is off waits as long as the backend says.
    """
    return here_now + (moment - backend_now)


def snapshot_of(name: str, state: State, config: BreakerConfig, now: float, backend: str) -> BreakerSnapshot:
    """The operator view of a stored state at ``now``."""
    calls, failures = window_totals(state, config, now)
    return BreakerSnapshot(
        name=name,
        state=state.state,
        failure_rate=(failures / calls) if calls else 0.0,
        calls=calls,
        generation=state.generation,
        opens=state.opens,
        next_probe_at=state.open_until if state.state == OPEN else None,
        paused_until=state.paused_until if state.paused_until > now else None,
        backend=backend,
        last_transition_at=state.last_transition_at or None,
        open_streak=state.streak,
        consecutive_failures=state.consecutive,
        probes_in_flight=state.probes_granted - state.probe_successes if state.state == "half_open" else 0,
        read_at=now,
        read_here_at=time.time(),
    )


@dataclass
class _Verdict:
    generation: int
    backend: str
    expires: float  # time.monotonic()
    calls_left: int


@dataclass
class _Buffer:
    generation: int
    backend: str
    successes: int
    started: float  # time.monotonic()


class CircuitBreaker:
    """One named breaker over a backend; thread-safe; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        backend: BreakerBackend,
        verdict_seconds: float = 0.5,
        verdict_calls: int = 1000,
        flush_every: int = 1000,
        flush_seconds: float = 0.2,
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a name such as 'default:sms'")
        self.name = name
        self.config = config or BreakerConfig()
        self.backend = backend
        self.verdict_seconds = verdict_seconds
        self.verdict_calls = verdict_calls
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._lock = threading.RLock()
        self._verdict: _Verdict | None = None
        self._buffer: _Buffer | None = None
        _all_breakers.add(self)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, backend={self.backend.kind!r})"

    @property
    def fallback_events(self) -> int:
        """How many times this process fell back from Redis to the machine's breaker file (0 off Redis)."""
        return int(getattr(self.backend, "fallback_events", 0))

    # the send path ------------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit to send one message, or :class:`BreakerOpen` with the time to try again."""
        with self._lock:
            self._flush_if_due()
            verdict = self._verdict
            if verdict is not None:
                if verdict.calls_left > 0 and time.monotonic() < verdict.expires:
                    verdict.calls_left -= 1
                    return Permit(self.name, verdict.generation, False, verdict.backend)
                self._verdict = None
            applied = self.backend.apply(self.name, self.config, Acquire())
            self._announce(applied)
            decision = applied.result.decision
            assert decision is not None
            if not decision.granted:
                retry_at = decision.retry_at or applied.now
                raise BreakerOpen(self.name, retry_at, on_this_clock(retry_at, applied.now, time.time()))
            if not decision.probe and applied.result.state.state == CLOSED and self.verdict_seconds > 0:
                self._verdict = _Verdict(
                    decision.generation,
                    applied.backend,
                    time.monotonic() + self.verdict_seconds,
                    self.verdict_calls,
                )
            return Permit(self.name, decision.generation, decision.probe, applied.backend)

    def record(self, permit: Permit, outcome: Any, *, retry_after: float | None = None) -> None:
        """Report how a send made with ``permit`` ended.

        ``outcome`` is the provider outcome ("accepted", "duplicate", "permanent", "throttled",
        "configuration", "transient", "unknown") or a str-Enum of it. Only "transient" and
        "unknown" count as failures; "throttled" pauses every worker for ``retry_after`` seconds.
        """
        kind = classify(outcome)
        if permit.name != self.name:
            raise ValueError(f"permit of breaker {permit.name!r} recorded on breaker {self.name!r}")
        if kind == NEUTRAL and not permit.probe:
            return
        with self._lock:
            generation = permit.generation
            if generation == STALE_GENERATION and kind != THROTTLED:
                return  # the backend would ignore it anyway
            if kind == SUCCESS and not permit.probe and self.flush_every > 1:
                self._buffer_success(generation, permit.backend)
                return
            self._flush()
            event = Record(
                generation,
                probe=permit.probe,
                successes=1 if kind == SUCCESS else 0,
                failures=1 if kind == FAILURE else 0,
                pause_seconds=(retry_after if retry_after is not None else 1.0)
                if kind == THROTTLED
                else None,
            )
            applied = self.backend.apply(self.name, self.config, event, permit.backend)
            self._announce(applied)
            state = applied.result.state
            verdict = self._verdict
            if (
                kind == THROTTLED
                or state.state != CLOSED
                or (
                    verdict is not None
                    and (verdict.generation != state.generation or verdict.backend != applied.backend)
                )
            ):
                self._verdict = None

    def flush(self) -> None:
        """Send buffered successes to the backend now (also done at exit)."""
        with self._lock:
            self._flush()

    def gate(self) -> BreakerGate:
        """This breaker as a provider-client send gate (``before_send`` / ``after_send``)."""
        return BreakerGate(self)

    # operators ----------------------------------------------------------------------------------

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's current state, failure rate and timing as stored in the backend."""
        self.flush()
        state, now, backend = self.backend.peek(self.name, self.config)
        return snapshot_of(self.name, state, self.config, now, backend)

    def reset(self, *, by: str) -> None:
        """Close the breaker by hand; the transitions log keeps who did it and when."""
        if not by:
            raise ValueError("reset needs by= (who resets the breaker), it is kept in the transitions log")
        with self._lock:
            self._buffer = None
            self._verdict = None
            applied = self.backend.apply(self.name, self.config, Reset(by))
            self._announce(applied)

    def transitions(self, limit: int = 50) -> list[dict]:
        """Latest state changes, newest first: ``{"at", "from", "to", "reason", "by", "generation"}``."""
        return self.backend.transitions(self.name, limit)

    # internals ----------------------------------------------------------------------------------

    def _buffer_success(self, generation: int, backend: str) -> None:
        buffer = self._buffer
        if buffer is not None and (buffer.generation != generation or buffer.backend != backend):
            self._flush()
            buffer = None
        if buffer is None:
            buffer = self._buffer = _Buffer(generation, backend, 0, time.monotonic())
        buffer.successes += 1
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        buffer = self._buffer
        if buffer is not None and (
            buffer.successes >= self.flush_every or time.monotonic() - buffer.started >= self.flush_seconds
        ):
            self._flush()

    def _flush(self) -> None:
        buffer, self._buffer = self._buffer, None
        if buffer is None or buffer.successes == 0:
            return
        applied = self.backend.apply(
            self.name, self.config, Record(buffer.generation, successes=buffer.successes), buffer.backend
        )
        self._announce(applied)

    def _forget_buffers(self) -> None:
        self._buffer = None
        self._verdict = None
        self._lock = threading.RLock()

    def _announce(self, applied: Applied) -> None:
        for t in applied.result.transitions:
            level = logging.WARNING if t.to_state == OPEN else logging.INFO
            log.log(
                level,
                "circuit breaker %s: %s -> %s (%s, generation %d%s)",
                self.name,
                t.from_state,
                t.to_state,
                t.reason,
                t.generation,
                f", by {t.by}" if t.by else "",
            )
            events.emit(
                "breaker_transition",
                breaker=self.name,
                from_state=t.from_state,
                to_state=t.to_state,
                reason=t.reason,
                generation=t.generation,
                by=t.by,
                at=t.at,
                backend=applied.backend,
            )


class BreakerGate:
    """A :class:`CircuitBreaker` as the provider client's send gate.

    ``before_send()`` returns None (go) or the unix time before which nothing may be sent;
    ``after_send(result)`` reads ``result.outcome`` (str or str-Enum) and ``result.retry_after``.
    The permit of a send is matched to its result through a context variable (each thread and each
    asyncio task has its own); when the result arrives in another context, the oldest outstanding
    permit is used.
    """

    MAX_OUTSTANDING = 10_000

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self._current: contextvars.ContextVar[Permit | None] = contextvars.ContextVar(
            f"careflow_gate_{breaker.name}", default=None
        )
        #: the permits given and not yet recorded, oldest first, by identity: a send's result finds
        #: its own permit without walking those of the other sends in flight (up to the provider's
        #: concurrency, and the batches that share it)
        self._outstanding: dict[int, Permit] = {}
        self._lock = threading.Lock()

    def before_send(self) -> float | None:
        try:
            permit = self.breaker.acquire()
        except BreakerOpen as exc:
            return exc.local_retry_at
        self._current.set(permit)
        with self._lock:
            if len(self._outstanding) >= self.MAX_OUTSTANDING:  # the oldest is forgotten
                del self._outstanding[next(iter(self._outstanding))]
            self._outstanding[id(permit)] = permit
        return None

    def after_send(self, result: Any) -> None:
        permit = self._current.get()
        self._current.set(None)
        with self._lock:
            # An entry's key is the id of a permit the dict keeps alive: no other permit has it.
            if permit is not None and self._outstanding.get(id(permit)) is permit:
                del self._outstanding[id(permit)]
            elif self._outstanding:
                permit = self._outstanding.pop(next(iter(self._outstanding)))
            else:
                permit = None
        if permit is None:  # a result without a permit still carries a 429's pause
            permit = Permit(self.breaker.name, STALE_GENERATION, False)
        outcome = getattr(result, "outcome", result)
        self.breaker.record(permit, outcome, retry_after=getattr(result, "retry_after", None))


# registry ---------------------------------------------------------------------------------------

_all_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()
_default_backend: BreakerBackend | None = None


def default_backend() -> BreakerBackend:
    """Redis when ``careflow.settings.redis_url()`` names one, else the embedded SQLite file.

    A Redis that answers is asked its kind at once, so that a setup that cannot work (a Redis
    Cluster with a database other than 0) is a :class:`~careflow.exceptions.ConfigurationError`
    here, where the task that asks for a breaker can say so, and not at each send.
    """
    global _default_backend
    with _registry_lock:
        if _default_backend is None:
            from careflow.settings import redis_url

            url = redis_url()
            if url:
                from careflow.resilience.backends.redis_backend import RedisBackend
                from careflow.resilience.redis_link import link_for

                link = link_for(url)
                link.run(lambda client: None)  # unreachable: the fallbacks, until it answers
                _default_backend = RedisBackend(link)
            else:
                from careflow.resilience.backends.sqlite_backend import EmbeddedBackend

                _default_backend = EmbeddedBackend()
        return _default_backend


def get_breaker(name: str, config: BreakerConfig | None = None) -> CircuitBreaker:
    """The process' breaker called ``name`` (e.g. ``"default:sms"``); a given config replaces the old one."""
    backend = default_backend()
    with _registry_lock:
        breaker = _registry.get(name)
        if breaker is None:
            breaker = _registry[name] = CircuitBreaker(name, config, backend=backend)
        elif config is not None and config != breaker.config:
            breaker.config = config
        return breaker


def list_breakers() -> list[BreakerSnapshot]:
    """Snapshots of every breaker the backend knows (configs of this process where it has them)."""
    backend = default_backend()
    with _registry_lock:
        known = dict(_registry)
    names = sorted(set(backend.names()) | set(known))
    return [(known.get(name) or CircuitBreaker(name, backend=backend)).snapshot() for name in names]


def forget_breakers() -> None:
    """Flush and drop every breaker and the default backend (tests; a process whose settings changed)."""
    global _default_backend
    flush_all()
    with _registry_lock:
        _registry.clear()
        _default_backend = None


def flush_all() -> None:
    """Flush buffered successes of every breaker of the process."""
    for breaker in list(_all_breakers):
        try:
            breaker.flush()
        except Exception:  # at exit, a failed flush only loses a few success counts
            log.debug("flush of breaker %s failed", breaker.name, exc_info=True)


def _after_fork_in_child() -> None:
    # Buffered results and cached verdicts belong to the parent; the child must not send them again.
    for breaker in list(_all_breakers):
        breaker._forget_buffers()


atexit.register(flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
