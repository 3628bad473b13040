"""An *empty* database on Postgres and SQLite (``db_url`` in tests/conftest.py is already upgraded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text


@pytest.fixture(params=["postgres", "sqlite"])
def empty_db_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A database with no table and no view at all; ``CAREFLOW_DB_URL`` points at it."""
    from careflow.store.db import dispose_engines

    if request.param == "postgres":
        url = request.getfixturevalue("pg_server_url")
        dispose_engines()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    dispose_engines()
    yield url
    dispose_engines()
