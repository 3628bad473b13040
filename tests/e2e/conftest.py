"""Fixtures of the end-to-end tier: the fake provider and a started cluster per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from careflow.providers.fake_server import FakeProviderServer

from .cluster import Cluster, drop_database, migrated_template, remove_tree
from .scenario import WORKFLOWS, dag_id, write_workflows


@pytest.fixture(scope="session")
def airflow_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Airflow's metadata schema, migrated once per session and copied by every cluster."""
    name = migrated_template(tmp_path_factory.mktemp("e2e-template"))
    yield name
    drop_database(name)


def start_cluster(
    tmp: Path, provider: FakeProviderServer, executor: str, template: str, *, pool_slots: int | None = 4
) -> Cluster:
    """Prepare, publish the e2e workflows, start every component and let the first runs settle.

    The DAGs are created unpaused, so the scheduler starts their latest scheduled run as soon as
    they are parsed; those runs find no clinic data yet. Tests load their data afterwards.
    ``pool_slots`` None: nobody runs ``careflow setup``.
    """
    cluster = Cluster(tmp, provider.url, provider.token, executor=executor)
    try:
        cluster.prepare(template, pool_slots=pool_slots)
        cluster.publish(write_workflows(tmp / "sources"))
        cluster.start()
        dag_ids = [dag_id(doc) for doc in WORKFLOWS]
        cluster.wait_dags(dag_ids)
        for dag in dag_ids:
            cluster.settle(dag)
    except BaseException:
        print(cluster.diagnostics())
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProviderServer]:
    """The fake messaging provider, shared by the module's runs."""
    with FakeProviderServer(latency_ms=5) as server:
        yield server


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("e2e")
    yield path
    remove_tree(path)


@pytest.fixture(scope="module")
def careflow_engine(cluster: Cluster) -> Iterator[Engine]:
    """An engine on the cluster's careflow database (to load clinic data and read the ledger)."""
    from sqlalchemy import create_engine

    engine = create_engine(cluster.careflow_url)
    yield engine
    engine.dispose()
