"""careflow's metrics through Airflow's statsd client, and the event hook alerts subscribe to.

Every engine event (``RunContext.event``) and every resilience event (``careflow.resilience.events``)
passes through :func:`emit`: it becomes statsd metrics through ``airflow.sdk`` ``Stats`` (sent only
when ``[metrics] statsd_on`` is set; Airflow prefixes them with ``[metrics] statsd_prefix``) and
is handed to the subscribers (alerts). Metric names carry workflow, node, channel, breaker and
cache ids only, never patient data; every id part is reduced to ``[A-Za-z0-9_-]`` so that a name
passes Airflow's stat-name validation and keeps its dot hierarchy. The names are listed in
``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Message outcomes counted as ``careflow.messages.<outcome>.…``.
OUTCOMES = ("sent", "failed", "skipped", "expired", "throttled")
#: ``careflow.breaker.state.<breaker>`` gauge values.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

#: The largest statsd packet a pipeline fills (statsd's own default: fits any network's MTU).
STATSD_PACKET_BYTES = 512

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
_subscribers: list[Callable[..., None]] = []
_lock = threading.Lock()
_stats_checked = False


def subscribe(fn: Callable[..., None]) -> Callable[[], None]:
    """Call ``fn(event, **fields)`` for every event (alerts, tests); returns an unsubscribe function."""
    with _lock:
        if fn not in _subscribers:
            _subscribers.append(fn)
    return lambda: unsubscribe(fn)


def unsubscribe(fn: Callable[..., None]) -> None:
    """Stop calling ``fn`` (no error when it was not subscribed)."""
    with _lock:
        if fn in _subscribers:
            _subscribers.remove(fn)


def part(value: Any) -> str:
    """One dot-free, validator-safe segment of a metric name."""
    return _SAFE.sub("_", str(value))[:60] or "none"


def stats() -> Any:
    """Airflow's task-SDK ``Stats``, set up from ``[metrics]`` in processes where Airflow has not done it.

    Airflow's task runner initializes it; ``dag.test()``, the scheduler's and api-server's copies of
    the SDK, the CLI and careflow's in-process simulation do not, and would silently drop every
    metric. None outside Airflow.
    """
    global _stats_checked
    try:
        from airflow.sdk._shared.observability.metrics import stats as backend
        from airflow.sdk.observability.stats import Stats
    except Exception:  # outside Airflow: metrics are off, events still reach subscribers
        return None
    if not _stats_checked:
        _stats_checked = True
        if getattr(backend, "_factory", "set") is None:
            try:
                from airflow.sdk.configuration import conf
                from airflow.sdk.observability.metrics import stats_utils

                Stats.initialize(
                    factory=stats_utils.get_stats_factory(),
                    export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
                )
            except Exception:
                log.warning("careflow: cannot set up Airflow's metrics client", exc_info=True)
    return Stats


def _metrics_off() -> bool:
    """Whether Airflow's metrics go nowhere (``[metrics] statsd_on`` and OpenTelemetry off)."""
    try:
        from airflow.sdk._shared.observability.metrics import stats as backend
        from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

        return isinstance(backend._get_backend(), NoStatsLogger)
    except Exception:  # another Airflow's internals: the timers are sent, as before
        return False


def _record(stats_client: Any, event: str, fields: dict[str, Any]) -> None:
    wf = part(fields.get("workflow_id"))
    node = part(fields.get("node_id"))
    channel = part(fields.get("channel"))
    if event == "messages_sent":  # a batch: the counter once, the timers once per message
        stats_client.incr(f"careflow.messages.sent.{wf}.{node}.{channel}", int(fields.get("count") or 0))
        if _metrics_off():
            return  # two timers a message, each worked out for nothing
        latency = f"careflow.messages.send_latency_ms.{wf}.{node}.{channel}"
        _timings(stats_client, latency, [float(value or 0) for value in fields.get("latencies_ms") or ()])
        lateness = f"careflow.messages.lateness_ms.{wf}.{node}"
        _timings(
            stats_client, lateness, [1000.0 * float(value or 0) for value in fields.get("lateness_s") or ()]
        )
    elif event == "message_outcome":
        outcome = str(fields.get("outcome"))
        outcome = outcome if outcome in OUTCOMES else "other"
        stats_client.incr(f"careflow.messages.{outcome}.{wf}.{node}.{channel}", int(fields.get("count") or 1))
    elif event == "executions_enrolled":
        stats_client.incr(f"careflow.executions.enrolled.{wf}", int(fields.get("count") or 1))
    elif event == "events_unmatched":
        stats_client.incr(f"careflow.events.unmatched.{wf}", int(fields.get("count") or 1))
    elif event == "executions_completed":
        status = fields.get("status") if fields.get("status") in ("failed", "exited") else "completed"
        stats_client.incr(f"careflow.executions.{status}.{wf}", int(fields.get("count") or 1))
    elif event == "provider_configuration_error":
        stats_client.incr(f"careflow.provider.configuration_errors.{wf}.{node}.{channel}")
    elif event == "breaker_transition":
        breaker = part(fields.get("breaker"))
        to_state = str(fields.get("to_state"))
        stats_client.incr(f"careflow.breaker.transitions.{breaker}.{part(to_state)}")
        if to_state in BREAKER_STATES:
            stats_client.gauge(f"careflow.breaker.state.{breaker}", BREAKER_STATES[to_state])
    elif event == "breaker_redis_fallback":
        stats_client.incr("careflow.breaker.redis_fallback")
    elif event == "breaker_redis_recovered":
        stats_client.incr("careflow.breaker.redis_recovered")


