"""End to end on the LocalExecutor: the real scheduler, dag-processor, triggerer and api-server.

Runs are triggered and watched through the REST API with an admin's JWT; the fake provider must
receive exactly the expected messages, once each. Then everything that left the components
(task logs, component output, XCom, statsd metrics, alert webhooks) is searched for patient data,
and every plugin route is called anonymously on the real api-server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from careflow.providers.fake_server import FakeProviderServer
from support import wait_for

from .cluster import Cluster
from .conftest import start_cluster
from .journeys import aftercare_journey, booking_journey
from .scenario import Cohort

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(scratch: Path, provider: FakeProviderServer, airflow_template: str) -> Iterator[Cluster]:
    cluster = start_cluster(scratch, provider, "LocalExecutor", airflow_template)
    yield cluster
    cluster.stop()


COHORTS: list[Cohort] = []


def test_rest_triggered_runs_send_exactly_the_expected_messages(cluster, careflow_engine, provider) -> None:  # type: ignore[no-untyped-def]
    COHORTS.append(booking_journey(cluster, careflow_engine, provider, "lb"))


def test_a_short_delay_waits_in_the_triggerer_and_a_wake_run_sends(
    cluster, careflow_engine, provider
) -> None:  # type: ignore[no-untyped-def]
    COHORTS.append(aftercare_journey(cluster, careflow_engine, provider, "la"))


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def test_no_patient_data_in_logs_xcom_metrics_or_alerts(cluster, provider) -> None:  # type: ignore[no-untyped-def]
    assert COHORTS, "the runs above must have sent messages for the scan to mean anything"
    if importlib.util.find_spec("careflow.airflow.alerts") is not None:
        # A run that fails (an unreadable clock) fires the failure alerts on the webhook.
        dag = "careflow__e2e-booking"
        failed = cluster.trigger(dag, conf={"careflow_clock": "not-a-time", "careflow_simulated": True})
        assert cluster.wait_run(dag, failed)["state"] == "failed"
        wait_for("an alert on the webhook", lambda: cluster.alerts.bodies, timeout=60, interval=1)
        # One failure, one alert: the run's callback (in the DAG processor) reads the run's task
        # states and finds its failed task alerted already.
        wait_for(
            "the run's callback to find the task's alert",
            lambda: any(f"run {failed} of {dag} failed; its failed tasks" in t for t in cluster.log_texts()),
            timeout=90,
            interval=2,
        )
        assert [b for b in cluster.alerts.bodies if "a task failed" in b]
        assert not [b for b in cluster.alerts.bodies if "a DAG run failed" in b]
    time.sleep(2)  # the last statsd packets
    bodies = [m["body"] for m in provider.messages()]
    sources = {
        "task and component logs": cluster.log_texts(),
        "xcom": cluster.xcom_values(),
        "statsd": list(cluster.statsd.packets),
        "alerts": list(cluster.alerts.bodies),
    }
    # The places searched hold what they should: counts in XCom and logs, careflow's metrics.
    logs = "\n".join(sources["task and component logs"])
    assert "careflow e2e-booking/notice" in logs and "sent=10" in logs
    assert any('"sent": 10' in v or "'sent': 10" in v for v in sources["xcom"]), sources["xcom"][:5]
    assert any(p.startswith("airflow.careflow.messages.sent.e2e-booking") for p in sources["statsd"]), sorted(
        {p.split(":")[0] for p in sources["statsd"]}
    )[:40]

    names = set().union(*(c.names() for c in COHORTS))
    phones = set().union(*(c.phones() for c in COHORTS))
    leaks: dict[str, list[str]] = {}
    for where, texts in sources.items():
        text = "\n".join(texts)
        found = [n for n in names if n in text]
        # any spelling of a number contains its national digits (010-5551-2345, +821055512345)
        found += [p for p in phones if p in text or _digits(p)[1:] in text]
        found += [b[:30] for b in bodies if b in text or b[:30] in text]
        if found:
            leaks[where] = found[:5]
    assert not leaks, f"patient data left the components: {leaks}"


def _plugin_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of every FastAPI app the careflow plugin mounts."""
    from careflow_plugin import CareflowPlugin

    routes = []
    for mounted in CareflowPlugin.fastapi_apps:
        prefix = mounted["url_prefix"]
        for route in mounted["app"].routes:
            path = re.sub(r"\{[^}]+\}", "x", getattr(route, "path", ""))
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    routes.append((method, prefix + path))
    return routes


