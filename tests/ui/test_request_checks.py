"""Ids are checked before they reach a database, and a workflow careflow does not know is a 404.

Every parameter is checked before the workflow is: a malformed one is a 422 whatever the workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from .conftest import WORKFLOW

WF = f"/api/workflows/{WORKFLOW}"
NUL = "a\x00b"


@pytest.fixture
def published(engine: Engine, workflows_dir: Path) -> Path:
    """implant-aftercare published (a snapshot and a version in the database), never run; its snapshot."""
    from careflow.publishing import publish_paths
    from careflow.snapshots import snapshot_path
    from support import EXAMPLES

    [result] = publish_paths([EXAMPLES / f"{WORKFLOW}.json"], workflows_dir=workflows_dir)
    assert result.action == "published"
    return snapshot_path(workflows_dir, WORKFLOW)


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/api/workflows/a%00b/graph", None, ["path", "workflow_id"]),
        ("/api/workflows/a%00b/runs", None, ["path", "workflow_id"]),
        ("/api/workflows/a%00b/counts", None, ["path", "workflow_id"]),
        ("/api/workflows/a%00b/nodes/a1/steps", None, ["path", "workflow_id"]),
        (f"{WF}/nodes/a%00b/steps", None, ["path", "node_id"]),
        (f"{WF}/counts", {"run_id": NUL}, ["query", "run_id"]),
        (f"{WF}/nodes/a1/steps", {"run_id": NUL}, ["query", "run_id"]),
        ("/api/failures", {"workflow_id": NUL}, ["query", "workflow_id"]),
        ("/api/failures", {"node_id": NUL}, ["query", "node_id"]),
        ("/api/failures", {"run_id": NUL}, ["query", "run_id"]),
        ("/api/failures", {"run_id": "x" * 251}, ["query", "run_id"]),
        ("/api/executions/a%00b", None, ["path", "execution_id"]),
        ("/api/executions/a%0Ab", None, ["path", "execution_id"]),
        ("/api/patients/a%00b/executions", None, ["path", "patient_id"]),
        ("/api/metrics", {"workflow": NUL}, ["query", "workflow"]),
        ("/api/metrics", {"workflow": "../etc"}, ["query", "workflow"]),
    ],
)
def test_a_malformed_id_is_a_422_naming_the_parameter(
    client: TestClient, published: Path, path: str, params: dict[str, str] | None, parameter: list[str]
) -> None:
    # Postgres refuses a NUL byte in a string: before, this was a 500 there (and a search on SQLite).
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [parameter]


#: A route of one workflow (``{wf}``) with another of its parameters malformed, and where that one is.
MALFORMED_BESIDE_A_WORKFLOW = [
    ("/api/workflows/{wf}/runs", {"limit": "0"}, ["query", "limit"]),
    ("/api/workflows/{wf}/counts", {"run_id": NUL}, ["query", "run_id"]),
    ("/api/workflows/{wf}/nodes/a%00b/steps", None, ["path", "node_id"]),
    ("/api/workflows/{wf}/nodes/a1/steps", {"run_id": NUL}, ["query", "run_id"]),
    ("/api/workflows/{wf}/nodes/a1/steps", {"limit": "1001"}, ["query", "limit"]),
    ("/api/failures?workflow_id={wf}", {"node_id": NUL}, ["query", "node_id"]),
    ("/api/failures?workflow_id={wf}", {"limit": "0"}, ["query", "limit"]),
]


@pytest.mark.parametrize("workflow", [WORKFLOW, "nope"])
@pytest.mark.parametrize(("path", "params", "parameter"), MALFORMED_BESIDE_A_WORKFLOW)
def test_a_malformed_parameter_is_a_422_whatever_the_workflow(
    client: TestClient,
    published: Path,
    workflow: str,
    path: str,
    params: dict[str, str] | None,
    parameter: list[str],
) -> None:
    # Before, a workflow careflow does not know was a 404 first: FastAPI calls a route's
    # dependencies (the workflow's checks) before it checks the route's own parameters.
    response = client.get(path.format(wf=workflow), params=params)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [parameter]


@pytest.mark.parametrize("since", ["0001-01-01T00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_since_outside_the_years_of_utc_is_a_422(client: TestClient, published: Path, since: str) -> None:
    response = client.get("/api/metrics", params={"since": since})
    assert response.status_code == 422
    out_of_range = f"since: {since!r}: out of range once converted to UTC (years 1 to 9999)"
    assert response.json()["detail"] == out_of_range


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/workflows/nope/runs", None),
        ("/api/workflows/nope/counts", None),
        ("/api/workflows/nope/counts", {"run_id": "run__2025-03-06T05:00:00+00:00"}),
        ("/api/workflows/nope/nodes/a1/steps", None),
        ("/api/failures", {"workflow_id": "nope"}),
        ("/api/metrics", {"workflow": "nope"}),
    ],
)
def test_a_workflow_careflow_does_not_know_is_a_404(
    client: TestClient, published: Path, path: str, params: dict[str, str] | None
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 404
    assert response.json() == {"detail": "no workflow 'nope'"}


@pytest.mark.parametrize("known_by", ["snapshot and database", "database only"])
def test_a_published_workflow_that_has_not_run_is_served_empty(
    client: TestClient, published: Path, known_by: str
) -> None:
    if known_by == "database only":
        published.unlink()  # the DAG factory lost it; its published versions still name it
    assert client.get(f"{WF}/runs").json() == []
    assert client.get(f"{WF}/counts").json()["steps"] == {}
    assert client.get(f"{WF}/nodes/a1/steps").json() == []
    assert client.get("/api/failures", params={"workflow_id": WORKFLOW}).json()["reasons"] == []
    assert client.get("/api/metrics", params={"workflow": WORKFLOW}).json()["workflows"] == []


class _ReadsNoDag:
    """An auth manager that lets its users read no DAG at all."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def is_authorized_dag(self, **kw: Any) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_who_may_not_read_a_workflow_is_not_told_whether_it_exists(  # type: ignore[no-untyped-def]
    client: TestClient, published: Path, auth_manager, monkeypatch
) -> None:
    from careflow.airflow import access

    monkeypatch.setattr(access, "_manager", lambda: _ReadsNoDag(auth_manager))
    for workflow in (WORKFLOW, "nope"):
        for path in ("runs", "counts", "nodes/a1/steps", "graph"):
            assert client.get(f"/api/workflows/{workflow}/{path}").status_code == 403, (workflow, path)
        assert client.get("/api/failures", params={"workflow_id": workflow}).status_code == 403
        assert client.get("/api/metrics", params={"workflow": workflow}).status_code == 403


@pytest.mark.parametrize(("path", "params", "parameter"), MALFORMED_BESIDE_A_WORKFLOW)
def test_a_malformed_parameter_is_a_422_even_to_who_may_not_read_the_workflow(  # type: ignore[no-untyped-def]
    client: TestClient, published: Path, auth_manager, monkeypatch, path, params, parameter
) -> None:
    from careflow.airflow import access

    # The same answer for every workflow, so it tells nothing of one the user may not read.
    monkeypatch.setattr(access, "_manager", lambda: _ReadsNoDag(auth_manager))
    for workflow in (WORKFLOW, "nope"):
        response = client.get(path.format(wf=workflow), params=params)
        assert response.status_code == 422, (workflow, response.text)
        assert [error["loc"] for error in response.json()["detail"]] == [parameter]