def _timings(stats_client: Any, stat: str, values: list[float]) -> None:
    """A batch's samples of one timer (one a message).

    Through Airflow's statsd client, the name goes through its stat-name handler and its allow
    and block lists once, and the samples through one statsd pipeline: as many lines to a UDP
    packet as fit in 512 bytes (three to seven, by the names' length), where a sample each would
    cost a packet and the name's checks each (about 7.5 µs a sample, 0.015 ms of the task's CPU a
    message). Any other client (OpenTelemetry, Datadog, a test's) takes them one by one, as
    ``Stats`` does.
    """
    if not values:
        return
    batch = _statsd_pipeline(stat)
    if batch is None:
        for value in values:
            stats_client.timing(stat, value)
        return
    name, pipeline = batch
    if pipeline is None:  # the allow or block list leaves it out
        return
    with pipeline:  # sent as it closes
        for value in values:
            pipeline.timing(name, value)


def _statsd_pipeline(stat: str) -> tuple[str, Any] | None:
    """``stat`` as Airflow's statsd client would send it, and a pipeline of that client.

    ``(name, None)`` when its lists leave the name out; None when the metrics do not go through
    Airflow's own statsd client (another backend, or a subclass with its own ``timing``), when the
    name has a legacy name Airflow sends as well, or when anything here is not as Airflow 3.3 has
    it: the samples then go one by one through ``Stats``, which decides as it always does.
    """
    try:
        from airflow.sdk._shared.observability.metrics import stats as backend
        from airflow.sdk._shared.observability.metrics.statsd_logger import SafeStatsdLogger
        from airflow.sdk._shared.observability.metrics.validators import get_current_handler_stat_name_func

        logger = backend._get_backend()
        if not isinstance(logger, SafeStatsdLogger) or type(logger).timing is not SafeStatsdLogger.timing:
            return None
        if backend._get_legacy_stat_name_and_tags(stat, None)[0] is not None:
            return None
        name = get_current_handler_stat_name_func(logger.stat_name_handler, logger.statsd_influxdb_enabled)(
            stat
        )
        if not logger.metrics_validator.test(name):
            return name, None
        pipeline = logger.statsd.pipeline()
    except Exception:
        return None
    size = getattr(pipeline, "_maxudpsize", None)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 1:
        # Airflow 3.3 builds its client as StatsClient(host, port, prefix, ipv6), where statsd's
        # fourth parameter is the largest packet: False, so a pipeline would send a packet a line.
        pipeline._maxudpsize = STATSD_PACKET_BYTES
    return name, pipeline


def emit(event: str, /, **fields: Any) -> None:
    """Record an event as metrics and hand it to subscribers; never raises."""
    stats_client = stats()
    if stats_client is not None:
        try:
            _record(stats_client, event, fields)
        except Exception:  # metrics must never break a send
            log.debug("careflow: metric for %s failed", event, exc_info=True)
    with _lock:
        targets = list(_subscribers)
    for fn in targets:
        try:
            fn(event, **fields)
        except Exception:
            log.warning("careflow: event subscriber %r failed for %s", fn, event, exc_info=True)


def stats_incr(name: str, count: int = 1) -> None:
    """Increment one careflow counter; never raises."""
    stats_client = stats()
    if stats_client is None:
        return
    try:
        stats_client.incr(name, count)
    except Exception:
        log.debug("careflow: metric %s failed", name, exc_info=True)


def report_caches() -> None:
    """Send the cache hit and miss totals as gauges (``careflow.cache.<hits|misses>.<cache>``).

    The resilience caches count in Redis when it is configured (totals shared by every worker),
    otherwise per process; ``compiled_workflows`` and ``template_compile`` are the process'
    compiled-workflow and compiled-template caches.
    """
    stats_client = stats()
    if stats_client is None:
        return
    try:
        from careflow.resilience import cache_stats
        from careflow.snapshots import compile_cache_info
        from careflow.templates import cache_info

        totals = [(c["name"], c["hits"], c["misses"]) for c in cache_stats()]
        for name, info in (("compiled_workflows", compile_cache_info()), ("template_compile", cache_info())):
            totals.append((name, info["hits"], info["misses"]))
        for name, hits, misses in totals:
            stats_client.gauge(f"careflow.cache.hits.{part(name)}", float(hits))
            stats_client.gauge(f"careflow.cache.misses.{part(name)}", float(misses))
    except Exception:
        log.debug("careflow: cache metrics failed", exc_info=True)


def report_task_metrics(context: Any = None) -> None:
    """Task callback (success and failure): the cache gauges, from the process that used the caches."""
    report_caches()


def _from_resilience(event: str, **fields: Any) -> None:
    emit(event, **fields)


def _listen_to_resilience() -> None:
    try:
        from careflow.resilience import events
    except ImportError:
        return
    events.subscribe(_from_resilience)


_listen_to_resilience()
