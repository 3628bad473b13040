"""The one clock the engine asks for "now".

In production it is the wall clock. In simulation (``careflow simulate``) the DAG run's conf
carries ``careflow_simulated`` and ``careflow_clock``: the simulated time of that run, so the same
DAG and operators run a month of a workflow in seconds. Other runs' conf cannot move the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

CLOCK_KEY = "careflow_clock"
SIMULATED_KEY = "careflow_simulated"
#: In a simulated run's conf: record the messages as sent without sending them.
DRY_RUN_KEY = "careflow_dry_run"
#: How an execution enrolled by a simulated run names that run: ``careflow simulate`` refuses a
#: database where a workflow has executions of other runs (its real ones).
SIMULATED_RUN_PREFIX = "careflow_sim_"


def enrolling_run_id(run_id: str | None, simulated: bool) -> str | None:
    """The run id an execution records: a simulated run's carries :data:`SIMULATED_RUN_PREFIX`."""
    if simulated and run_id is not None and not run_id.startswith(SIMULATED_RUN_PREFIX):
        return SIMULATED_RUN_PREFIX + run_id
    return run_id


def wall_clock() -> datetime:
    """Aware UTC now."""
    return datetime.now(timezone.utc)


def parse_time(value: str | datetime) -> datetime:
    """An aware UTC datetime from an ISO string or datetime (naive means UTC)."""
    moment = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def simulated_conf(moment: datetime, *, dry_run: bool) -> dict[str, Any]:
    """The conf of a simulated run at ``moment`` (what ``careflow simulate`` gives each run)."""
    return {CLOCK_KEY: moment.isoformat(), SIMULATED_KEY: True, DRY_RUN_KEY: dry_run}


def is_simulated(conf: Mapping[str, Any] | None) -> bool:
    """True for a run started by ``careflow simulate`` (nothing waits for real there)."""
    return bool(conf) and bool(conf.get(SIMULATED_KEY))  # type: ignore[union-attr]


def now_for(conf: Mapping[str, Any] | None) -> datetime:
    """The run's "now": the simulated time of a simulated run, else the wall clock.

    A clock in the conf of any other run (a manual run given one) is not followed: a production
    run sends real messages, and does it at the real time. A run whose conf says it is simulated
    is refused (ConfigurationError) in a process that does not run simulations
    (``[careflow] allow_simulated_runs``): only ``careflow simulate`` starts them.
    """
    if is_simulated(conf):
        from careflow import settings
        from careflow.exceptions import ConfigurationError

        if not settings.allow_simulated_runs():
            raise ConfigurationError(
                f"this run's conf asks for a simulated run ({SIMULATED_KEY}), which only `careflow "
                "simulate` starts: [careflow] allow_simulated_runs is off in this process, so the run "
                "is refused rather than moving real executions on a made-up clock"
            )
        if conf and conf.get(CLOCK_KEY):
            return parse_time(conf[CLOCK_KEY])
    return wall_clock()
