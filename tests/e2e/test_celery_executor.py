"""End to end on the CeleryExecutor: Redis as the broker and two Celery workers.

The same runs as on the LocalExecutor, with tasks going through the broker to two workers; the
fake provider must receive exactly the expected messages, once each. Nobody runs ``careflow setup``
here: the components create the ``careflow_messaging`` pool the send tasks run in as they start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from careflow.airflow.setup import DEFAULT_POOL_SLOTS
from careflow.providers.fake_server import FakeProviderServer

from .cluster import Cluster
from .conftest import start_cluster
from .journeys import aftercare_journey, booking_journey

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.slow]

pytest.importorskip(
    "airflow.providers.celery", reason="the CeleryExecutor needs apache-airflow-providers-celery"
)


@pytest.fixture(scope="module")
def cluster(scratch: Path, provider: FakeProviderServer, airflow_template: str) -> Iterator[Cluster]:
    cluster = start_cluster(scratch, provider, "CeleryExecutor", airflow_template, pool_slots=None)
    yield cluster
    cluster.stop()


def test_both_celery_workers_are_up(cluster) -> None:  # type: ignore[no-untyped-def]
    workers = {name: c for name, c in cluster.components.items() if name.startswith("worker")}
    assert len(workers) == 2
    assert all(c.alive() for c in workers.values()), cluster.diagnostics()
    assert all("ready" in c.tail(20000) for c in workers.values()), cluster.diagnostics()


def test_rest_triggered_runs_send_exactly_the_expected_messages(cluster, careflow_engine, provider) -> None:  # type: ignore[no-untyped-def]
    booking_journey(cluster, careflow_engine, provider, "cb")


def test_a_short_delay_waits_in_the_triggerer_and_a_wake_run_sends(
    cluster, careflow_engine, provider
) -> None:  # type: ignore[no-untyped-def]
    aftercare_journey(cluster, careflow_engine, provider, "ca")


def test_the_tasks_went_through_the_broker_to_both_workers(cluster) -> None:  # type: ignore[no-untyped-def]
    ran = {
        name: c.tail(10_000_000).count("Executing workload in Celery")
        for name, c in cluster.components.items()
        if name.startswith("worker")
    }
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran


def test_the_pool_nobody_set_up_was_created_as_the_components_started(cluster) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(cluster.metadata_url)
    with engine.connect() as conn:
        slots = conn.execute(text("SELECT slots FROM slot_pool WHERE pool = 'careflow_messaging'")).scalar()
    engine.dispose()
    assert slots == DEFAULT_POOL_SLOTS
    told = [
        name
        for name, c in cluster.components.items()
        if "careflow_messaging pool was missing" in c.tail(10_000_000)
    ]
    assert told, cluster.diagnostics()  # the component that created it said so in its log


def test_careflow_check_sees_the_components_heartbeat_and_both_workers_answer(cluster) -> None:  # type: ignore[no-untyped-def]
    said = cluster.airflow_checked()
    broker = f"redis://127.0.0.1:{cluster.redis_port}/1"
    (workers,) = [t for t in said if t.startswith(f"Celery worker(s) answering on {broker}: ")]
    assert len(workers.split(": ", 1)[1].split(", ")) == 2, workers
