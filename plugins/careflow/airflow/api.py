"""careflow's HTTP API, mounted by the plugin at ``/careflow`` on Airflow's api-server.

Airflow mounts plugin apps without authentication: every route here depends on Airflow's own
``get_user`` (a JWT in the ``Authorization: Bearer`` header or Airflow's session cookie), so an
anonymous call gets 401 on every route; and each asks Airflow's auth manager whether this user
may read or change what it serves (:mod:`careflow.airflow.access`), 403 when not.

When careflow's database fails a request, the answer is a 503 whose detail names the problem
(its tables are missing, it is unreachable) and what to do, never the database's URL or the
driver's text: those go to the api-server's log. When Airflow's metadata database fails one (the
sign-in and the access checks read it), the 503 names that database instead. No JSON answer is
kept by a browser or a proxy (``Cache-Control: no-store``): they carry patients' ids.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from careflow.airflow import access
from careflow.airflow import ui as careflow_ui
from careflow.airflow.api_metrics import router as metrics_router
from careflow.exceptions import AirflowDatabaseError, CareflowError, ConfigurationError
from careflow.store.db import database_problem_kind, what_failed

log = logging.getLogger(__name__)


get_user = access.get_user

app = FastAPI(
    title="careflow",
    description="careflow workflows, circuit breakers and caches.",
    dependencies=[Depends(get_user)],
    # FastAPI adds /docs, /redoc and /openapi.json outside the app's dependencies: anonymous
    # callers would read them, so they are off.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.include_router(metrics_router)
app.include_router(careflow_ui.router)


#: Set on ``GET /api/workflows`` when careflow's database could not be read (the snapshots are listed).
DATABASE_PROBLEM_HEADER = "X-Careflow-Database-Problem"
#: Set on ``GET /api/workflows`` when the workflows directory could not be listed (no snapshot is known).
SNAPSHOTS_PROBLEM_HEADER = "X-Careflow-Snapshots-Problem"
SNAPSHOTS_UNLISTED = "the api-server may not list careflow's workflows directory: its log says why"

#: What a user is told of careflow's database failing; what failed, and where, goes to the log.
TABLES_MISSING = "careflow's tables are missing: run `careflow db upgrade`"
SCHEMA_REFUSED = (
    "careflow's database does not let the api-server's role use the schema of its tables: the "
    "api-server's log says what to grant"
)
UNREACHABLE = "careflow's database is unreachable"
DATABASE_FAILED = "careflow's database could not answer: the api-server's log says why"
MISCONFIGURED = "careflow is not configured correctly: the api-server's log says why"
#: Where "unreachable" would mislead, by the kind of problem careflow's engine tagged a driver error
#: with (``store.db._PROBLEMS``): a read's sort spilling to a full disk, an SQLite file the
#: api-server's user may not open or another program keeps locked, a role without privileges on
#: careflow's tables. The log names the database and what to do.
DATABASE_PROBLEMS = {
    "full": "careflow's database has no space left: the api-server's log says where",
    "file": "careflow's database file cannot be opened: the api-server's log says why",
    "locked": "careflow's database file stayed locked by another program: the api-server's log says what may hold it",
    "denied": "careflow's database refused the api-server's role: the api-server's log says what to grant",
}

#: What a user is told of Airflow's metadata database failing where the sign-in and the access checks read it.
AIRFLOW_TABLES_MISSING = "Airflow's metadata database lacks tables: run `airflow db migrate`"
AIRFLOW_UNREACHABLE = "Airflow's metadata database is unreachable: the api-server's log says why"
AIRFLOW_DATABASE_FAILED = "Airflow's metadata database could not answer: the api-server's log says why"


def _driver_error(exc: BaseException) -> BaseException:
    """The error behind an AirflowDatabaseError (raised from a DBAPIError or a PoolTimeout by
    ``access.airflow_database``), else ``exc`` itself."""
    return exc.__cause__ if isinstance(exc, AirflowDatabaseError) and exc.__cause__ is not None else exc


def database_problem(exc: BaseException) -> str:
    """The phrase that tells a user why careflow's database, or Airflow's, failed with ``exc``, without its URL."""
    from careflow.publishing import missing_table

    airflow = isinstance(exc, AirflowDatabaseError)  # the sign-in or an access check failed
    if airflow:
        tables, unreachable, failed = AIRFLOW_TABLES_MISSING, AIRFLOW_UNREACHABLE, AIRFLOW_DATABASE_FAILED
        exc = _driver_error(exc)
    else:
        tables, unreachable, failed = TABLES_MISSING, UNREACHABLE, DATABASE_FAILED
        # careflow_metrics (tables_required) turns a missing table into a ConfigurationError naming the database.
        if isinstance(exc, ConfigurationError) and isinstance(exc.__cause__, DBAPIError):
            exc = exc.__cause__
    if isinstance(exc, DBAPIError):
        if missing_table(exc) is not None:
            return tables
        kind = None if airflow else database_problem_kind(exc)
        if kind in DATABASE_PROBLEMS:
            return DATABASE_PROBLEMS[kind]
        if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
            return unreachable
        return failed
    if isinstance(exc, PoolTimeout):  # no connection came free in time
        return unreachable
    return failed if airflow else MISCONFIGURED  # a ConfigurationError: careflow_db is not a usable URL, say


async def _service_unavailable(request: Request, exc: Exception) -> JSONResponse:
    detail = database_problem(exc)
    # The route's template, not its path: a path may carry a patient's id.
    route = getattr(request.scope.get("route"), "path", "?")
    error = _driver_error(exc)  # for Airflow's database, the log names the driver's error
    # careflow's database named (password hidden) where it is itself the problem, with what is on
    # disk for the embedded SQLite (the api-server's user may not write its -shm file, say).
    detail, said = _reached(detail, what_failed(error))
    log.warning(
        "careflow: %s %s answered 503 (%s): %s",
        request.method,
        route,
        detail,
        said,
        exc_info=detail in (DATABASE_FAILED, MISCONFIGURED, AIRFLOW_DATABASE_FAILED),
    )
    return JSONResponse(status_code=503, content={"detail": detail})


def _reached(detail: str, said: str) -> tuple[str, str]:
    """``detail`` and what the log says of it, but :data:`SCHEMA_REFUSED` and the GRANT it needs
    where careflow's tables look missing because they are in a schema the role may not use (asked
    of the database once, on this error's path only)."""
    if detail != TABLES_MISSING:
        return detail, said
    from careflow.store.db import get_engine
    from careflow.store.migrations import schema_out_of_reach

    try:
        engine = get_engine()
        with engine.connect() as conn:
            out_of_reach = schema_out_of_reach(conn, engine)
    except Exception:  # that cannot be asked either: the 503 stands as it is
        return detail, said
    return (detail, said) if out_of_reach is None else (SCHEMA_REFUSED, out_of_reach)


