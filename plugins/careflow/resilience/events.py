"""A tiny in-process event hook: resilience code announces what happened, operations code listens.

The breaker emits ``breaker_transition`` (every state change it causes; fields ``breaker``,
``from_state``, ``to_state``, ``reason``, ``generation``, ``by``, ``at``, ``backend``),
``breaker_redis_fallback`` (Redis became unreachable: breakers use the machine's breaker file,
caches per-process state; ``url``, ``error``)
and ``breaker_redis_recovered`` (``url``). Field names never clash with a subscriber's first
parameter: write subscribers as ``def on_event(event, **fields)``. Statsd
counters and alerts attach here with :func:`subscribe`; nothing in the send path depends on a
subscriber, and a subscriber that raises is logged and ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Subscriber = Callable[..., Any]
"""Called as ``fn(event_name, **fields)``."""

_lock = threading.Lock()
_subscribers: list[Subscriber] = []


def subscribe(fn: Subscriber) -> Callable[[], None]:
    """Call ``fn(event, **fields)`` for every event emitted from now on; returns an unsubscribe function."""
    with _lock:
        _subscribers.append(fn)
    return lambda: unsubscribe(fn)


def unsubscribe(fn: Subscriber) -> None:
    """Stop calling ``fn`` (no error when it was not subscribed)."""
    with _lock:
        if fn in _subscribers:
            _subscribers.remove(fn)


def emit(event: str, **fields: Any) -> None:
    """Tell every subscriber that ``event`` happened; never raises."""
    with _lock:
        targets = list(_subscribers)
    for fn in targets:
        try:
            fn(event, **fields)
        except Exception:  # a broken metrics hook must not stop messages from going out
            log.exception("careflow event subscriber %r failed on %s", fn, event)
