"""Who may read or change what under ``/careflow``: Airflow's auth manager decides.

A workflow's executions, steps and messages belong to its DAG (``careflow__<workflow id>``): a
user reads them where the auth manager lets them read that DAG's runs. Routes that list across
workflows show only the workflows the user may read. Circuit breakers guard the messaging
provider, whose sends the ``careflow_messaging`` pool caps: reading them takes what reading any
DAG takes, resetting one takes the right to change that pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import Depends, HTTPException, Request

from careflow.compiler.graph import dag_id_for

#: The pool whose edit right resets a breaker (``careflow setup`` creates it).
POOL = "careflow_messaging"


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


get_user = _user_dependency()


def _manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def may_read_workflow(user: Any, workflow_id: str | None) -> bool:
    """Whether ``user`` may read the runs of ``workflow_id``'s DAG (None: of DAGs at all)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    details = DagDetails(id=dag_id_for(workflow_id)) if workflow_id is not None else None
    return bool(
        _manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user
        )
    )


def readable(user: Any, workflow_ids: Iterable[str]) -> set[str]:
    """The workflows of ``workflow_ids`` whose runs ``user`` may read."""
    return {wid for wid in set(workflow_ids) if may_read_workflow(user, wid)}


def check_workflow(user: Any, workflow_id: str) -> None:
    """403 unless ``user`` may read ``workflow_id``'s runs."""
    if not may_read_workflow(user, workflow_id):
        raise HTTPException(status_code=403, detail=f"not allowed to read workflow {workflow_id!r}")


def workflow_reader(request: Request, user: Any = Depends(get_user)) -> None:
    """Dependency of routes with a ``workflow_id`` path parameter: reading that workflow's runs."""
    check_workflow(user, request.path_params["workflow_id"])


def any_dag_reader(user: Any = Depends(get_user)) -> None:
    """Dependency of routes about every workflow at once (breakers, caches): reading DAG runs at all."""
    if not may_read_workflow(user, None):
        raise HTTPException(status_code=403, detail="not allowed to read DAG runs")


def pool_editor(user: Any = Depends(get_user)) -> None:
    """Dependency of routes that change how careflow sends: the right to change the messaging pool."""
    from airflow.api_fastapi.auth.managers.models.resource_details import PoolDetails

    if not _manager().is_authorized_pool(method="PUT", details=PoolDetails(name=POOL), user=user):
        raise HTTPException(status_code=403, detail=f"not allowed to change the {POOL} pool")


def known_workflows() -> set[str]:
    """Every workflow careflow knows of: its published versions and its snapshot files."""
    from careflow.publishing import list_workflows

    return {item.workflow_id for item in list_workflows()}
