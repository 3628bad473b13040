"""When careflow's database has no tables or does not answer, the view's routes say so with a 503.

The answer names the problem and what to do, never the database's URL or the driver's text: those
go to the api-server's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .conftest import WORKFLOW

#: Every route that reads careflow's tables; implant-aftercare has a snapshot, "other" has none.
DATA_ROUTES = [
    f"/api/workflows/{WORKFLOW}/runs",
    f"/api/workflows/{WORKFLOW}/counts",
    f"/api/workflows/{WORKFLOW}/nodes/a1/steps",
    "/api/workflows/other/runs",
    "/api/failures",
    f"/api/failures?workflow_id={WORKFLOW}",
    "/api/executions/e1",
    "/api/patients/p1/executions",
    "/api/metrics",
    f"/api/metrics?workflow={WORKFLOW}",
]


@pytest.fixture
def snapshot(workflows_dir: Path) -> None:
    """implant-aftercare's snapshot on disk (published from another database, say): careflow knows it."""
    from careflow.snapshots import Snapshot, snapshot_path, write_snapshot
    from engine.harness import example

    write_snapshot(
        workflows_dir,
        Snapshot(
            workflow_id=WORKFLOW,
            version=1,
            content_hash="0" * 64,
            published_at="2025-03-01T00:00:00+00:00",
            start_date="2025-03-01T00:00:00+00:00",
            document=example(WORKFLOW),
            path=snapshot_path(workflows_dir, WORKFLOW),
        ),
    )


@pytest.mark.parametrize("path", DATA_ROUTES)
def test_without_careflow_tables_a_data_route_says_to_upgrade(
    client: TestClient, empty_db_url: str, snapshot: None, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = client.get(path)
    assert response.status_code == 503
    assert response.json() == {"detail": "careflow's tables are missing: run `careflow db upgrade`"}
    assert "careflow_" in caplog.text  # the log names the missing table


@pytest.fixture(params=["postgres", "sqlite"])
def unreachable_db_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """``CAREFLOW_DB_URL`` names a Postgres nobody listens for, or a SQLite file in no folder."""
    from careflow.store.db import dispose_engines

    if request.param == "postgres":
        url = "postgresql+psycopg2://careflow:secret@127.0.0.1:1/careflow"
    else:
        url = f"sqlite:///{tmp_path / 'no-such-folder' / 'careflow.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    dispose_engines()
    yield url
    dispose_engines()


@pytest.mark.parametrize("path", DATA_ROUTES)
def test_an_unreachable_database_is_a_503_that_does_not_name_it(
    client: TestClient,
    unreachable_db_url: str,
    snapshot: None,
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = client.get(path)
    assert response.status_code == 503
    assert response.json() == {"detail": "careflow's database is unreachable"}
    assert "OperationalError" in caplog.text  # the driver's own words are in the log
