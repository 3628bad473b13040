"""``GET /careflow/api/metrics``: the ``careflow metrics`` report over HTTP.

The router is included in careflow's app (:mod:`careflow.airflow.api`), whose dependencies
authenticate every route with Airflow's ``get_user``: anonymous calls get 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

router = APIRouter()


@router.get("/api/metrics")
def metrics(
    workflow: str | None = Query(None, description="one workflow id (default: all)"),
    since: str | None = Query(None, description="only runs from this date or ISO time on"),
) -> dict[str, Any]:
    """Runs, success and error rates, durations (mean, median, P95) and messages per workflow and node."""
    from careflow.metrics_report import build_report, parse_since

    try:
        moment = parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"since: {exc}") from exc
    return build_report(workflow, moment)
