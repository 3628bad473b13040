"""The plugin's listener that creates a missing ``careflow_messaging`` pool (see :mod:`careflow.airflow.setup`)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from careflow.airflow.setup import ensure_pool

log = logging.getLogger(__name__)


class PoolGuard:
    """The plugin's listener: an Airflow component starting a job makes sure the pool exists."""

    @hookimpl
    def on_starting(self, component: Any) -> None:
        from airflow.jobs.job import Job

        if not isinstance(component, Job):  # a task runner: it has no metadata DB to write to
            return
        try:
            ensure_pool()
        except Exception:  # a database not migrated yet, or unreachable: the component says so itself
            log.warning("careflow: could not make sure the careflow_messaging pool exists", exc_info=True)


pool_guard = PoolGuard()
