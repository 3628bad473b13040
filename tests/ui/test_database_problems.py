"""When careflow's database has no tables or does not answer, the view's routes say so with a 503.

The answer names the problem and what to do, never the database's URL or the driver's text: those
go to the api-server's log. When Airflow's metadata database fails instead (the sign-in and the
access checks read it), the 503 names Airflow's database, not careflow's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from support import upgraded

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
    assert response.json() == {"detail": _not_answering(unreachable_db_url)}
    # The log names the database (password hidden) and why, in careflow's words and the driver's.
    if unreachable_db_url.startswith("sqlite"):
        folder = unreachable_db_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
        said = (
            f"cannot open or write careflow's database {unreachable_db_url} (from CAREFLOW_DB_URL): unable "
            f"to open database file: its directory {folder} does not exist"
        )
    else:
        said = (
            "cannot connect to careflow's database postgresql+psycopg2://careflow:***@127.0.0.1:1/careflow "
            "(from CAREFLOW_DB_URL): connection to server at"
        )
    assert said in caplog.text and "secret" not in caplog.text


def test_the_workflow_list_names_what_keeps_careflows_database_from_answering(
    client: TestClient, unreachable_db_url: str, snapshot: None
) -> None:
    """``GET workflows`` lists the snapshots and says in its header why the database was not read."""
    response = client.get("/api/workflows")
    assert response.status_code == 200
    assert [w["workflow_id"] for w in response.json()] == [WORKFLOW]
    assert response.headers["X-Careflow-Database-Problem"] == _not_answering(unreachable_db_url)


def _not_answering(url: str) -> str:
    """What the API says of careflow's database at ``url`` (see ``unreachable_db_url``)."""
    if url.startswith("sqlite"):  # a file in no folder
        return "careflow's database file cannot be opened: the api-server's log says why"
    return "careflow's database is unreachable"


def test_a_database_out_of_space_is_not_called_unreachable() -> None:
    """A read whose sort spills to a full disk: Postgres' DiskFull, which careflow's engine tags."""
    from sqlalchemy.exc import OperationalError

    from careflow.airflow.api import database_problem

    error = OperationalError("SELECT …", {}, Exception("could not write to file: No space left on device"))
    assert database_problem(error) == "careflow's database is unreachable"  # untagged: the driver's kind
    error.careflow_database_problem = ("full", "postgresql+psycopg2://careflow@db/careflow", "")  # type: ignore[attr-defined]
    assert database_problem(error) == "careflow's database has no space left: the api-server's log says where"


def test_an_embedded_database_another_program_keeps_locked_is_not_called_unreachable(
    client: TestClient,
    careflow_db: str,
    snapshot: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A program that holds SQLite's file in exclusive locking mode (a backup tool, a database
    browser) past the busy timeout (30 s; half a second here): readers are refused too."""
    import sqlite3

    from careflow.store import db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.5)
    db.dispose_engines()
    other = sqlite3.connect(careflow_db.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        response = client.get("/api/failures")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert response.status_code == 503
    assert response.json() == {
        "detail": "careflow's database file stayed locked by another program: the api-server's log says what may hold it"
    }
    assert (
        f"careflow's database {careflow_db} (from CAREFLOW_DB_URL) stayed locked by another writer for 0.5 s"
        in caplog.text
    )


@pytest.fixture(params=["unreachable", "without tables"])
def airflow_database_failing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Airflow's sessions open on a Postgres nobody listens for, or on a database without its tables.

    careflow's own database answers: only what the sign-in and the access checks read fails.
    """
    from airflow import settings as airflow_settings
    from airflow.models.dag import clear_team_name_cache
    from sqlalchemy import create_engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    if request.param == "unreachable":
        url = "postgresql+psycopg2://airflow:secret@127.0.0.1:1/airflow"
    else:
        url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    engine = create_engine(url)
    monkeypatch.setattr(airflow_settings, "Session", scoped_session(sessionmaker(bind=engine)))
    clear_team_name_cache()  # a team looked up by an earlier test would not be read again
    yield request.param
    engine.dispose()
    clear_team_name_cache()


