"""``careflow metrics`` and ``GET /careflow/api/metrics``: per node runs, rates, dwell P95 and messages."""

from __future__ import annotations

import json
import math
import warnings
from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from careflow.cli import main
from careflow.metrics_report import _human, build_report, hints
from careflow.providers.client import ProviderClient
from careflow.providers.fake_server import FakeProviderServer
from careflow.store import tables

from .conftest import START, WORKFLOW, clinic_data, compiled_workflow, run_engine

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402


def test_metrics_after_a_simulated_run_print_p95_per_node(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic_data(engine)
    with FakeProviderServer() as provider:
        client = ProviderClient(provider.url, provider.token)
        run_engine(engine, compiled_workflow(), client, days=2)
        sent = len(provider.messages())
    assert sent > 0

    assert main(["metrics", "--workflow", WORKFLOW["id"], "--no-airflow"]) == 0
    text = capsys.readouterr().out
    assert f"== {WORKFLOW['id']} ==" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("node"))
    assert "p95" in header
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert {"booked", "hour_later", "notice"} <= set(lines)
    dwell = _dwell_seconds(engine, "hour_later")
    p95 = dwell[math.ceil(0.95 * len(dwell)) - 1]
    assert p95 > 3600  # arrival is the booking time, so the wait runs to the next daily run
    assert _human(p95) in lines["hour_later"].split()
    assert f"sent={sent}" in lines["notice"]

    assert main(["metrics", "--workflow", WORKFLOW["id"], "--no-airflow", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (item,) = report["workflows"]
    nodes = {n["node_id"]: n for n in item["nodes"]}
    assert nodes["hour_later"]["dwell_s"]["p95"] == pytest.approx(p95, abs=0.01)
    assert nodes["hour_later"]["dwell_s"]["median"] == pytest.approx(
        dwell[math.ceil(len(dwell) / 2) - 1], abs=0.01
    )
    assert nodes["notice"]["messages"]["sent"] == sent
    assert nodes["notice"]["send_latency_ms"]["count"] == sent
    assert item["slowest_node"] == max(nodes, key=lambda n: nodes[n]["dwell_s"]["p95"])
    assert item["fastest_node"] == "notice"  # sent in the run the execution arrived in
    assert item["runs"] >= 2
    assert item["executions"].get("completed", 0) > 0


def _dwell_seconds(engine: Engine, node_id: str) -> list[float]:
    s = tables.steps
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.c.arrived_at, s.c.finished_at).where(
                s.c.node_id == node_id, s.c.finished_at.is_not(None)
            )
        ).all()
    return sorted((done - arrived).total_seconds() for arrived, done in rows)


def test_percentiles_are_nearest_rank_on_both_databases(engine: Engine) -> None:
    """Dwell times of 1..20 s: mean 10.5, median the 10th value, P95 the 19th."""
    with engine.begin() as conn:
        for i in range(1, 21):
            conn.execute(
                insert(tables.executions).values(
                    id=f"x{i}",
                    workflow_id="wf",
                    version=1,
                    trigger_event_id=f"ev{i}",
                    patient_id=f"p{i}",
                    appointment_id=f"a{i}",
                    clinic_id="c",
                    status="completed",
                    enrolled_at=START,
                    event_at=START,
                    updated_at=START,
                )
            )
            conn.execute(
                insert(tables.steps).values(
                    execution_id=f"x{i}",
                    workflow_id="wf",
                    node_id="n",
                    status="failed" if i <= 5 else "done",
                    arrived_at=START,
                    finished_at=START + timedelta(seconds=i),
                    run_id=f"r{i % 4}",
                )
            )
    (item,) = build_report("wf", engine=engine, airflow=False)["workflows"]
    (node,) = item["nodes"]
    assert node["dwell_s"] == {
        "count": 20,
        "mean": 10.5,
        "median": 10.0,
        "p95": 19.0,
        "min": 1.0,
        "max": 20.0,
    }
    assert node["error_rate"] == 0.25
    assert node["runs"] == 4
    later = build_report("wf", START + timedelta(days=1), engine=engine, airflow=False)
    assert later["workflows"] == []


