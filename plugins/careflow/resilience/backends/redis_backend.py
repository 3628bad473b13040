"""Breaker state in Redis, shared by every worker; each step is one Lua script run (atomic).

Keys (``{breakers}`` is a hash tag: in a Redis Cluster the script touches a breaker's state, its
log and the set of names at once, which must therefore share a slot):

- ``<prefix>:{breakers}:state:<name>`` hash: the fields of
  :class:`~careflow.resilience.state_machine.State`
- ``<prefix>:{breakers}:log:<name>`` list: transitions, newest first, the last 100
- ``<prefix>:{breakers}:names`` set: every breaker name, added by the script whenever it writes a
  state (a breaker's first call does), so a Redis that lost its data (FLUSHALL, a restart without
  persistence) lists every breaker in use again

Time is Redis' ``TIME`` inside the script, never a worker's clock. When Redis is unreachable the
backend answers from the machine's breaker file (an
:class:`~careflow.resilience.backends.sqlite_backend.EmbeddedBackend` on
:func:`~careflow.resilience.backends.sqlite_backend.default_path`, shared by the processes of this
machine; per-process memory if the file is unusable too), reported as ``"local-fallback"``, and
goes back to Redis once :class:`~careflow.resilience.redis_link.RedisLink` sees it again. The file
is opened at the first call that needs it: while Redis works, nothing is written to it.

A result is recorded where its permit was granted, whichever answers other calls by then:

- a fallback permit's result goes to the breaker file, even once Redis is back: a probe the file
  granted must be answered there, or its slot stays taken and the next outage starts with a
  probe timeout (the breaker opens with a healthy provider);
- a Redis permit's result goes to Redis; if Redis is unreachable by then it is dropped (only a
  429's pause is applied, to the file): the file keeps its own counts and generations, and the
  sends it allows from now on count there.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from careflow.resilience.backends import TRANSITIONS_KEPT, Applied, stale_unless
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.resilience.redis_link import DOWN, RedisLink, key_prefix
from careflow.resilience.state_machine import (
    Acquire,
    BreakerConfig,
    Decision,
    Event,
    Record,
    Reset,
    State,
    StepResult,
    Transition,
)

STATE_TTL_MS = 7 * 24 * 3600 * 1000  # an idle breaker is forgotten after a week (it starts closed again)
#: the hash tag of every breaker key: one Redis Cluster slot for all of them (a few keys a provider)
SLOT_TAG = "{breakers}"
FALLBACK = "local-fallback"
"""What answers while Redis is unreachable: state local to this machine (or process), not to every worker."""


def _lua_source() -> str:
    return resources.files("careflow.resilience").joinpath("lua/breaker.lua").read_text(encoding="utf-8")


def _transition(entry: dict) -> Transition:
    return Transition(
        at=float(entry["at"]),
        from_state=entry["from"],
        to_state=entry["to"],
        reason=entry["reason"],
        generation=int(entry["generation"]),
        by=entry.get("by") or None,
    )


def _as_list(value: object) -> list:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


class RedisBackend:
    """Breaker state in Redis, with the machine's breaker file as fallback."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str | None = None,
        clock: Callable[[], float] | None = None,
        fallback_path: str | Path | None = None,
    ) -> None:
        """``clock`` replaces Redis' TIME (and the fallback's clock); only tests that need a controlled
        clock pass it. ``fallback_path``: the breaker file used while Redis is unreachable
        (default: :func:`~careflow.resilience.backends.sqlite_backend.default_path`)."""
        self.link = link
        self.prefix = prefix or key_prefix()
        self._clock = clock
        self._script = link.register_script(_lua_source())
        self._fallback_path = fallback_path
        self._fallback_backend: EmbeddedBackend | None = None
        self._fallback_lock = threading.Lock()

    @property
    def kind(self) -> str:
        return FALLBACK if self.link.down else "redis"

    @property
    def fallback(self) -> EmbeddedBackend:
        """The breaker file answering while Redis is unreachable, created at its first use."""
        backend = self._fallback_backend
        if backend is None:
            with self._fallback_lock:
                backend = self._fallback_backend
                if backend is None:
                    clock = {"clock": self._clock} if self._clock is not None else {}
                    backend = self._fallback_backend = EmbeddedBackend(self._fallback_path, **clock)
        return backend

    @property
    def fallback_events(self) -> int:
        """How many times this process switched from Redis to its fallback."""
        return self.link.fallback_events

    def state_key(self, name: str) -> str:
        return f"{self.prefix}:{SLOT_TAG}:state:{name}"

    def log_key(self, name: str) -> str:
        return f"{self.prefix}:{SLOT_TAG}:log:{name}"

    def _names_key(self) -> str:
        return f"{self.prefix}:{SLOT_TAG}:names"

    def _args(self, name: str, op: str, config: BreakerConfig, extra: list) -> list:
        now = repr(float(self._clock())) if self._clock is not None else ""
        return [
            op,
            now,
            repr(float(config.window_seconds)),
            config.min_calls,
            repr(float(config.failure_rate_threshold)),
            config.consecutive_failures,
            repr(float(config.open_seconds)),
            repr(float(config.max_open_seconds)),
            config.half_open_probes,
            repr(float(config.probe_timeout_seconds)),
            TRANSITIONS_KEPT,
            STATE_TTL_MS,
            name,
            *extra,
        ]

    def _run(self, name: str, op: str, config: BreakerConfig, extra: list) -> dict | None:
        keys = [self.state_key(name), self.log_key(name), self._names_key()]
        args = self._args(name, op, config, extra)
        raw = self.link.run(lambda client: self._script(keys=keys, args=args, client=client))
        if raw is DOWN:
            return None
        return json.loads(raw)

    def _on_fallback(self, name: str, config: BreakerConfig, event: Event) -> Applied:
        # The file and its own in-memory fallback answer under one name: a permit of one recorded
        # on the other is checked by generation only.
        return dataclasses.replace(self.fallback.apply(name, config, event), backend=FALLBACK)

    def apply(self, name: str, config: BreakerConfig, event: Event, granted_by: str = "") -> Applied:
        if granted_by == FALLBACK and isinstance(event, Record):
            return self._on_fallback(name, config, event)
        if isinstance(event, Acquire):
            op, extra = "acquire", []
        elif isinstance(event, Record):
            pause = "" if event.pause_seconds is None else repr(float(event.pause_seconds))
            op = "record"
            extra = [event.generation, 1 if event.probe else 0, event.successes, event.failures, pause]
        elif isinstance(event, Reset):
            op, extra = "reset", [event.by]
        else:
            raise TypeError(f"unknown breaker event {event!r}")
        data = self._run(name, op, config, extra)
        if data is None:
            return self._on_fallback(name, config, stale_unless(event, granted_by, FALLBACK))
        decision = None
        if "decision" in data:
            d = data["decision"]
            decision = Decision(
                granted=bool(d["granted"]),
                generation=int(d["generation"]),
                probe=bool(d["probe"]),
                retry_at=float(d["retry_at"]) if d["retry_at"] != "" else None,
            )
        result = StepResult(
            state=State.from_fields(data["state"]),
            decision=decision,
            transitions=tuple(_transition(t) for t in _as_list(data.get("transitions"))),
            ignored=bool(data.get("ignored")),
        )
        return Applied(result, float(data["now"]), "redis")

    def peek(self, name: str, config: BreakerConfig) -> tuple[State, float, str]:
        data = self._run(name, "peek", config, [])
        if data is None:
            state, now, _ = self.fallback.peek(name, config)
            return state, now, FALLBACK
        return State.from_fields(data["state"]), float(data["now"]), "redis"

    def transitions(self, name: str, limit: int = 50) -> list[dict]:
        key = self.log_key(name)
        raw = self.link.run(lambda client: client.lrange(key, 0, max(limit, 1) - 1))
        if raw is DOWN:
            return self.fallback.transitions(name, limit)
        entries = []
        for item in raw[:limit]:
            entry = json.loads(item)
            entry["at"] = float(entry["at"])
            entry["by"] = entry.get("by") or None
            entries.append(entry)
        return entries

    def names(self) -> list[str]:
        raw = self.link.run(lambda client: client.smembers(self._names_key()))
        if raw is DOWN:
            return self.fallback.names()
        return sorted(n.decode() if isinstance(n, bytes) else n for n in raw)