def test_every_plugin_route_refuses_anonymous_calls_on_the_api_server(cluster) -> None:  # type: ignore[no-untyped-def]
    routes = _plugin_routes()
    assert ("GET", "/careflow/api/workflows") in routes
    answers = {(m, p): cluster.api(m, p, auth=False).status_code for m, p in routes}
    assert {k: v for k, v in answers.items() if v != 401} == {}
    forged = {
        (m, p): cluster.api(m, p, auth=False, headers={"Authorization": "Bearer forged"}).status_code
        for m, p in routes
    }
    assert {k: v for k, v in forged.items() if v not in (401, 403)} == {}
    # The same routes are really mounted: with the admin's token the API answers.
    response = cluster.api("GET", "/careflow/api/workflows")
    assert response.status_code == 200, response.text[:300]
    assert {"e2e-booking", "e2e-aftercare"} <= {w["workflow_id"] for w in response.json()}


def test_a_sending_task_marked_failed_stops_and_leaves_nothing_claimed(
    cluster, careflow_engine, provider
) -> None:  # type: ignore[no-untyped-def]
    """Marking a running action task failed: Airflow's supervisor sends its process group a SIGTERM
    (and a SIGKILL 5 seconds later), and the task's ``on_kill`` stops the sending. The requests on
    the wire are answered and recorded, nothing is left claimed for the lease, and the next run
    sends the rest once.
    """
    from datetime import timedelta

    from .journeys import provider_keys
    from .scenario import BOOKING, dag_id, now_utc

    cohort = Cohort(BOOKING, "notice", "lt")
    cohort.add(160, event="appointment_created", at=now_utc() - timedelta(seconds=2), status="scheduled")
    cohort.load(careflow_engine)
    refused = list(provider.provider.config.permanent_fail_recipients)
    # 8 connections: 160 messages take 40 s to send; none refused (a phone of the booking test's)
    provider.configure(latency_ms=2000, permanent_fail_recipients=[])
    dag = dag_id(BOOKING)

    def nothing_claimed() -> dict[str, dict] | None:  # type: ignore[type-arg]
        rows = cohort.ledger(careflow_engine)
        return rows if rows and "claimed" not in {r["status"] for r in rows.values()} else None

    def said_stopped() -> bool:
        return "stopped by Airflow while sending" in "\n".join(cluster.log_texts())

    try:
        run_id = cluster.trigger(dag)
        wait_for(
            "the action task to be sending",
            lambda: any(r["status"] == "sent" for r in cohort.ledger(careflow_engine).values()),
            timeout=120,
            interval=0.5,
        )
        cluster.ok(
            "PATCH", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/notice", json={"new_state": "failed"}
        )
        assert cluster.wait_run(dag, run_id)["state"] == "failed"
        # The run is failed as soon as the task is marked so; the task hears of it at its next
        # heartbeat, records what it had handed over, then says it was stopped. Its ledger is read
        # once it has said so, not as soon as nothing is claimed: that holds from the recording's
        # commit, before the task has logged its stop (seconds before, on a loaded machine).
        with contextlib.suppress(AssertionError):
            wait_for("the task to say it was stopped", said_stopped, 60, 0.5)
        stopped = wait_for("the stopped task to have recorded what it claimed", nothing_claimed, 30, 0.5)
    finally:
        provider.configure(latency_ms=5, permanent_fail_recipients=refused)
    assert said_stopped(), cluster.diagnostics()
    sent = [pid for pid, row in stopped.items() if row["status"] == "sent"]
    # The answers of the requests on the wire were recorded (the send process got the SIGTERM too
    # and did not drop them: none is unknown); what was not written went back to pending.
    others = {
        pid: (r["status"], r["last_error"])
        for pid, r in stopped.items()
        if r["status"] not in ("sent", "pending")
    }
    assert 0 < len(sent) < 160 and not others, (len(sent), others)
    assert any(row["last_error"] == "not_sent task_stopped" for row in stopped.values())
    assert set(provider_keys(provider, BOOKING["id"])) >= {cohort.key(pid) for pid in sent}

    again = cluster.trigger(dag)
    assert cluster.wait_run(dag, again)["state"] == "success", cluster.task_states(dag, again)
    assert {row["status"] for row in cohort.ledger(careflow_engine).values()} == {"sent"}
    assert set(provider_keys(provider, BOOKING["id"])) >= cohort.expected_keys()
    assert provider.stats(brief=True)["accepted_twice"] == 0


def test_careflow_check_sees_the_components_heartbeat(cluster) -> None:  # type: ignore[no-untyped-def]
    said = cluster.airflow_checked()
    assert not any("Celery" in t for t in said)  # the LocalExecutor: no broker to ask
