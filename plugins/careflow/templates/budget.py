"""The time and size budget of one render, and the guard every for loop goes through.

The compiler wraps each loop's list in ``loop_guard`` (a filter name no template can spell), so
loops are bounded however they are nested. The budget of the render in progress lives in a
context variable: renders in different threads or tasks never share one.
"""

from __future__ import annotations

import gc
import os
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


class _LastRead(threading.local):
    """This thread's last read of its CPU clock (``_clock``), and the wall clock just before it."""

    cpu: float = 0.0
    wall: float = float("-inf")


_last_read = _LastRead()


def _forget_last_read() -> None:
    # A forked child's thread starts its own CPU clock from zero: its parent's read says nothing.
    _last_read.wall = float("-inf")


os.register_at_fork(after_in_child=_forget_last_read)

#: How old this thread's last CPU clock read may be for a render to start from it; a render may
#: run this much past its budget before it is stopped, and is never stopped before it is spent.
CPU_READ_REUSED_FOR_SECONDS = 0.005


def _cpu_at(wall: float) -> float:
    """This thread's CPU clock at ``wall`` (``time.perf_counter``), or a little above it.

    The CPU clock is a system call, slow enough on a VM (several µs) to show in a batch of
    renders. A thread's CPU time never runs ahead of the wall clock, so a read made shortly before
    plus the wall time since is a bound that never lies low; it is read again once it is
    ``CPU_READ_REUSED_FOR_SECONDS`` old.
    """
    last = _last_read
    if wall - last.wall <= CPU_READ_REUSED_FOR_SECONDS:
        return last.cpu + (wall - last.wall)
    last.wall, last.cpu = wall, _clock()  # wall first: the CPU read is at or past it
    return last.cpu


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
        started = time.perf_counter()
        return cls(_cpu_at(started) + seconds, limits.MAX_RENDER_CHARS, started=started, seconds=seconds)

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
