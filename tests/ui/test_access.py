"""What a signed-in user may see and change under /careflow is what Airflow's auth manager allows."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import WORKFLOW


def _client(auth_manager: Any, role: str) -> TestClient:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from careflow.airflow.api import app

    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username=f"{role}-lee", role=role))
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def test_a_viewer_reads_but_cannot_reset_a_breaker(auth_manager, simulated) -> None:  # type: ignore[no-untyped-def]
    viewer = _client(auth_manager, "viewer")
    assert viewer.get("/api/workflows").status_code == 200
    assert viewer.get("/api/failures").json()["messages"]
    assert viewer.get("/api/breakers").status_code == 200
    refused = viewer.post("/api/breakers/default:sms/reset")
    assert refused.status_code == 403 and "careflow_messaging" in refused.json()["detail"]
    # Whoever may change the messaging pool may reset: an op gets past the check (no such breaker here).
    assert _client(auth_manager, "op").post("/api/breakers/default:sms/reset").status_code == 404


class _OnlySome:
    """An auth manager that lets its users read the DAGs of ``allowed`` workflows and nothing else."""

    def __init__(self, real: Any, allowed: set[str]) -> None:
        self.real, self.allowed = real, allowed

    def is_authorized_dag(
        self, *, method: str, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if details is None or details.id is None:
            return False
        return method == "GET" and details.id in {f"careflow__{w}" for w in self.allowed}

    def is_authorized_pool(self, **kw: Any) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # token checks and the rest: the real one
        return getattr(self.real, name)


@pytest.mark.parametrize("allowed", [set(), {"another-workflow"}])
def test_a_workflow_the_user_may_not_read_is_nowhere_to_be_seen(
    auth_manager, simulated, client, monkeypatch, allowed
) -> None:  # type: ignore[no-untyped-def]
    from careflow.airflow import access

    [execution] = client.get("/api/patients/p1/executions").json()  # an admin sees it
    monkeypatch.setattr(access, "_manager", lambda: _OnlySome(auth_manager, allowed))
    for path in (
        f"/api/workflows/{WORKFLOW}/graph",
        f"/api/workflows/{WORKFLOW}/runs",
        f"/api/workflows/{WORKFLOW}/counts",
        f"/api/workflows/{WORKFLOW}/nodes/a1/steps",
    ):
        assert client.get(path).status_code == 403, path
    assert client.get("/api/failures", params={"workflow_id": WORKFLOW}).status_code == 403
    assert client.get("/api/metrics", params={"workflow": WORKFLOW}).status_code == 403
    assert client.get(f"/api/executions/{execution['execution_id']}").status_code == 404
    # Lists across workflows leave it out.
    assert [w["workflow_id"] for w in client.get("/api/workflows").json()] == []
    failures = client.get("/api/failures").json()
    assert failures["reasons"] == [] and failures["steps"] == [] and failures["messages"] == []
    assert client.get("/api/patients/p1/executions").json() == []
    assert client.get("/api/metrics").json()["workflows"] == []
    assert client.get("/api/breakers").status_code == 403
    assert client.post("/api/breakers/default:sms/reset").status_code == 403


def test_a_workflow_the_user_may_read_is_served(auth_manager, simulated, client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from careflow.airflow import access

    monkeypatch.setattr(access, "_manager", lambda: _OnlySome(auth_manager, {WORKFLOW}))
    assert client.get(f"/api/workflows/{WORKFLOW}/graph").status_code == 200
    assert [w["workflow_id"] for w in client.get("/api/workflows").json()] == [WORKFLOW]
    assert {m["workflow_id"] for m in client.get("/api/failures").json()["messages"]} == {WORKFLOW}
    [execution] = client.get("/api/patients/p1/executions").json()
    assert client.get(f"/api/executions/{execution['execution_id']}").status_code == 200
