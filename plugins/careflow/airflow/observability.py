"""careflow's metrics through Airflow's statsd client, and the event hook alerts subscribe to.

Metric names carry workflow, node and channel ids only: never patient data. Names:

- ``careflow.messages.<outcome>.<workflow>.<node>.<channel>`` (sent, failed, skipped, expired, throttled)
- ``careflow.messages.send_latency_ms.<workflow>.<node>.<channel>`` (timer)
- ``careflow.messages.lateness_s.<workflow>.<node>`` (timer, seconds past due when sent)
- ``careflow.executions.enrolled.<workflow>``
- ``careflow.breaker.<event>.<breaker>``, ``careflow.cache.<hit|miss>.<cache>``
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_subscribers: list[Callable[..., None]] = []
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def subscribe(fn: Callable[..., None]) -> None:
    """Call ``fn(name, **fields)`` for every event (alerts, tests)."""
    if fn not in _subscribers:
        _subscribers.append(fn)


def _part(value: Any) -> str:
    return _SAFE.sub("_", str(value))[:60] or "none"


def _stats() -> Any:
    try:
        from airflow.sdk.observability.stats import Stats

        return Stats
    except Exception:  # outside Airflow: metrics are off, events still reach subscribers
        return None


def emit(name: str, **fields: Any) -> None:
    """Record an engine event as metrics and hand it to subscribers; never raises."""
    stats = _stats()
    try:
        if stats is not None:
            wf = _part(fields.get("workflow_id"))
            node = _part(fields.get("node_id"))
            channel = _part(fields.get("channel"))
            if name == "message_sent":
                stats.incr(f"careflow.messages.sent.{wf}.{node}.{channel}")
                stats.timing(
                    f"careflow.messages.send_latency_ms.{wf}.{node}.{channel}",
                    float(fields.get("latency_ms") or 0),
                )
                stats.timing(
                    f"careflow.messages.lateness_s.{wf}.{node}", float(fields.get("lateness_s") or 0)
                )
            elif name == "message_outcome":
                stats.incr(f"careflow.messages.{_part(fields.get('outcome'))}.{wf}.{node}.{channel}")
            elif name == "executions_enrolled":
                stats.incr(f"careflow.executions.enrolled.{wf}", int(fields.get("count") or 1))
            elif name == "executions_completed":
                stats.incr(f"careflow.executions.completed.{wf}", int(fields.get("count") or 1))
    except Exception:  # metrics must never break a send
        log.debug("careflow: metric for %s failed", name, exc_info=True)
    for fn in list(_subscribers):
        try:
            fn(name, **fields)
        except Exception:
            log.warning("careflow: event subscriber %r failed for %s", fn, name, exc_info=True)
