"""End to end on the LocalExecutor: the real scheduler, dag-processor, triggerer and api-server.

Runs are triggered and watched through the REST API with an admin's JWT; the fake provider must
receive exactly the expected messages, once each. Then everything that left the components
(task logs, component output, XCom, statsd metrics, alert webhooks) is searched for patient data,
and every plugin route is called anonymously on the real api-server.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from careflow.providers.fake_server import FakeProviderServer

from .cluster import Cluster, wait_for
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
