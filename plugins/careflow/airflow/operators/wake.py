"""``careflow_wake``: wait in the triggerer for the next parked execution, then start a wake run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator

from careflow.clock import CLOCK_KEY, is_simulated, now_for, parse_time
from careflow.compiler import CompiledWorkflow
from careflow.compiler.schedule import next_run_after

log = logging.getLogger(__name__)

#: How long past its moment a wait the triggerer has not ended is timed out by the scheduler, at
#: the least (the wake's wait ends at the next scheduled run; the action's breaker wait, this long
#: after the breaker's retry time).
TRIGGER_GRACE = timedelta(minutes=5)


class WakeOperator(BaseOperator):
    """The last task of every careflow DAG run.

    A delay or time window that ends before the next scheduled run must not wait for that run
    (a 10:00 reminder goes out at 10:00). This task finds the earliest parked execution; when it
    falls before the next scheduled run it defers in the triggerer until then (no worker slot is
    held) and starts a *wake run* of the same DAG, which advances everything due at that moment
    through the real node tasks. Later waits are left to the scheduled runs.

    In simulation (``careflow simulate``) it only reports the wake time: the simulator starts the
    wake run at that simulated time.
    """

    template_fields: Sequence[str] = ()
    ui_color = "#e5e7eb"

    def __init__(self, *, compiled: CompiledWorkflow, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 2)
        super().__init__(**kwargs)
        # A teardown without setups runs once every upstream task is done, whatever its state, and
        # Airflow leaves it out of the run's state: the run fails when a node task failed (or could
        # not run because one upstream of it failed), as operators read it, and this task still
        # schedules the next wait. Its own failure is alerted as a task failure.
        self.as_teardown()
        self.workflow_id = compiled.workflow_id
        self._compiled = compiled

    def _next(self, context: Any) -> tuple[datetime, datetime | None, datetime]:
        from careflow.engine.context import RunContext
        from careflow.engine.nodes import next_wake
        from careflow.store.db import get_engine

        conf = dict(context["dag_run"].conf or {})
        now = now_for(conf)
        ctx = RunContext(compiled=self._compiled, now=now, engine=get_engine(), run_id=context["run_id"])
        # Each task reads the wall clock when it starts: a wait may have ended since its node's task
        # ran, and is woken for at once (in simulation every task of a run has the run's time).
        since = None if is_simulated(conf) else _run_began(context, now)
        return now, next_wake(ctx, overdue_since=since), next_run_after(self._compiled, now)

    def execute(self, context: Any) -> dict[str, Any]:
        """Report the next wake and defer until it when it comes before the next scheduled run."""
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        now, wake, scheduled = self._next(context)
        result = {
            "now": now.isoformat(),
            "next_scheduled_run": scheduled.isoformat(),
            "next_wake": wake.isoformat() if wake and wake < scheduled else None,
            "parked_until": wake.isoformat() if wake else None,
        }
        self.log.info("careflow %s: %s", self.workflow_id, result)
        if wake is None or wake >= scheduled or is_simulated(context["dag_run"].conf):
            return result
        # A triggerer that is not running (or far behind) would leave this task deferred, and so
        # the run active, past the next scheduled run, which max_active_runs holds back: every
        # wait and every later day's message would stop there. The scheduler times the wait out
        # at the next scheduled run instead (resume_execution says why), and that run moves
        # everything due by then.
        self.defer(
            trigger=DateTimeTrigger(moment=wake),
            method_name="execute_complete",
            kwargs={"result": result},
            timeout=max(scheduled, wake + TRIGGER_GRACE) - now,
        )
        return result

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Resume after the wait; a wait the triggerer never ended fails this task, without retries."""
        from airflow.sdk.exceptions import AirflowFailException, TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout as exc:
            raise AirflowFailException(
                f"careflow {self.workflow_id}: Airflow's triggerer did not end the wait for the next "
                "parked execution before the next scheduled run (is the triggerer running?); that run "
                "moves every wait due by then, late but not lost"
            ) from exc

    def execute_complete(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> None:
        """Start the wake run (one per wake time: a second request for it is skipped)."""
        from airflow.sdk.exceptions import DagRunTriggerException

        wake = parse_time((result or {}).get("next_wake") or now_for(None))
        raise DagRunTriggerException(
            trigger_dag_id=self.dag_id,
            dag_run_id=f"careflow_wake__{wake.strftime('%Y%m%dT%H%M%S')}",
            conf={},
            logical_date=None,
            reset_dag_run=False,
            skip_when_already_exists=True,
            wait_for_completion=False,
            allowed_states=["success"],
            failed_states=["failed"],
            poke_interval=60,
            deferrable=False,
        )


def _run_began(context: Any, now: datetime) -> datetime:
    """When this DAG run began: its node tasks moved on everything due before then."""
    began = getattr(context["dag_run"], "start_date", None)
    if isinstance(began, datetime) and began.tzinfo is not None:
        return min(began, now)
    # Airflow sets a running DAG run's start date. Without one, ``now`` is the safe guess: every
    # wait still ahead is woken for, and one that fell due during the run is left to the next
    # run (late, never lost). An earlier guess could name a wait its node's task left overdue,
    # ask again for a wake run that exists, and hide the later waits; failing here would leave
    # all of them to the next scheduled run.
    log.warning(
        "careflow: DAG run %s has no start date; a wait due before now is left to a later run",
        context.get("run_id"),
    )
    return now


__all__ = ["CLOCK_KEY", "WakeOperator"]
