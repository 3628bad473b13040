"""Who may read or change what under ``/careflow``: Airflow's auth manager decides.

A workflow's executions, steps and messages belong to its DAG (``careflow__<workflow id>``): a
user reads them where the auth manager lets them read that DAG's runs. Routes that list across
workflows show only the workflows the user may read. Circuit breakers guard the messaging
provider, whose sends the ``careflow_messaging`` pool caps: reading them takes what reading any
DAG takes, resetting one takes the right to change that pool.

On a multi-team Airflow (``[core] multi_team``) a DAG belongs to the team of its bundle and the
pool to its own team; the auth manager is told that team, as Airflow's own API routes
(``requires_access_dag``, ``requires_access_pool``) tell it, so a user of another team is refused.

The sign-in (Airflow's revoked tokens), the team lookups and, with some auth managers, the
decision itself read Airflow's metadata database: when it fails, they raise
:class:`~careflow.exceptions.AirflowDatabaseError` from its error, so that the 503 names that
database and not careflow's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Depends, HTTPException
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from careflow.compiler.graph import dag_id_for
from careflow.exceptions import AirflowDatabaseError

#: The pool whose edit right resets a breaker (``careflow setup`` creates it).
POOL = "careflow_messaging"


@contextmanager
def airflow_database() -> Iterator[None]:
    """A call into Airflow that reads its metadata database: that database failing, an AirflowDatabaseError."""
    try:
        yield
    except (DBAPIError, PoolTimeout) as exc:
        raise AirflowDatabaseError(f"Airflow's metadata database failed: {type(exc).__name__}") from exc


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import get_user as airflow_get_user

    # FastAPI reads the parameters of the function wrapped (``__wrapped__``): Airflow's own.
    @functools.wraps(airflow_get_user)
    async def get_user(*args: Any, **kwargs: Any) -> Any:
        with airflow_database():  # a bearer token is looked up among the revoked ones
            return await airflow_get_user(*args, **kwargs)

    return get_user


get_user = _user_dependency()


def _manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def _may_read_dag(user: Any, dag_id: str | None, team_name: str | None) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    details = DagDetails(id=dag_id, team_name=team_name) if dag_id is not None else None
    with airflow_database():  # an auth manager may keep its users and roles there (FAB's does)
        return bool(
            _manager().is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user
            )
        )


def may_read_workflow(user: Any, workflow_id: str | None) -> bool:
    """Whether ``user`` may read the runs of ``workflow_id``'s DAG (None: of DAGs at all)."""
    if workflow_id is None:
        return _may_read_dag(user, None, None)
    from airflow.models.dag import DagModel

    dag_id = dag_id_for(workflow_id)
    # None without a team (or a DAG row yet); cached by Airflow for [core] team_name_cache_ttl.
    with airflow_database():
        team_name = DagModel.get_team_name(dag_id)
    return _may_read_dag(user, dag_id, team_name)


def readable(user: Any, workflow_ids: Iterable[str]) -> set[str]:
    """The workflows of ``workflow_ids`` whose runs ``user`` may read."""
    from airflow.models.dag import DagModel

    dag_ids = {wid: dag_id_for(wid) for wid in set(workflow_ids)}
    if not dag_ids:
        return set()
    # One query for every DAG's team; a DAG missing from it has no team.
    with airflow_database():
        teams = DagModel.get_dag_id_to_team_name_mapping(list(dag_ids.values()))
    return {wid for wid, dag_id in dag_ids.items() if _may_read_dag(user, dag_id, teams.get(dag_id))}


def check_workflow(user: Any, workflow_id: str) -> None:
    """403 unless ``user`` may read ``workflow_id``'s runs."""
    if not may_read_workflow(user, workflow_id):
        raise HTTPException(status_code=403, detail=f"not allowed to read workflow {workflow_id!r}")


def any_dag_reader(user: Any = Depends(get_user)) -> None:
    """Dependency of routes about every workflow at once (breakers, caches): reading DAG runs at all."""
    if not may_read_workflow(user, None):
        raise HTTPException(status_code=403, detail="not allowed to read DAG runs")


def pool_editor(user: Any = Depends(get_user)) -> None:
    """Dependency of routes that change how careflow sends: the right to change the messaging pool."""
    from airflow.api_fastapi.auth.managers.models.resource_details import PoolDetails
    from airflow.configuration import conf
    from airflow.models.pool import Pool

    with airflow_database():
        # As requires_access_pool: the pool's team is looked up only when teams are on.
        team_name = Pool.get_team_name(POOL) if conf.getboolean("core", "multi_team") else None
        details = PoolDetails(name=POOL, team_name=team_name)
        allowed = _manager().is_authorized_pool(method="PUT", details=details, user=user)
    if not allowed:
        raise HTTPException(status_code=403, detail=f"not allowed to change the {POOL} pool")


def known_workflows() -> set[str]:
    """Every workflow careflow knows of: its published versions and its snapshot files."""
    from careflow.publishing import list_workflows

    return {item.workflow_id for item in list_workflows()}