for _failure in (DBAPIError, PoolTimeout, ConfigurationError, AirflowDatabaseError):
    app.add_exception_handler(_failure, _service_unavailable)


@app.middleware("http")
async def _not_stored(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """``Cache-Control: no-store`` on every answer that sets none (the page's files say ``no-cache``)."""
    response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _listing_problem(error: Exception | None) -> str:
    """:func:`database_problem` for why ``read_workflows`` listed the snapshots only."""
    # Its CareflowErrors are careflow's own (tables missing, careflow_db unusable), its driver
    # errors tagged with what is wrong with the database; anything else is the database not answering.
    if not isinstance(error, (CareflowError, DBAPIError)):
        return UNREACHABLE
    return _reached(database_problem(error), "")[0]


@app.get("/api/workflows")
def workflows(response: Response, user: Any = Depends(get_user)) -> list[dict[str, Any]]:
    """Published workflows the user may read: id, version, status, validation state and snapshot problems.

    When careflow's database cannot be read, the snapshots on disk are listed and the
    ``X-Careflow-Database-Problem`` header says why in a phrase of :func:`database_problem`.
    """
    from careflow.publishing import read_workflows

    listed = read_workflows()
    if listed.database_problem:
        log.warning("careflow: GET /api/workflows lists the snapshots only: %s", listed.database_problem)
        response.headers[DATABASE_PROBLEM_HEADER] = _listing_problem(listed.database_error)
    if listed.snapshots_problem:
        log.warning("careflow: GET /api/workflows knows no snapshot: %s", listed.snapshots_problem)
        response.headers[SNAPSHOTS_PROBLEM_HEADER] = SNAPSHOTS_UNLISTED
    allowed = access.readable(user, (item.workflow_id for item in listed.workflows))
    return [item.to_dict() for item in listed.workflows if item.workflow_id in allowed]


@app.get("/api/breakers", dependencies=[Depends(access.any_dag_reader)])
def breakers() -> list[dict[str, Any]]:
    """Every known circuit breaker: state, failure rate, next probe time."""
    from careflow.resilience import list_breakers

    return [asdict(snap) for snap in list_breakers()]


@app.post("/api/breakers/{name}/reset", dependencies=[Depends(access.pool_editor)])
def reset_breaker(name: str, user: Any = Depends(get_user)) -> dict[str, Any]:
    """Close a breaker by hand; who and when is recorded in its transitions."""
    from careflow.resilience import get_breaker, list_breakers

    if name not in {snap.name for snap in list_breakers()}:
        raise HTTPException(status_code=404, detail=f"no circuit breaker named {name!r}")
    who = getattr(user, "get_name", lambda: "unknown")()
    breaker = get_breaker(name)
    breaker.reset(by=str(who))
    log.info("careflow: breaker %s reset by %s", name, who)
    return {
        "name": name,
        "reset_by": who,
        "at": datetime.now(timezone.utc).isoformat(),
        **asdict(breaker.snapshot()),
    }


@app.get("/api/cache", dependencies=[Depends(access.any_dag_reader)])
def cache() -> dict[str, Any]:
    """Hit and miss counts per cache, and this process' compiled-workflow and compiled-template caches."""
    from careflow.resilience import cache_stats
    from careflow.snapshots import compile_cache_info
    from careflow.templates import cache_info

    return {"caches": cache_stats(), "compiled_workflows": compile_cache_info(), "templates": cache_info()}
