"""What a signed-in user may see and change under /careflow is what Airflow's auth manager allows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careflow.airflow.access import POOL

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
    _sees_nothing(client, execution["execution_id"])
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


# On a multi-team Airflow a DAG belongs to the team of its bundle; the simple auth manager lets a
# non-admin read it only from that team, as Airflow's own routes do.
TEAM, OTHER_TEAM = "clinic-a", "clinic-b"


@pytest.fixture
def owned_by_team(airflow_home, monkeypatch) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Teams on; the workflow's DAG sits in a bundle of ``TEAM``, the messaging pool is ``TEAM``'s."""
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    with _dag_in_bundle(team=TEAM):
        yield


@pytest.fixture
def dag_without_team(airflow_home) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Teams off (Airflow's default); the workflow's DAG sits in a bundle of no team."""
    with _dag_in_bundle(team=None):
        yield


@contextmanager
def _dag_in_bundle(team: str | None) -> Iterator[None]:
    """The workflow's DAG row in a test bundle (of ``team``), the pool ``team``'s; all as before after.

    Airflow's test database is the session's: a DAG row or the pool that earlier tests made is
    moved for the test and moved back, never deleted.
    """
    from airflow.models.dag import DagModel, clear_team_name_cache
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.pool import Pool
    from airflow.models.team import Team
    from airflow.settings import Session

    dag_id = f"careflow__{WORKFLOW}"
    with Session() as session:
        bundle = DagBundleModel(name="careflow-test-bundle")
        session.add(bundle)
        if team is not None:
            team_row = Team(name=team)
            session.add(team_row)
            bundle.teams.append(team_row)
        session.flush()  # the bundle (and team) rows before the rows that point at them
        dag = session.get(DagModel, dag_id)
        dag_before = None if dag is None else dag.bundle_name
        if dag is None:
            session.add(DagModel(dag_id=dag_id, bundle_name=bundle.name, fileloc="/dags/x.py"))
        else:
            dag.bundle_name = bundle.name
        pool = session.query(Pool).filter(Pool.pool == POOL).one_or_none()
        pool_before = None if pool is None else (pool.team_name,)
        if pool is None and team is not None:
            session.add(Pool(pool=POOL, slots=4, include_deferred=False, team_name=team))
        elif pool is not None:
            pool.team_name = team
        session.commit()
    clear_team_name_cache()  # Airflow caches a DAG's team (None before the row existed)
    try:
        yield
    finally:
        with Session() as session:
            dag = session.get(DagModel, dag_id)
            if dag is not None and dag_before is None:
                session.delete(dag)
            elif dag is not None:
                dag.bundle_name = dag_before
            pool = session.query(Pool).filter(Pool.pool == POOL).one_or_none()
            if pool is not None and pool_before is None:
                session.delete(pool)
            elif pool is not None and pool_before is not None:
                pool.team_name = pool_before[0]
            session.flush()
            stale = session.get(DagBundleModel, "careflow-test-bundle")
            if stale is not None:
                stale.teams.clear()
                session.delete(stale)
            session.query(Team).filter(Team.name == TEAM).delete()
            session.commit()
        clear_team_name_cache()


def _team_client(auth_manager: Any, role: str, teams: list[str] | None) -> TestClient:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from careflow.airflow.api import app

    user = SimpleAuthManagerUser(username=f"{role}-park", role=role, teams=teams)
    return TestClient(app, headers={"Authorization": f"Bearer {auth_manager.generate_jwt(user)}"})


#: The routes of one workflow, each guarded by the right to read its DAG's runs.
WORKFLOW_ROUTES = (
    f"/api/workflows/{WORKFLOW}/graph",
    f"/api/workflows/{WORKFLOW}/runs",
    f"/api/workflows/{WORKFLOW}/counts",
    f"/api/workflows/{WORKFLOW}/nodes/a1/steps",
)


def _sees_nothing(viewer: TestClient, execution_id: str) -> None:
    """403 on the workflow's routes, 404 on its execution, and left out of every list."""
    for path in WORKFLOW_ROUTES:
        assert viewer.get(path).status_code == 403, path
    assert viewer.get("/api/failures", params={"workflow_id": WORKFLOW}).status_code == 403
    assert viewer.get("/api/metrics", params={"workflow": WORKFLOW}).status_code == 403
    assert viewer.get(f"/api/executions/{execution_id}").status_code == 404
    assert [w["workflow_id"] for w in viewer.get("/api/workflows").json()] == []
    failures = viewer.get("/api/failures").json()
    assert failures["reasons"] == [] and failures["steps"] == [] and failures["messages"] == []
    assert viewer.get("/api/patients/p1/executions").json() == []
    # The metrics also list the workflows of DAG runs in Airflow's database (the session's, shared).
    assert WORKFLOW not in {w["workflow_id"] for w in viewer.get("/api/metrics").json()["workflows"]}


def _sees_everything(viewer: TestClient) -> None:
    for path in WORKFLOW_ROUTES:
        assert viewer.get(path).status_code == 200, path
    assert viewer.get("/api/failures", params={"workflow_id": WORKFLOW}).status_code == 200
    assert viewer.get("/api/metrics", params={"workflow": WORKFLOW}).status_code == 200
    assert [w["workflow_id"] for w in viewer.get("/api/workflows").json()] == [WORKFLOW]
    assert {m["workflow_id"] for m in viewer.get("/api/failures").json()["messages"]} == {WORKFLOW}
    assert WORKFLOW in {w["workflow_id"] for w in viewer.get("/api/metrics").json()["workflows"]}
    [execution] = viewer.get("/api/patients/p1/executions").json()
    assert viewer.get(f"/api/executions/{execution['execution_id']}").status_code == 200


def test_a_viewer_of_another_team_sees_nothing_of_the_workflow(  # type: ignore[no-untyped-def]
    auth_manager, simulated, client, owned_by_team
) -> None:
    [execution] = client.get("/api/patients/p1/executions").json()  # an admin sees it
    _sees_nothing(_team_client(auth_manager, "viewer", [OTHER_TEAM]), execution["execution_id"])


def test_a_viewer_of_the_workflows_team_sees_everything(  # type: ignore[no-untyped-def]
    auth_manager, simulated, owned_by_team
) -> None:
    _sees_everything(_team_client(auth_manager, "viewer", [TEAM]))


def test_only_an_op_of_the_pools_team_may_reset_a_breaker(  # type: ignore[no-untyped-def]
    auth_manager, simulated, owned_by_team
) -> None:
    refused = _team_client(auth_manager, "op", [OTHER_TEAM]).post("/api/breakers/default:sms/reset")
    assert refused.status_code == 403 and POOL in refused.json()["detail"]
    # Past the check (no such breaker here).
    assert _team_client(auth_manager, "op", [TEAM]).post("/api/breakers/default:sms/reset").status_code == 404


def test_without_teams_a_viewer_sees_everything(auth_manager, simulated, dag_without_team) -> None:  # type: ignore[no-untyped-def]
    _sees_everything(_client(auth_manager, "viewer"))
