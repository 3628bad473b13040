"""Breaker state in this process only: the fallback of an unusable breaker file, and handy in tests."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from careflow.resilience.backends import TRANSITIONS_KEPT, Applied, stale_unless
from careflow.resilience.state_machine import BreakerConfig, Event, State, step


class MemoryBackend:
    """Per-process breaker state with the same semantics as the shared backends."""

    def __init__(self, *, kind: str = "local", clock: Callable[[], float] = time.time) -> None:
        self._kind = kind
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, State] = {}
        self._logs: dict[str, deque[dict]] = {}

    @property
    def kind(self) -> str:
        return self._kind

    def apply(self, name: str, config: BreakerConfig, event: Event, granted_by: str = "") -> Applied:
        event = stale_unless(event, granted_by, self._kind)
        with self._lock:
            now = self._clock()
            result = step(self._states.get(name, State()), event, config, now)
            self._states[name] = result.state
            if result.transitions:
                log = self._logs.setdefault(name, deque(maxlen=TRANSITIONS_KEPT))
                for transition in result.transitions:
                    log.appendleft(transition.to_dict())
        return Applied(result, now, self._kind)

    def peek(self, name: str, config: BreakerConfig) -> tuple[State, float, str]:
        with self._lock:
            return self._states.get(name, State()), self._clock(), self._kind

    def transitions(self, name: str, limit: int = 50) -> list[dict]:
        with self._lock:
            return list(self._logs.get(name, ()))[:limit]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._states)
