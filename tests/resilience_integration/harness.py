"""The action task across Airflow attempts and deferrals, without Airflow.

:func:`run_action_task` does what the scheduler and the triggerer do with one action task: run
:func:`~careflow.engine.nodes.process_node` with a fresh provider client and the breaker's gate
(as :class:`~careflow.airflow.operators.action.ActionOperator` does); when messages are left
pending and the operator would defer (breaker open or paused), sleep until the breaker's
``next_probe_at`` / ``paused_until``; otherwise count an Airflow retry and sleep the retry delay.
Every HTTP request the client makes is counted by status, lookups included (the fake provider's
own counters do not see lookups it refuses during an outage).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from careflow.airflow.operators.action import resume_at
from careflow.compiler import CompiledWorkflow
from careflow.engine.actions import worker_name
from careflow.engine.context import NodeReport, RunContext
from careflow.engine.nodes import process_node
from careflow.exceptions import ProviderConfigurationError
from careflow.providers.client import ProviderClient, SendResult
from careflow.resilience import BreakerConfig, CircuitBreaker, get_breaker
from careflow.store import tables
from engine.harness import Clinic, action, chain, compile_doc

UTC = timezone.utc
ACTION = "send"
CHANNEL = "kakao"

#: Short waits so an outage of a few seconds is ridden out in a few seconds.
FAST_BREAKER = BreakerConfig(
    window_seconds=10.0,
    min_calls=10,
    failure_rate_threshold=0.5,
    consecutive_failures=5,
    open_seconds=2.0,
    max_open_seconds=8.0,
    half_open_probes=2,
    probe_timeout_seconds=5.0,
)


class CountingClient(ProviderClient):
    """A provider client that counts its HTTP requests (sends and lookups) by answer."""

    def __init__(self, *args: Any, counts: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts = counts

    async def _post(self, session: Any, message: Any) -> SendResult:
        result = await super()._post(session, message)
        self.counts[f"post_{result.status_code or result.outcome.value}"] += 1
        return result

    async def _get(self, session: Any, key: str) -> SendResult | None:
        result = await super()._get(session, key)
        self.counts[f"get_{'404' if result is None else result.status_code or result.outcome.value}"] += 1
        return result


@dataclass
class TaskRun:
    """What happened to one action task from its first try to its end."""

    tries: int = 0
    deferrals: int = 0
    retries: int = 0
    seconds: float = 0.0
    recovered_after: float | None = None  # seconds from the start to the last message sent
    outcome: str = ""  # "success" | "retries_exhausted" | "configuration_error" | "timed_out"
    error: BaseException | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    try_seconds: list[float] = field(default_factory=list)  # how long each try's work took
    requests: Counter = field(default_factory=Counter)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def failed_requests(self) -> int:
        """Requests the provider answered with an error or never answered (lookups included)."""
        return sum(
            n
            for k, n in self.requests.items()
            if not k.endswith(("_202", "_200", "_404", "_409", "_not_sent"))
        )

    def reasons(self) -> Counter:
        total: Counter = Counter()
        for report in self.reports:
            total.update(report["reasons"])
        return total


def pending_workflow(workflow_id: str, **settings: Any) -> CompiledWorkflow:
    """trigger -> action: every enrolled execution is due at the action at once."""
    doc = chain(workflow_id, (ACTION, "action", action()), settings=settings or None)
    return compile_doc(doc)


def enroll(engine: Engine, compiled: CompiledWorkflow, patients: int, now: datetime) -> None:
    """``patients`` appointments completed an hour ago, enrolled by the trigger task of a run at ``now``."""
    clinic = Clinic()
    for i in range(patients):
        clinic.completed(f"p{i:04d}", now - timedelta(hours=1))
    clinic.load(engine)
    ctx = RunContext(compiled=compiled, now=now, engine=engine, run_id="scheduled__test")
    report = process_node(ctx, compiled.order[0])
    assert report.enrolled == patients, report.to_xcom()


def breaker_for(client_name: str, config: BreakerConfig = FAST_BREAKER) -> CircuitBreaker:
    """The breaker the action operator uses for this client and channel."""
    return get_breaker(f"{client_name}:{CHANNEL}", config)


def run_action_task(
    compiled: CompiledWorkflow,
    engine: Engine,
    server: Any,
    *,
    client_name: str,
    token: str | None = None,
    max_concurrency: int = 10,
    retry_delay: float = 1.0,
    cap_seconds: float = 60.0,
    breaker_config: BreakerConfig = FAST_BREAKER,
) -> TaskRun:
    """Run the action task like Airflow would until it succeeds, fails or ``cap_seconds`` pass."""
    run = TaskRun()
    retries_allowed = compiled.settings.retries
    started = time.monotonic()
    while True:
        run.tries += 1
        client = CountingClient(
            server.url,
            server.token if token is None else token,
            max_concurrency=max_concurrency,
            timeout=2.0,
            name=client_name,
            counts=run.requests,
        )
        breaker = breaker_for(client_name, breaker_config)
        ctx = RunContext(
            compiled=compiled,
            now=datetime.now(UTC),
            engine=engine,
            run_id="scheduled__test",
            worker=worker_name(),
            sender=client,
            gate=breaker.gate(),
            emit=lambda name, **fields: run.events.append((name, fields)),
        )
        began = time.monotonic()
        try:
            report: NodeReport = process_node(ctx, ACTION)
        except ProviderConfigurationError as exc:  # the operator fails the task, no retry
            run.outcome, run.error = "configuration_error", exc
            break
        finally:
            run.try_seconds.append(time.monotonic() - began)
        run.reports.append(report.to_xcom())
        if report.sent:
            run.recovered_after = time.monotonic() - started
        if not report.pending:
            run.outcome = "success"
            break
        if time.monotonic() - started > cap_seconds:
            run.outcome = "timed_out"
            break
        retry_at = resume_at(breaker, report)
        if retry_at is not None:  # the operator defers in the triggerer until then
            run.deferrals += 1
            time.sleep(max(0.0, retry_at - time.time()) + 0.05)
            continue
        run.retries += 1  # AirflowException: one of the task's retries
        if run.retries > retries_allowed:
            run.outcome = "retries_exhausted"
            break
        time.sleep(retry_delay)
    run.seconds = time.monotonic() - started
    return run


def ledger_counts(engine: Engine, workflow_id: str) -> dict[str, int]:
    """careflow_messages rows of the workflow by status."""
    m = tables.messages
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.c.status, func.count()).where(m.c.workflow_id == workflow_id).group_by(m.c.status)
        )
        return {status: n for status, n in rows}


def step_counts(engine: Engine, workflow_id: str, node_id: str = ACTION) -> dict[str, int]:
    """careflow_steps rows at ``node_id`` by status."""
    s = tables.steps
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.c.status, func.count())
            .where(s.c.workflow_id == workflow_id, s.c.node_id == node_id)
            .group_by(s.c.status)
        )
        return {status: n for status, n in rows}
