"""The time and size budget of one render, and the guard every for loop goes through.

The compiler wraps each loop's list in ``loop_guard`` (a filter name no template can spell), so
loops are bounded however they are nested. The budget of the render in progress lives in a
context variable: renders in different threads or tasks never share one.
"""

from __future__ import annotations

import gc
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import Undefined

from careflow.exceptions import TemplateError
from careflow.templates import codes, limits
from careflow.templates.filters import MissingValue
from careflow.templates.sample import AttributeSample


class _CollectorTime(threading.local):
    """CPU time this thread spent in the garbage collector (it runs in whichever thread triggers it)."""

    started: float | None = None
    spent: float = 0.0


_collector = _CollectorTime()


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    # Only full collections matter (about 0.1 s in a worker that imported Airflow); the young
    # ones take microseconds and happen every few hundred allocations: not worth a clock read.
    if info.get("generation") != 2:
        return
    if phase == "start":
        _collector.started = time.thread_time()
    elif _collector.started is not None:
        _collector.spent += time.thread_time() - _collector.started
        _collector.started = None


gc.callbacks.append(_on_collection)


def _clock() -> float:
    # CPU time of this thread, not wall time: a render that waits for a busy CPU has spent
    # nothing, and must not fail a patient's message (a failed message is never retried). Nor
    # does a garbage collection that happens to start during the render: in a worker that has
    # imported Airflow a full collection takes a large part of the budget by itself.
    return time.thread_time() - _collector.spent


#: The filter name the loop guard is registered under; not a valid identifier on purpose.
LOOP_GUARD = "careflow-loop-guard"


@dataclass
class RenderBudget:
    """What one render may still spend."""

    deadline: float
    max_chars: int
    chars: int = 0
    iterations: int = 0
    #: the wall clock (``time.perf_counter``) at the start, and the budget in seconds
    started: float = 0.0
    seconds: float = 0.0

    @classmethod
    def start(cls) -> RenderBudget:
        """A fresh budget from the current limits."""
        seconds = limits.RENDER_BUDGET_SECONDS
        return cls(_clock() + seconds, limits.MAX_RENDER_CHARS, started=time.perf_counter(), seconds=seconds)

    def check_time(self) -> None:
        """TEMPLATE_RENDER_TIMEOUT once the render's CPU budget is spent."""
        # A thread's CPU time never runs ahead of the wall clock, so the budget cannot be spent
        # before that much wall time has passed: a cheap clock read spares the CPU clock's
        # system call on every chunk of every render.
        if time.perf_counter() - self.started <= self.seconds:
            return
        if _clock() > self.deadline:
            budget_ms = round(limits.RENDER_BUDGET_SECONDS * 1000)
            raise TemplateError(
                codes.RENDER_TIMEOUT, f"rendering the message took longer than {budget_ms} ms; simplify it"
            )

    def add_output(self, chunk: str) -> None:
        """Count rendered text; TEMPLATE_OUTPUT_TOO_LARGE past the cap."""
        self.chars += len(chunk)
        if self.chars > self.max_chars:
            raise TemplateError(
                codes.OUTPUT_TOO_LARGE, f"the message grew past {self.max_chars} characters while rendering"
            )
        self.check_time()


current_budget: ContextVar[RenderBudget | None] = ContextVar("careflow_template_budget", default=None)


def loop_guard(value: Any) -> Any:
    """Let a for loop go over ``value`` only if it is a short list and the budget allows it."""
    if isinstance(value, Undefined):
        return value  # iterating it raises the undefined-variable error
    if value is None:
        raise MissingValue()
    if isinstance(value, AttributeSample):
        return ()  # publish time: a clinic list whose items the sample cannot know
    if not isinstance(value, (list, tuple)):
        raise TemplateError(
            codes.RENDER_FAILED, f"a for loop can only go over a list, not a {type(value).__name__}"
        )
    if len(value) > limits.MAX_LOOP_ITEMS:
        raise TemplateError(
            codes.OUTPUT_TOO_LARGE,
            f"a for loop may go over at most {limits.MAX_LOOP_ITEMS} items; this list has {len(value)}",
        )
    budget = current_budget.get()
    if budget is not None:
        budget.iterations += len(value)
        if budget.iterations > limits.MAX_LOOP_ITERATIONS:
            raise TemplateError(
                codes.OUTPUT_TOO_LARGE,
                f"the template's loops went over more than {limits.MAX_LOOP_ITERATIONS} items in all",
            )
        budget.check_time()
    return value