def test_the_api_serves_the_report_to_authenticated_users_only(airflow_home, db_url: str) -> None:  # type: ignore[no-untyped-def]
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from careflow.airflow.api import app

    client = TestClient(app)
    assert client.get("/api/metrics").status_code == 401
    token = create_auth_manager().generate_jwt(SimpleAuthManagerUser(username="ops-kim", role="admin"))
    auth = {"Authorization": f"Bearer {token}"}
    answer = client.get("/api/metrics", params={"since": "2026-03-01"}, headers=auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["since"].startswith("2026-03-01")
    assert body["source"] == "careflow+airflow"  # the test Airflow home's metadata DB is readable
    assert client.get("/api/metrics", params={"since": "yesterday"}, headers=auth).status_code == 422


def test_hints_name_what_the_figures_suggest_changing(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages expired unsent (late, or in quiet hours past max_lateness), failed, mostly skipped,
    a condition that took one branch only, a node whose steps fail: each a hint with its node, counts and reasons. Below the thresholds, or
    on too few messages, none."""
    wid, at = "hinted", START
    x, s, m = tables.executions, tables.steps, tables.messages
    ledger = (
        # node, how many, status, reason
        [("remind", 30, "sent", None), ("remind", 2, "expired", "late_by_1500_min")]
        + [
            ("remind", 1, "expired", "late_by_2990_min"),
            ("remind", 1, "expired", "quiet_hours_past_max_lateness"),
        ]
        + [("remind", 2, "failed", "provider_rejected"), ("remind", 1, "failed", "template_missing_fact")]
        + [("offer", 15, "skipped", "no_marketing_consent"), ("offer", 5, "skipped", "no_phone")]
        + [("offer", 10, "sent", None)]
        # too few to read anything from: a hint here would be noise
        + [("rare", 3, "skipped", "no_phone"), ("rare", 1, "failed", "provider_rejected")]
        # enough, but under the shares: 1 failed of 40 (2.5 %), 19 skipped of 40 (47.5 %)
        + [("fine", 20, "sent", None), ("fine", 19, "skipped", "no_phone"), ("fine", 1, "failed", "x")]
    )
    rows, n = [], 0
    for node_id, count, status, reason in ledger:
        for _ in range(count):
            n += 1
            rows.append(
                {
                    "idempotency_key": f"k{n}",
                    "execution_id": f"e{n}",
                    "workflow_id": wid,
                    "node_id": node_id,
                    "version": 1,
                    "channel": "sms",
                    "purpose": "care",
                    "patient_id": f"p{n}",
                    "status": status,
                    "reason": reason,
                    "due_at": at,
                    "updated_at": at,
                }
            )
    executions = [
        {
            "id": f"x{i}",
            "workflow_id": wid,
            "version": 1,
            "trigger_event_id": f"ev{i}",
            "patient_id": f"p{i}",
            "appointment_id": f"a{i}",
            "clinic_id": "c1",
            "status": "completed",
            "enrolled_at": at,
            "event_at": at,
            "updated_at": at,
        }
        for i in range(24)
    ]
    decided = {"status": "done", "output": {"branch": "true"}}
    steps = [  # a condition whose facts could not be read for 3 of 24, and that took one branch
        {"execution_id": f"x{i}", "workflow_id": wid, "node_id": "check"}
        | ({"status": "failed", "output": None} if i < 3 else decided)
        | {"arrived_at": at, "finished_at": at}
        for i in range(24)
    ] + [  # a condition that took both: 20 true, 4 false
        {"execution_id": f"x{i}", "workflow_id": wid, "node_id": "split", "status": "done"}
        | {"output": {"branch": "false" if i < 4 else "true"}, "arrived_at": at, "finished_at": at}
        for i in range(24)
    ]
    with engine.begin() as conn:
        conn.execute(insert(m), rows)
        conn.execute(insert(x), executions)
        conn.execute(insert(s), steps)

    (item,) = build_report(wid, engine=engine, airflow=False)["workflows"]
    assert [(h["node_id"], h["code"], h["text"]) for h in item["hints"]] == [
        (
            "check",
            "CONDITION_ONE_WAY",
            "condition check took its true branch in all 21 executions it decided: its other branch never "
            "ran. Check its rules against the clinic's data (a fact every patient has alike, a value the "
            "clinic's system spells otherwise)",
        ),
        (
            "check",
            "NODE_FAILING",
            "node check failed 3 of the 24 steps it finished: the careflow view's failures and an "
            "execution's trace give the reasons",
        ),
        (
            "offer",
            "MOSTLY_SKIPPED",
            "20 of node offer's 30 messages were skipped (no_marketing_consent 15, no_phone 5): a condition "
            "on the same facts earlier in the graph would end those executions at once, rather than carry "
            "them through its waits to the send",
        ),
        (
            "remind",
            "MESSAGES_EXPIRED",
            "3 of node remind's 37 messages expired unsent, reached over max_lateness past due: runs were "
            "missed meanwhile (a paused DAG, a stopped scheduler: `careflow check`) or the provider was "
            "down that long; where a late message is still worth sending, raise the workflow's max_lateness",
        ),
        (
            "remind",
            "QUIET_HOURS_EXPIRED",
            "1 of node remind's marketing messages expired in quiet hours (21:00 to 08:00 without "
            "night-time consent) that ended past max_lateness: a time window before it, within 08:00 to "
            "21:00, sends them by day",
        ),
        (
            "remind",
            "MESSAGES_FAILING",
            "3 of node remind's 37 messages failed (provider_rejected 2, template_missing_fact 1): the "
            "careflow view's failures give each one's reason",
        ),
    ]
    nodes = {n["node_id"]: n for n in item["nodes"]}
    assert nodes["split"]["branches"] == {"true": 20, "false": 4}
    assert nodes["remind"]["not_sent"] == {
        "expired": {"late": 3, "quiet_hours_past_max_lateness": 1},
        "failed": {"provider_rejected": 2, "template_missing_fact": 1},
    }

    assert main(["metrics", "--workflow", wid, "--no-airflow"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  hint ")]
    assert printed == [f"  hint {h['code']}: {h['text']}" for h in item["hints"]]


@pytest.mark.parametrize(
    ("runs", "hinted"),
    [
        ({"success": 19, "failed": 1}, True),  # 5 % of 20
        ({"success": 39, "failed": 1}, False),  # 2.5 %
        ({"success": 10, "failed": 9, "running": 5}, False),  # 19 ended: too few to read
    ],
)
def test_failing_dag_runs_are_a_hint_from_20_ended_runs_on(runs: dict[str, int], hinted: bool) -> None:
    """Airflow's figures (its ``dag_run`` states, merged in by ``build_report``)."""
    said = hints({"workflow_id": "w", "nodes": [], "run_states": runs})
    ended = runs["success"] + runs["failed"]
    assert said == (
        [
            {
                "node_id": None,
                "code": "RUNS_FAILING",
                "text": f"{runs['failed']} of the workflow's {ended} ended DAG runs failed: its alerts and the "
                "failed tasks' logs in Airflow say why",
            }
        ]
        if hinted
        else []
    )
