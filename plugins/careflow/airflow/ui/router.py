"""Routes of the careflow view: the page under ``/ui/`` and its JSON under ``/api/``.

Included in careflow's FastAPI app, whose ``get_user`` dependency guards every route here, the
page included: in the browser Airflow's session cookie authenticates, elsewhere a bearer JWT.
What a route serves of a workflow, the user must be allowed to read in Airflow: that workflow's
DAG runs (:mod:`careflow.airflow.access`); routes across workflows leave out the others. Ids are
checked first (:mod:`careflow.airflow.ui.params`): a malformed one is a 422 whatever the workflow,
then a workflow careflow does not know is a 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from careflow.airflow import access
from careflow.airflow.ui import queries
from careflow.airflow.ui.params import (
    ExecutionId,
    NodeFilter,
    NodeId,
    PatientId,
    RunFilter,
    WorkflowFilter,
    WorkflowId,
    check_known_workflow,
    readable_workflow,
)

STATIC = Path(__file__).resolve().parent / "static"
#: The files the page is made of, and their media types: nothing else is served from the folder.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter()


def _engine() -> Any:
    from careflow.store.db import get_engine

    return get_engine()


def _compiled(workflow_id: str) -> Any:
    from careflow import settings

    return queries.load_compiled(settings.workflows_dir(), workflow_id)


def _file(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/ui/", include_in_schema=False)
def page() -> FileResponse:
    """The careflow view (a static page; its data comes from the routes below)."""
    return _file("index.html")


@router.get("/ui/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    """The page's script and stylesheet."""
    if name not in FILES:
        raise HTTPException(status_code=404, detail=f"no file {name!r} in the careflow view")
    return _file(name)


@router.get("/api/workflows/{workflow_id}/graph")
def workflow_graph(workflow_id: str = Depends(readable_workflow)) -> dict[str, Any]:
    """The published graph: nodes in topological columns, edges by handle."""
    compiled = _compiled(workflow_id)
    if compiled is None:
        raise HTTPException(status_code=404, detail=f"workflow {workflow_id!r} has no loadable snapshot")
    return queries.graph(compiled)


@router.get("/api/workflows/{workflow_id}/runs")
def workflow_runs(
    workflow_id: WorkflowId, limit: int = Query(50, ge=1, le=500), user: Any = Depends(access.get_user)
) -> list[dict[str, Any]]:
    """The runs that moved the workflow's executions, latest first."""
    check_known_workflow(user, workflow_id)
    return queries.runs(_engine(), workflow_id, limit)


@router.get("/api/workflows/{workflow_id}/counts")
def workflow_counts(
    workflow_id: WorkflowId, run_id: RunFilter = None, user: Any = Depends(access.get_user)
) -> dict[str, Any]:
    """Steps per node and status, messages per action node and status: of one run, or of all."""
    check_known_workflow(user, workflow_id)
    return queries.node_counts(_engine(), workflow_id, run_id)


@router.get("/api/workflows/{workflow_id}/nodes/{node_id}/steps")
def workflow_node_steps(
    workflow_id: WorkflowId,
    node_id: NodeId,
    run_id: RunFilter = None,
    limit: int = Query(100, ge=1, le=1000),
    user: Any = Depends(access.get_user),
) -> list[dict[str, Any]]:
    """The latest steps at one node: execution and patient ids, status, branch, reason, times."""
    check_known_workflow(user, workflow_id)
    return queries.node_steps(_engine(), workflow_id, node_id, run_id=run_id, limit=limit)


@router.get("/api/failures")
def recent_failures(
    workflow_id: WorkflowFilter = None,
    node_id: NodeFilter = None,
    run_id: RunFilter = None,
    limit: int = Query(100, ge=1, le=1000),
    user: Any = Depends(access.get_user),
) -> dict[str, Any]:
    """Failed and skipped steps, failed, expired, skipped and unknown messages, with reasons."""
    if workflow_id is not None:
        check_known_workflow(user, workflow_id)
        allowed = None
    else:
        allowed = access.readable(user, access.known_workflows())
    return queries.failures(
        _engine(), workflow_id=workflow_id, node_id=node_id, run_id=run_id, limit=limit, workflow_ids=allowed
    )


@router.get("/api/executions/{execution_id}")
def execution_trace(execution_id: ExecutionId, user: Any = Depends(access.get_user)) -> dict[str, Any]:
    """One execution's trace: nodes, times, branches, messages, and why each action was (not) sent."""
    found = queries.trace(_engine(), execution_id, _compiled)
    if found is None or not access.may_read_workflow(user, found["execution"]["workflow_id"]):
        # the same answer whether it does not exist or is not the user's to read
        raise HTTPException(status_code=404, detail=f"no execution {execution_id!r}")
    return found


@router.get("/api/patients/{patient_id}/executions")
def patient_executions(
    patient_id: PatientId, limit: int = Query(100, ge=1, le=1000), user: Any = Depends(access.get_user)
) -> list[dict[str, Any]]:
    """A patient's executions by patient id, latest first (of the workflows the user may read)."""
    allowed = access.readable(user, access.known_workflows())
    return queries.patient_executions(_engine(), patient_id, limit, workflow_ids=allowed)
