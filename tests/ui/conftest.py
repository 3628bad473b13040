"""Fixtures of the careflow view tests: a real Airflow JWT and a clinic after a simulated week."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from careflow.providers.fake_server import FakeProviderServer
from engine.harness import Clinic, Journey, compile_doc, example, kst

warnings.filterwarnings("ignore", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

WORKFLOW = "implant-aftercare"


@pytest.fixture(scope="module")
def auth_manager(airflow_home: Path) -> Any:
    """Airflow's configured auth manager, as the api-server creates it."""
    from airflow.api_fastapi.app import create_auth_manager

    return create_auth_manager()


@pytest.fixture
def client(auth_manager: Any) -> TestClient:
    """A client of careflow's app carrying a real Airflow JWT of an admin."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from careflow.airflow.api import app

    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="ops-kim", role="admin"))
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def simulated(engine: Engine, workflows_dir: Path) -> Iterator[Journey]:
    """implant-aftercare published, and a week of its runs over five patients.

    p1 gets the reminder; p3 has a follow-up booked (condition false); p6 has no care consent;
    p7 has no phone number; p2's surgery is on Wednesday, so its reminder waits for Monday's window.
    """
    from careflow.publishing import publish_paths
    from support import EXAMPLES

    [published] = publish_paths([EXAMPLES / f"{WORKFLOW}.json"], workflows_dir=workflows_dir)
    assert published.action == "published" and published.version == 1
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 14))
    c.completed("p2", kst(2025, 3, 5, 11))
    c.completed("p3", kst(2025, 3, 3, 15))
    c.appointment("p3-next", "p3", type="checkup", status="scheduled", scheduled_at=kst(2025, 3, 20, 10))
    c.completed("p6", kst(2025, 3, 3, 16), consent_messages=False)
    c.completed("p7", kst(2025, 3, 3, 17), phone=None)
    c.load(engine)
    with FakeProviderServer() as server:
        journey = Journey(compile_doc(example(WORKFLOW), version=1), engine, server)
        journey.run_days(kst(2025, 3, 3), kst(2025, 3, 9))
        yield journey
