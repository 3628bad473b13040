"""The careflow view's routes: refused without Airflow's login, and right after a simulated week."""

from __future__ import annotations

import warnings

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from careflow.airflow.ui import router as view_router
from careflow.store import tables
from support import phone_spellings

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from careflow.airflow.api import app  # noqa: E402

WF = "/api/workflows/implant-aftercare"
#: p1's reminder went out in the wake run at its release time, Thursday 14:00 in Seoul.
P1_SEND_RUN = "run__2025-03-06T05:00:00+00:00"

VIEW_ROUTES = [
    (method, route.path)
    for route in view_router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
]


def _concrete(path: str) -> str:
    for name, value in {
        "{workflow_id}": "implant-aftercare",
        "{node_id}": "a1",
        "{execution_id}": "e1",
        "{patient_id}": "p1",
        "{name}": "app.js",
    }.items():
        path = path.replace(name, value)
    return path


def test_the_view_has_its_page_and_routes() -> None:
    paths = {path for _, path in VIEW_ROUTES}
    assert {
        "/ui/",
        "/ui/{name}",
        "/api/workflows/{workflow_id}/graph",
        "/api/workflows/{workflow_id}/runs",
        "/api/workflows/{workflow_id}/counts",
        "/api/workflows/{workflow_id}/nodes/{node_id}/steps",
        "/api/failures",
        "/api/executions/{execution_id}",
        "/api/patients/{patient_id}/executions",
    } <= paths
    app_paths = {route.path for route in app.routes if isinstance(route, APIRoute)}
    assert paths <= app_paths


@pytest.mark.parametrize(("method", "path"), VIEW_ROUTES)
def test_anonymous_calls_are_refused(method: str, path: str) -> None:
    response = TestClient(app).request(method, _concrete(path))
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize(("method", "path"), VIEW_ROUTES)
def test_a_forged_cookie_is_refused(method: str, path: str, auth_manager) -> None:  # type: ignore[no-untyped-def]
    response = TestClient(app, cookies={"_token": "not-a-jwt"}).request(method, _concrete(path))
    assert response.status_code in (401, 403)


