"""Where breaker state lives: Redis (shared by every worker), SQLite (shared on one machine), memory.

Every backend answers the same four calls; the state machine itself is in
:mod:`careflow.resilience.state_machine` (and its Lua mirror for Redis). A send's result is
recorded on the backend that granted its permit (``granted_by``): a permit's generation only means
something there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from careflow.resilience.state_machine import BreakerConfig, Event, Record, State, StepResult

STALE_GENERATION = -1  # never a real generation: the record is ignored (a 429's pause still applies)


@dataclass(frozen=True)
class Applied:
    """What one backend call did: the step result, the backend's clock, and which backend answered."""

    result: StepResult
    now: float
    backend: str  # "redis" | "embedded" | "local" | "local-fallback"


class BreakerBackend(Protocol):
    """Storage of breaker state with atomic steps."""

    @property
    def kind(self) -> str:
        """The backend that will answer the next call ("redis", "embedded", "local", "local-fallback")."""
        ...

    def apply(self, name: str, config: BreakerConfig, event: Event, granted_by: str = "") -> Applied:
        """Run one event through the state machine atomically.

        ``granted_by``: for a :class:`Record`, the backend that granted the permit (``Permit.backend``);
        a result is counted only there.
        """
        ...

    def peek(self, name: str, config: BreakerConfig) -> tuple[State, float, str]:
        """Current state, the backend's clock, and which backend answered; changes nothing."""
        ...

    def transitions(self, name: str, limit: int = 50) -> list[dict]:
        """Latest state changes, newest first."""
        ...

    def names(self) -> list[str]:
        """Names of the breakers this backend holds state for."""
        ...


TRANSITIONS_KEPT = 100
"""How many transitions each backend keeps per breaker."""


def stale_unless(event: Event, granted_by: str, kind: str) -> Event:
    """``event`` as the backend ``kind`` may apply it: a result of another backend's permit is ignored."""
    if isinstance(event, Record) and granted_by and granted_by != kind:
        return replace(event, generation=STALE_GENERATION)
    return event