#: What the 503 says of Airflow's metadata database, by how it fails.
AIRFLOW_PROBLEM = {
    "unreachable": "Airflow's metadata database is unreachable: the api-server's log says why",
    "without tables": "Airflow's metadata database lacks tables: run `airflow db migrate`",
}

#: Routes whose access check reads Airflow's metadata database: a DAG's team, every listed DAG's
#: teams, the messaging pool's team (looked up with teams on).
ACCESS_CHECKED = [
    ("GET", f"/api/workflows/{WORKFLOW}/graph"),
    ("GET", f"/api/workflows/{WORKFLOW}/runs"),
    ("GET", f"/api/workflows/{WORKFLOW}/nodes/a1/steps"),
    ("GET", f"/api/failures?workflow_id={WORKFLOW}"),
    ("GET", f"/api/metrics?workflow={WORKFLOW}"),
    ("GET", "/api/workflows"),
    ("GET", "/api/failures"),
    ("GET", "/api/patients/p1/executions"),
    ("POST", "/api/breakers/default:sms/reset"),
]


@pytest.fixture
def careflow_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An upgraded careflow database that answers (SQLite: which kind does not matter here)."""
    yield from upgraded(f"sqlite:///{tmp_path / 'careflow.db'}", monkeypatch)


def _assert_airflow_named(response: Any, failing: str, caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": AIRFLOW_PROBLEM[failing]}
    if failing == "unreachable":  # the driver's own words, and where, are in the log only
        assert "OperationalError" in caplog.text and "127.0.0.1" in caplog.text
        assert "secret" not in caplog.text
    else:
        assert "no such table" in caplog.text


@pytest.mark.parametrize("path", DATA_ROUTES)
def test_when_airflows_database_fails_the_sign_in_the_503_names_airflows_database(
    client: TestClient,
    careflow_db: str,
    snapshot: None,
    airflow_database_failing: str,
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Airflow's sign-in looks the token up among the revoked ones, in its metadata database:
    # careflow's database, which answers, is not the one to blame.
    _assert_airflow_named(client.get(path), airflow_database_failing, caplog)


@pytest.mark.parametrize(("method", "path"), ACCESS_CHECKED)
def test_when_airflows_database_fails_an_access_check_the_503_names_airflows_database(
    client: TestClient,
    careflow_db: str,
    snapshot: None,
    airflow_database_failing: str,
    method: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.models.revoked_token import RevokedToken

    # The sign-in got through (a token checked before the database went away, say): the team
    # lookups of the access checks are what fail.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")  # the pool's team is looked up only then
    _assert_airflow_named(client.request(method, path), airflow_database_failing, caplog)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_workflow_list_says_when_the_workflows_directory_cannot_be_listed(
    client: TestClient,
    db_url: str,
    workflows_dir: Path,
    snapshot: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The api-server's user may not list the directory: the header says so; the log names the
    directory and the user; no row stands for the directory."""
    import os

    from airflow.models.revoked_token import RevokedToken

    from careflow.store.db import dispose_engines
    from support import as_nobody, open_directory

    # Airflow's metadata database here is the test's user's alone: the sign-in's lookup is not the point.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))

    with open_directory() as top:
        listed = top / "workflows"
        workflows_dir.rename(listed)
        os.chmod(listed, 0o700)
        os.environ["AIRFLOW__CAREFLOW__WORKFLOWS_DIR"] = str(
            listed
        )  # restored by workflows_dir's monkeypatch
        dispose_engines()  # the child opens connections of its own

        def get() -> tuple[int, list[str], str | None, str]:
            with caplog.at_level("WARNING"):
                response = client.get("/api/workflows")
            return (
                response.status_code,
                [w["workflow_id"] for w in response.json()],
                response.headers.get("X-Careflow-Snapshots-Problem"),
                caplog.text,
            )

        status, ids, header, logged = as_nobody(get)
    assert (status, header) == (
        200,
        "the api-server may not list careflow's workflows directory: its log says why",
    )
    assert ids == []
    assert f"{listed} ([careflow] workflows_dir): this user (nobody, uid 65534) may not list it" in logged
