"""The plugin's API: every route refuses anonymous calls; an authenticated call lists workflows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from careflow.airflow.api import app, get_user  # noqa: E402


def _concrete(path: str) -> str:
    return path.replace("{name}", "default:sms")


ROUTES = [(method, route.path) for route in app.routes if isinstance(route, APIRoute) for method in route.methods]


def test_the_api_has_the_documented_routes() -> None:
    paths = {path for _, path in ROUTES}
    assert {"/api/workflows", "/api/breakers", "/api/breakers/{name}/reset", "/api/cache"} <= paths


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_anonymous_calls_are_refused(method: str, path: str) -> None:
    client = TestClient(app)
    response = client.request(method, _concrete(path))
    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p in ROUTES])
def test_a_forged_token_is_refused(method: str, path: str) -> None:
    client = TestClient(app)
    response = client.request(method, _concrete(path), headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code in (401, 403)


class _User:
    def get_name(self) -> str:
        return "ops-kim"


def test_an_authenticated_call_lists_the_workflows(db_url: str, workflows_dir: Path, example_files: list[Path]) -> None:
    from careflow.publishing import publish_paths

    results = publish_paths(example_files, workflows_dir=workflows_dir)
    assert all(r.action == "published" for r in results)
    (workflows_dir / "corrupt.json").write_text("{not json", encoding="utf-8")
    app.dependency_overrides[get_user] = _User
    try:
        response = TestClient(app).get("/api/workflows")
    finally:
        app.dependency_overrides.clear()
    assert response.status_code == 200
    body = response.json()
    by_id = {item["workflow_id"]: item for item in body}
    assert {p.stem for p in example_files} <= set(by_id)
    assert by_id["implant-aftercare"]["version"] == 1
    assert by_id["implant-aftercare"]["snapshot"] == "ok"
    assert by_id["corrupt"]["snapshot"] == "broken"
    assert "not a readable JSON snapshot" in by_id["corrupt"]["problem"]
    json.dumps(body)
