"""The action node: send one message per execution, exactly once, breaker-aware."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

from careflow.airflow.operators.base import CareflowNodeOperator
from careflow.airflow.operators.wake import TRIGGER_GRACE
from careflow.exceptions import ConfigurationError, ConnectionMissing, ProviderConfigurationError
from careflow.settings import REDIS_CONN_ID

#: The pool that caps concurrent send tasks against the messaging provider (created by setup).
PROVIDER_POOL = "careflow_messaging"


class ActionOperator(CareflowNodeOperator):
    """Render, check consent and channel, dedupe in the ledger, send and record each message.

    Sends go out concurrently inside the task up to the provider connection's
    ``max_concurrency``; the task runs in the ``careflow_messaging`` pool. While the provider's
    circuit breaker is open the task stops sending, leaves the unsent messages pending and
    defers in the triggerer until the breaker may half-open. Transient failures left pending
    fail the attempt so that Airflow retries it with exponential backoff; permanent failures are
    recorded per patient and never fail the others. A messaging connection that is unusable, or
    credentials the provider refuses, fail the task at once: no retry would fix them. A missing
    connection alerts at once and the task keeps its retries: Airflow's secrets lookup says
    "not defined" also of a backend that did not answer.
    """

    ui_color = "#fecaca"
    node_type = "action"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pool", PROVIDER_POOL)
        super().__init__(**kwargs)
        self.channel = self._compiled.node(self.careflow_node_id).config.channel

    def execute(self, context: Any) -> dict[str, Any]:
        """Send every due message of this node, then defer or retry what is left.

        The alerts raised meanwhile (a breaker opening, Redis lost) come from the send process's
        reader thread and the send threads too: the connections they need are read once, here, on
        the task's main thread (``connections_read_once``).
        """
        from careflow import settings

        held = [settings.ALERTS_CONN_ID]
        if settings.redis_connection_used():
            held.append(settings.REDIS_CONN_ID)
        with settings.connections_read_once(*held):
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from careflow.engine.nodes import process_node

        ctx = self.run_context(context)
        breaker = None
        if not ctx.dry_run:
            from careflow.providers.hook import MessagingHook

            hook = MessagingHook()
            try:
                ctx.sender = hook.get_client()
            except ConfigurationError as exc:
                raise self._connection_problem(ctx, hook.careflow_conn_id, exc) from exc
            try:
                breaker = _breaker(f"{getattr(ctx.sender, 'name', 'default')}:{self.channel}")
            except ConfigurationError as exc:  # careflow_redis names a setup that cannot work
                raise self._connection_problem(ctx, REDIS_CONN_ID, exc) from exc
            ctx.gate = breaker.gate() if breaker is not None else None
            ctx.sent_keys = _sent_keys()
        self._sending = True
        try:
            report = process_node(ctx, self.careflow_node_id)
        except ProviderConfigurationError as exc:
            self._configuration_error(ctx, problem=exc.problem, error=str(exc))
            raise AirflowFailException(str(exc)) from exc
        finally:
            self._sending = False
        self.log_report(report)
        if report.pending:
            retry_at = resume_at(breaker, report)
            if retry_at is not None and not ctx.simulated:
                return self._defer_until(retry_at, report.to_xcom())
            raise AirflowException(
                f"{report.pending} message(s) of node {self.careflow_node_id} are still pending "
                f"({dict(report.reasons)}); the next attempt sends them"
            )
        return report.to_xcom()

    def on_kill(self) -> None:
        """Airflow stops the task (its SIGTERM: the task was marked failed, or cleared while it ran).

        While messages are being sent, the sending stops where it is: no request is written after
        it, the requests on the wire are answered and recorded, and every other message claimed
        goes back to pending, so the next attempt takes them at once instead of after the claim's
        lease. Airflow kills the task 5 seconds after its SIGTERM; a batch with a request still
        unanswered then is left claimed, as by a killed worker. Outside the sending (and in any
        thread but the main one, where Airflow's handler does not run) nothing is raised.
        """
        if getattr(self, "_sending", False) and threading.current_thread() is threading.main_thread():
            from airflow.sdk.exceptions import AirflowTaskTerminated

            self._sending = False  # once: a second signal does not cut the recording short
            raise AirflowTaskTerminated(
                f"careflow {self.workflow_id}/{self.careflow_node_id}: stopped by Airflow while sending; "
                "what was handed to the provider is recorded, the rest stays pending"
            )

    def _configuration_error(self, ctx: Any, **problem: Any) -> None:
        """This node's ``provider_configuration_error`` event (an alert); ``problem`` says what."""
        ctx.event(
            "provider_configuration_error",
            node_id=self.careflow_node_id,
            channel=self.channel,
            run_id=ctx.run_id,
            **problem,
        )

    def _connection_problem(self, ctx: Any, conn_id: str, exc: ConfigurationError) -> Exception:
        """What stops the task when its messaging connection cannot be used; an alert says so now.

        Nothing has been claimed yet: the node's messages stay due. A connection that is defined
        but unusable (no host, a value the client refuses) fails the task at once (retries would
        find it as it is). A connection found nowhere may be a secrets backend that failed to
        answer (Airflow's lookup reports both alike): the attempt fails and Airflow retries it,
        so that a backend's bad minute does not leave the messages to the next run.
        """
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        missing = isinstance(exc, ConnectionMissing)
        self._configuration_error(
            ctx,
            connection=conn_id,
            problem="connection_missing" if missing else "connection_unusable",
            error=str(exc),
        )
        if missing:
            return AirflowException(
                f"{exc}; node {self.careflow_node_id} sent nothing and its messages stay due: the task's "
                "retries send them once the connection is added (or clear this task then)"
            )
        return AirflowFailException(
            f"{exc}; node {self.careflow_node_id} sent nothing and its messages stay due: the next run "
            "sends them once the connection is fixed (or clear this task then)"
        )

    def _defer_until(self, retry_at: float, counts: dict[str, Any]) -> dict[str, Any]:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        moment = datetime.fromtimestamp(retry_at, tz=timezone.utc)
        self.log.info(
            "careflow %s/%s: breaker open, waiting until %s in the triggerer",
            self.workflow_id,
            self.careflow_node_id,
            moment,
        )
        # The scheduler ends a wait that a triggerer not running never ends (resume_execution).
        self.defer(
            trigger=DateTimeTrigger(moment=moment),
            method_name="execute_complete",
            timeout=moment + TRIGGER_GRACE - datetime.now(timezone.utc),
        )
        return counts

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        """Resume after the breaker's wait: send what is still pending."""
        return self.execute(context)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Resume after the breaker's wait, also where the triggerer never ended it (the scheduler
        timed it out): the wait is over either way."""
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            from careflow.airflow import observability

            self.log.warning(
                "careflow %s/%s: Airflow's triggerer did not end the breaker's wait %s after its end "
                "(is the triggerer running?): sending resumes without it",
                self.workflow_id,
                self.careflow_node_id,
                TRIGGER_GRACE,
            )
            observability.emit(
                "breaker_wait_not_ended",
                workflow_id=self.workflow_id,
                node_id=self.careflow_node_id,
                run_id=context.get("run_id"),
                grace_s=TRIGGER_GRACE.total_seconds(),
            )
            return self.execute(context)


def _sent_keys() -> Any:
    try:
        from careflow.resilience import SENT_KEYS, SENT_KEYS_TTL, get_cache
    except ImportError:
        return None
    return get_cache(SENT_KEYS, SENT_KEYS_TTL)


def _breaker(name: str) -> Any:
    try:
        from careflow.resilience import get_breaker
    except ImportError:
        return None
    return get_breaker(name)


def resume_at(breaker: Any, report: Any) -> float | None:
    """When a task that left messages pending should send again without spending a retry.

    While the breaker is open (or a 429 paused the provider) that is when it may let sends
    through. When this process's breaker lets sends through, ``report.retry_at`` decides: the
    wait the breaker gave when it held messages back during the attempt (its half-open probes may
    have succeeded since), or the wait of the send process's own breaker when Redis and the
    machine's breaker file were both out of reach and each process kept its own. None: the
    pending messages failed; Airflow retries.
    """
    retry_at = _breaker_retry_at(breaker)
    if retry_at is None and breaker is not None:
        retry_at = getattr(report, "retry_at", None)
    return retry_at


#: The shortest wait a deferral asks for: a time already past (a breaker whose state could not
#: move on) must not turn into a defer-resume loop.
MIN_DEFER_SECONDS = 5.0


def _breaker_retry_at(breaker: Any) -> float | None:
    if breaker is None:
        return None
    until = breaker.snapshot().sends_resume_at()
    return None if until is None else max(until, time.time() + MIN_DEFER_SECONDS)
