"""The breaker as the provider client's send gate: each result is recorded with the permit of its send."""

from __future__ import annotations

import contextvars
from typing import Any

from careflow.resilience.backends import STALE_GENERATION
from careflow.resilience.breaker import BreakerGate, Permit


class Breaker:
    """Hands out numbered permits and keeps what it is told of each."""

    name = "gate:test"

    def __init__(self) -> None:
        self.given = 0
        self.recorded: list[tuple[int, str]] = []

    def acquire(self) -> Permit:
        self.given += 1
        return Permit(self.name, self.given, False)

    def record(self, permit: Permit, outcome: Any, *, retry_after: float | None = None) -> None:
        self.recorded.append((permit.generation, outcome))


def in_context(function: Any, *args: Any) -> tuple[contextvars.Context, Any]:
    context = contextvars.copy_context()
    return context, context.run(function, *args)


def test_each_send_records_its_own_permit_whatever_the_order_of_the_answers() -> None:
    breaker = Breaker()
    gate = BreakerGate(breaker)  # type: ignore[arg-type]
    sends = [in_context(gate.before_send)[0] for _ in range(50)]
    for number in (50, 1, 25, 2, 49):
        sends[number - 1].run(gate.after_send, f"answer {number}")
    assert breaker.recorded == [(n, f"answer {n}") for n in (50, 1, 25, 2, 49)]


def test_an_answer_without_a_permit_of_its_own_takes_the_oldest_left() -> None:
    breaker = Breaker()
    gate = BreakerGate(breaker)  # type: ignore[arg-type]
    sends = [in_context(gate.before_send)[0] for _ in range(3)]
    sends[1].run(gate.after_send, "own")
    contextvars.copy_context().run(gate.after_send, "elsewhere")  # no permit in this context
    contextvars.copy_context().run(gate.after_send, "elsewhere")
    contextvars.copy_context().run(gate.after_send, "none left")
    assert breaker.recorded[:3] == [(2, "own"), (1, "elsewhere"), (3, "elsewhere")]
    assert breaker.recorded[3] == (STALE_GENERATION, "none left")  # still heard (a 429's pause)
    sends[0].run(gate.after_send, "late")  # its permit was taken by another answer: not twice
    assert breaker.recorded[4] == (STALE_GENERATION, "late")


def test_the_gate_keeps_at_most_its_limit_of_permits_forgetting_the_oldest() -> None:
    class Small(BreakerGate):
        MAX_OUTSTANDING = 3

    breaker = Breaker()
    gate = Small(breaker)  # type: ignore[arg-type]
    sends = [in_context(gate.before_send)[0] for _ in range(5)]
    for _ in range(4):
        contextvars.copy_context().run(gate.after_send, "x")
    assert [generation for generation, _ in breaker.recorded] == [3, 4, 5, STALE_GENERATION]
    sends[0].run(gate.after_send, "forgotten")
    assert breaker.recorded[-1] == (STALE_GENERATION, "forgotten")
