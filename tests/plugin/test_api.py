"""The plugin's API: every route refuses anonymous calls; an authenticated call lists workflows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from careflow.airflow.api import app  # noqa: E402


@pytest.fixture(scope="module")
def auth_manager(airflow_home):  # type: ignore[no-untyped-def]
    """Airflow's configured auth manager, as the api-server creates it."""
    from airflow.api_fastapi.app import create_auth_manager

    return create_auth_manager()


def _token(auth_manager) -> str:  # type: ignore[no-untyped-def]
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="ops-kim", role="admin"))


def _concrete(path: str) -> str:
    return path.replace("{name}", "default:sms")


ROUTES = [
    (method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods
]


def test_the_api_has_the_documented_routes() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/api/workflows", "/api/breakers", "/api/breakers/{name}/reset", "/api/cache"} <= paths


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_anonymous_calls_are_refused(method: str, path: str) -> None:
    client = TestClient(app)
    response = client.request(method, _concrete(path))
    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p in ROUTES])
def test_a_forged_token_is_refused(method: str, path: str, auth_manager) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(app)
    response = client.request(method, _concrete(path), headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code in (401, 403)


def test_an_authenticated_call_lists_the_workflows(  # type: ignore[no-untyped-def]
    db_url: str, workflows_dir: Path, example_files: list[Path], auth_manager
) -> None:
    from careflow.publishing import publish_paths

    results = publish_paths(example_files, workflows_dir=workflows_dir)
    assert all(r.action == "published" for r in results)
    (workflows_dir / "corrupt.json").write_text("{not json", encoding="utf-8")
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}
    response = TestClient(app).get("/api/workflows", headers=headers)
    assert response.status_code == 200
    body = response.json()
    by_id = {item["workflow_id"]: item for item in body}
    assert {p.stem for p in example_files} <= set(by_id)
    assert by_id["implant-aftercare"]["version"] == 1
    assert by_id["implant-aftercare"]["snapshot"] == "ok"
    assert by_id["corrupt"]["snapshot"] == "broken"
    assert "not a readable JSON snapshot" in by_id["corrupt"]["problem"]
    json.dumps(body)


def _listed_without_database(db_url: str, workflows_dir: Path, monkeypatch, auth_manager):  # type: ignore[no-untyped-def]
    from careflow.store.db import dispose_engines

    (workflows_dir / "corrupt.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setenv("CAREFLOW_DB_URL", db_url)
    dispose_engines()
    headers = {"Authorization": f"Bearer {_token(auth_manager)}"}
    try:
        response = TestClient(app).get("/api/workflows", headers=headers)
    finally:
        dispose_engines()
    assert response.status_code == 200
    assert [item["workflow_id"] for item in response.json()] == ["corrupt"]
    return response


def test_without_careflow_tables_the_snapshots_are_listed_and_a_header_says_why(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch, workflows_dir: Path, auth_manager, caplog
) -> None:
    from careflow.airflow.api import DATABASE_PROBLEM_HEADER

    url = f"sqlite:///{tmp_path / 'never-upgraded.db'}"
    response = _listed_without_database(url, workflows_dir, monkeypatch, auth_manager)
    # Any signed-in viewer reads the header: it says what to do, the log says which database.
    upgrade = "careflow's tables are missing: run `careflow db upgrade`"
    assert response.headers[DATABASE_PROBLEM_HEADER] == upgrade
    assert "never-upgraded.db" in caplog.text


def test_an_unreachable_database_is_named_in_the_log_not_in_the_header(  # type: ignore[no-untyped-def]
    monkeypatch, workflows_dir: Path, auth_manager, caplog
) -> None:
    from careflow.airflow.api import DATABASE_PROBLEM_HEADER

    url = "postgresql+psycopg2://careflow:secret@127.0.0.1:1/careflow"
    response = _listed_without_database(url, workflows_dir, monkeypatch, auth_manager)
    assert response.headers[DATABASE_PROBLEM_HEADER] == "careflow's database is unreachable"
    assert "127.0.0.1" in caplog.text and "psycopg2" in caplog.text
    assert "secret" not in caplog.text
