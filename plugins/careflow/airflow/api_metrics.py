"""``GET /careflow/api/metrics``: the ``careflow metrics`` report over HTTP.

The router is included in careflow's app (:mod:`careflow.airflow.api`), whose dependencies
authenticate every route with Airflow's ``get_user``: anonymous calls get 401. The report holds
only the workflows whose DAG runs the user may read; one workflow careflow does not know is a 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from careflow.airflow import access
from careflow.airflow.ui.params import check_known_workflow
from careflow.workflow.models import ID_PATTERN

router = APIRouter()


@router.get("/api/metrics")
def metrics(
    workflow: str | None = Query(None, pattern=ID_PATTERN, description="one workflow id (default: all)"),
    since: str | None = Query(None, description="only runs from this date or ISO time on"),
    user: Any = Depends(access.get_user),
) -> dict[str, Any]:
    """Runs, success and error rates, durations (mean, median, P95) and messages per workflow and node."""
    from careflow.metrics_report import build_report, parse_since

    try:
        moment = parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"since: {exc}") from exc
    if workflow is not None:
        check_known_workflow(user, workflow)
    report = build_report(workflow, moment)
    allowed = access.readable(user, (item["workflow_id"] for item in report["workflows"]))
    report["workflows"] = [item for item in report["workflows"] if item["workflow_id"] in allowed]
    return report
