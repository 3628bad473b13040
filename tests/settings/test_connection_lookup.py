"""How careflow asks Airflow for a connection: in a task, outside one, and read once for a task's threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from careflow import settings


class _NotDefined(Exception):
    pass


@pytest.fixture
def airflow_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Airflow's two lookups, both saying "not defined"; yields which of them were asked, in order."""
    from airflow.models.connection import Connection
    from airflow.sdk import BaseHook

    asked: list[str] = []

    def task_sdk(conn_id: str) -> Any:
        asked.append(f"sdk:{conn_id}")
        raise _NotDefined(conn_id)

    def metadata(conn_id: str, team_name: str | None = None) -> Any:
        asked.append(f"metadata:{conn_id}")
        raise _NotDefined(conn_id)

    monkeypatch.delenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_ALERTS", raising=False)
    monkeypatch.setattr(BaseHook, "get_connection", staticmethod(task_sdk))
    monkeypatch.setattr(
        Connection, "get_connection_from_secrets", classmethod(lambda cls, *a, **k: metadata(*a, **k))
    )
    return asked


def test_in_a_task_a_connection_airflow_does_not_know_is_not_asked_for_twice(
    monkeypatch: pytest.MonkeyPatch, airflow_lookups: list[str]
) -> None:
    from airflow.sdk.execution_time import task_runner

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
    assert settings.get_connection("careflow_alerts") is None
    assert airflow_lookups == ["sdk:careflow_alerts"]


def test_outside_a_task_the_metadata_database_is_asked_too(
    monkeypatch: pytest.MonkeyPatch, airflow_lookups: list[str]
) -> None:
    from airflow.sdk.execution_time import task_runner

    monkeypatch.delattr(task_runner, "SUPERVISOR_COMMS", raising=False)
    assert settings.get_connection("careflow_alerts") is None
    assert airflow_lookups == ["sdk:careflow_alerts", "metadata:careflow_alerts"]


def test_connections_read_once_answer_every_thread_from_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = '{"conn_type": "http", "host": "https://chat.example.org/hook"}'
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", hook)
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_REDIS", raising=False)
    real = settings._look_up
    looked_up_on: list[str] = []

    def look_up(conn_id: str) -> Any:
        looked_up_on.append(threading.current_thread().name)
        return real(conn_id)

    monkeypatch.setattr(settings, "_look_up", look_up)
    seen: list[Any] = []
    with settings.connections_read_once("careflow_alerts", "careflow_redis"):
        monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", '{"conn_type": "http", "host": "https://other"}')
        reader = threading.Thread(
            target=lambda: seen.extend(
                [settings.get_connection("careflow_alerts"), settings.get_connection("careflow_redis")]
            ),
            name="reader",
        )
        reader.start()
        reader.join()
    after = settings.get_connection("careflow_alerts")

    alerts, redis_conn = seen
    assert alerts is not None and alerts.host == "https://chat.example.org/hook"
    assert redis_conn is None  # not defined: read once as such, not asked again
    assert looked_up_on == ["MainThread", "MainThread", "MainThread"], (
        looked_up_on
    )  # the last: after the block
    assert after is not None and after.host == "https://other"
