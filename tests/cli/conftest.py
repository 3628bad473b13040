"""What the command tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import EXAMPLES, airflow_env, run_careflow


@pytest.fixture
def published(tmp_path: Path) -> dict[str, str]:
    """A fresh Airflow home (its metadata DB not migrated) and implant-aftercare published; the environment."""
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_env(
        home,
        tmp_path / "workflows",
        CAREFLOW_DB_URL=f"sqlite:///{tmp_path / 'careflow.db'}",
        CAREFLOW_REDIS_URL="",
        AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR",
    )
    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES / "implant-aftercare.json"))):
        result = run_careflow(env, *argv)
        assert result.returncode == 0, result.stderr
    return env
