"""careflow's HTTP API, mounted by the plugin at ``/careflow`` on Airflow's api-server.

Airflow mounts plugin apps without authentication: every route here depends on Airflow's own
``get_user`` (a JWT in the ``Authorization: Bearer`` header or Airflow's session cookie), so an
anonymous call gets 401 on every route; and each asks Airflow's auth manager whether this user
may read or change what it serves (:mod:`careflow.airflow.access`), 403 when not.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response

from careflow.airflow import access
from careflow.airflow import ui as careflow_ui
from careflow.airflow.api_metrics import router as metrics_router

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


@app.get("/api/workflows")
def workflows(response: Response, user: Any = Depends(get_user)) -> list[dict[str, Any]]:
    """Published workflows the user may read: id, version, status, validation state and snapshot problems.

    When careflow's database cannot be read, the snapshots on disk are listed and the
    ``X-Careflow-Database-Problem`` header says why.
    """
    from careflow.publishing import read_workflows

    listed = read_workflows()
    if listed.database_problem:
        response.headers[DATABASE_PROBLEM_HEADER] = listed.database_problem.encode(
            "ascii", "replace"
        ).decode()[:500]
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