def test_the_page_is_served_to_airflows_session_cookie(auth_manager) -> None:  # type: ignore[no-untyped-def]
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="ops-kim", role="admin"))
    browser = TestClient(app, cookies={"_token": token})
    page = browser.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="app.js">' in page.text
    script = browser.get("/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert browser.get("/ui/style.css").headers["content-type"].startswith("text/css")
    # Only the page's own files: nothing else in the package is reachable.
    for name in ("router.py", "queries.py", "..%2Frouter.py", "__init__.py"):
        assert browser.get(f"/ui/{name}").status_code == 404


def test_graph_places_nodes_in_topological_columns(client, simulated) -> None:  # type: ignore[no-untyped-def]
    graph = client.get(f"{WF}/graph").json()
    assert graph["name"] == "임플란트 수술 후 관리" and graph["version"] == 1
    assert graph["dag_id"] == "careflow__implant-aftercare"
    assert [(n["id"], n["type"], n["column"]) for n in graph["nodes"]] == [
        ("t1", "trigger", 0),
        ("d1", "delay", 1),
        ("c1", "condition", 2),
        ("w1", "timeWindow", 3),
        ("a1", "action", 4),
    ]
    assert {"source": "c1", "target": "w1", "handle": "true"} in graph["edges"]
    assert client.get("/api/workflows/no-such-workflow/graph").status_code == 404


def test_runs_and_per_node_counts_of_a_run(client, simulated) -> None:  # type: ignore[no-untyped-def]
    runs = client.get(f"{WF}/runs").json()
    ids = [r["run_id"] for r in runs]
    assert P1_SEND_RUN in ids
    last = [r["last_at"] for r in runs]
    assert last == sorted(last, reverse=True)  # latest first
    # The run that sent p1's reminder moved p1 from the delay through to the action, and only p1.
    counts = client.get(f"{WF}/counts", params={"run_id": P1_SEND_RUN}).json()
    assert counts["steps"] == {n: {"done": 1} for n in ("d1", "c1", "w1", "a1")}
    assert counts["messages"] == {"a1": {"sent": 1}}
    # Over every run: five patients enrolled; p3 left at the condition, p2 waits for Monday's
    # window; p6 (no consent) and p7 (no phone) were skipped at the action.
    everything = client.get(f"{WF}/counts").json()
    assert everything["steps"]["t1"] == {"done": 5}
    assert everything["steps"]["c1"] == {"done": 5}
    assert everything["steps"]["w1"] == {"done": 3, "waiting": 1}
    assert everything["steps"]["a1"] == {"done": 1, "skipped": 2}
    assert everything["messages"]["a1"] == {"sent": 1, "skipped": 2}


def test_failures_with_their_reasons(client, simulated) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/failures", params={"workflow_id": "implant-aftercare"}).json()
    reasons = {(r["kind"], r["node_id"], r["status"], r["reason"]): r["count"] for r in body["reasons"]}
    assert reasons[("message", "a1", "skipped", "no_consent_messages")] == 1
    assert reasons[("message", "a1", "skipped", "no_phone")] == 1
    assert {(m["patient_id"], m["reason"]) for m in body["messages"]} == {
        ("p6", "no_consent_messages"),
        ("p7", "no_phone"),
    }
    assert {s["patient_id"] for s in body["steps"]} == {"p6", "p7"}
    assert all(s["status"] == "skipped" and s["node_id"] == "a1" for s in body["steps"])
    # Filters: another node has none; the run that sent p1's reminder has none.
    assert client.get("/api/failures", params={"node_id": "c1"}).json()["reasons"] == []
    assert client.get("/api/failures", params={"run_id": P1_SEND_RUN}).json()["messages"] == []


def _execution_of(client, patient_id: str) -> str:  # type: ignore[no-untyped-def]
    [found] = client.get(f"/api/patients/{patient_id}/executions").json()
    assert found["workflow_id"] == "implant-aftercare" and found["patient_id"] == patient_id
    return str(found["execution_id"])


def test_why_did_this_patient_not_get_the_reminder(client, simulated) -> None:  # type: ignore[no-untyped-def]
    verdicts = {}
    for patient in ("p1", "p2", "p3", "p6", "p7"):
        trace = client.get(f"/api/executions/{_execution_of(client, patient)}").json()
        [action] = trace["actions"]
        verdicts[patient] = (action["verdict"], action["why"])
        if patient == "p3":
            assert [(s["node_id"], s["status"], s["branch"]) for s in trace["steps"]] == [
                ("t1", "done", None),
                ("d1", "done", None),
                ("c1", "done", "false"),
            ]
            assert trace["steps"][2]["label"] == "후속 예약 없음"
            assert trace["messages"] == []
    assert verdicts["p1"][0] == "sent"
    assert verdicts["p2"] == ("not yet", "waiting at w1 until 2025-03-10T00:00:00+00:00")
    assert verdicts["p3"] == ("not reached", "condition c1 took the false branch; a1 is on the true branch")
    assert verdicts["p6"] == ("skipped", "message skipped: no_consent_messages")
    assert verdicts["p7"] == ("skipped", "message skipped: no_phone")
    assert client.get("/api/executions/no-such-execution").status_code == 404
    assert client.get("/api/patients/nobody/executions").json() == []


def test_node_steps_show_the_branch_each_patient_took(client, simulated) -> None:  # type: ignore[no-untyped-def]
    steps = client.get(f"{WF}/nodes/c1/steps").json()
    assert {s["patient_id"]: s["branch"] for s in steps} == {
        "p1": "true",
        "p2": "true",
        "p3": "false",
        "p6": "true",
        "p7": "true",
    }
    only_run = client.get(f"{WF}/nodes/a1/steps", params={"run_id": P1_SEND_RUN}).json()
    assert [(s["patient_id"], s["status"]) for s in only_run] == [("p1", "done")]


def test_no_patient_data_in_any_answer(client, simulated, engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        patients = conn.execute(select(tables.patients.c.name, tables.patients.c.phone)).all()
    assert len(patients) == 5
    searched = ["@example.com"] + [name for name, _ in patients]
    searched += [s for _, phone in patients if phone for s in phone_spellings(phone)]
    paths = [
        f"{WF}/graph",
        f"{WF}/runs",
        f"{WF}/counts",
        f"{WF}/nodes/a1/steps",
        "/api/failures",
        "/api/patients/p6/executions",
        f"/api/executions/{_execution_of(client, 'p1')}",
        f"/api/executions/{_execution_of(client, 'p7')}",
    ]
    for path in paths:
        text = client.get(path).text
        assert [s for s in searched if s in text] == [], path
        assert "경과는" not in text, path  # no template or message body either


def test_no_json_answer_is_kept_by_a_browser_or_a_proxy(client, simulated) -> None:  # type: ignore[no-untyped-def]
    paths = [
        "/api/workflows",
        f"{WF}/graph",
        f"{WF}/runs",
        f"{WF}/counts",
        f"{WF}/nodes/a1/steps",
        "/api/failures",
        "/api/patients/p1/executions",
        f"/api/executions/{_execution_of(client, 'p1')}",
        "/api/metrics",
        "/api/breakers",
        "/api/cache",
        "/api/executions/no-such-execution",  # a 404 names the id asked for
        "/api/patients/a%00b/executions",  # a 422 repeats it
    ]
    for path in paths:
        assert client.get(path).headers["cache-control"] == "no-store", path
    assert TestClient(app).get("/api/failures").headers["cache-control"] == "no-store"  # a 401 too
    # The page's own files keep theirs: the browser may keep them, and asks whether they changed.
    for name in ("", "app.js", "style.css"):
        assert client.get(f"/ui/{name}").headers["cache-control"] == "no-cache"


def test_an_ended_execution_is_explained_by_the_version_that_ran_it(  # type: ignore[no-untyped-def]
    client, simulated, workflows_dir
) -> None:
    # v2 replaces the KakaoTalk reminder a1 by an SMS a2 on the condition's other branch.
    import copy
    import json

    from careflow.publishing import publish_paths
    from engine.harness import example

    doc = copy.deepcopy(example("implant-aftercare"))
    for node in doc["nodes"]:
        if node["id"] == "a1":
            node["id"], node["data"]["channel"] = "a2", "sms"
        if node["id"] == "c1":
            node["data"]["all"][0]["value"] = True
    for edge in doc["edges"]:
        edge["target"] = "a2" if edge["target"] == "a1" else edge["target"]
        if edge["source"] == "c1":
            edge["sourceHandle"] = "false"
    source = workflows_dir.parent / "implant-aftercare.json"
    source.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    [published] = publish_paths([source], workflows_dir=workflows_dir)
    assert published.version == 2

    sent = client.get(f"/api/executions/{_execution_of(client, 'p1')}").json()
    assert [(a["node_id"], a["verdict"]) for a in sent["actions"]] == [("a1", "sent")]
    other_branch = client.get(f"/api/executions/{_execution_of(client, 'p3')}").json()
    assert [(a["node_id"], a["verdict"], a["why"]) for a in other_branch["actions"]] == [
        ("a1", "not reached", "condition c1 took the false branch; a1 is on the true branch")
    ]
    # One still on its way goes on in v2: it is explained by v2's graph.
    waiting = client.get(f"/api/executions/{_execution_of(client, 'p2')}").json()
    assert [a["node_id"] for a in waiting["actions"]] == ["a2"]
