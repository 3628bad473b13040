"""Alerts reach the careflow_alerts webhook with workflow, node, run and link, and never a patient."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from careflow.airflow import alerts
from careflow.airflow.factory import build_dag
from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience import events
from careflow.resilience.cache import forget_caches
from careflow.store.db import dispose_engines
from careflow.store.migrations import upgrade
from support import free_port

from .conftest import START, WORKFLOW, Received, clinic_data, compiled_workflow, patient_strings

BASE = "https://airflow.clinic.example"


@pytest.fixture(autouse=True)
def _ui_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE)


def _context(run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(conf={"careflow_clock": run_id.split("__")[-1]}, run_id=run_id),
        "run_id": run_id,
        "data_interval_start": None,
        **extra,
    }


def _simulated_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Engine, Any, Any, dict[str, Any]]:
    """careflow's database with the demo clinic, the test workflow's DAG, and a simulated run's context."""
    url = f"sqlite:///{tmp_path / 'careflow.db'}"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    monkeypatch.setenv("CAREFLOW_BREAKER_DB", str(tmp_path / "breakers.db"))
    dispose_engines()
    forget_caches()  # the sent keys of another test's database
    engine = create_engine(url)
    upgrade(engine)
    data = clinic_data(engine)
    dag = build_dag(compiled_workflow())
    run_id = f"scheduled__{(START + timedelta(days=1)).isoformat()}"
    context = _context(run_id)
    context["dag_run"].conf = {
        "careflow_clock": (START + timedelta(days=1)).isoformat(),
        "careflow_simulated": True,
    }
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", "true")  # as careflow simulate sets it
    return engine, data, dag, context


def test_a_refused_token_alerts_once_with_ids_and_a_link_and_no_patient_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    _, data, dag, context = _simulated_day(tmp_path, monkeypatch)
    run_id = context["run_id"]
    with FakeProviderServer() as provider:
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAREFLOW_MESSAGING",
            json.dumps({"conn_type": "http", "host": provider.url, "password": "not-the-token"}),
        )
        dag.get_task("booked").execute(context)
        dag.get_task("hour_later").execute(context)
        notice = dag.get_task("notice")
        with pytest.raises(AirflowFailException) as failed:
            notice.execute(context)
        assert not provider.messages()
        # Airflow then calls the task's failure callbacks: the same problem is not alerted twice
        ti = SimpleNamespace(dag_id=dag.dag_id, task_id="notice", run_id=run_id, try_number=1)
        for callback in notice.on_failure_callback:
            callback({"ti": ti, "dag": dag, "exception": failed.value})
    dispose_engines()

    assert len(webhook) == 1, webhook
    (alert,) = webhook
    assert "refused careflow's credentials" in alert["text"]
    assert f"workflow {WORKFLOW['id']}" in alert["text"] and "node notice" in alert["text"]
    link = f"{BASE}/dags/careflow__{WORKFLOW['id']}/runs/"
    assert link in alert["text"] and alert["text"].endswith("/tasks/notice")
    assert any(block["type"] == "header" for block in alert["blocks"])
    posted = json.dumps(webhook, ensure_ascii=False)
    leaks = [s for s in patient_strings(data) if s in posted]
    assert not leaks, f"patient data in the alert: {leaks[:3]}"


def _at_notice(engine: Engine) -> tuple[dict[str, int], dict[str, int]]:
    """The steps at the action node by status, and its ledger rows by status."""
    with engine.connect() as conn:
        steps = conn.execute(
            text("SELECT status, count(*) FROM careflow_steps WHERE node_id = 'notice' GROUP BY status")
        )
        messages = conn.execute(
            text("SELECT status, count(*) FROM careflow_messages WHERE node_id = 'notice' GROUP BY status")
        )
        return dict(steps.tuples().all()), dict(messages.tuples().all())


def test_a_missing_messaging_connection_alerts_at_once_and_keeps_its_messages_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    engine, data, dag, context = _simulated_day(tmp_path, monkeypatch)
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", raising=False)
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")  # careflow_alerts is in the environment
    dag.get_task("booked").execute(context)
    dag.get_task("hour_later").execute(context)
    notice = dag.get_task("notice")
    due, _ = _at_notice(engine)
    assert due.get("pending"), due  # messages are due at the action node
    # The attempt fails and Airflow retries it (a secrets backend that did not answer looks the
    # same), but the alert goes out now, not after the retries' backoff.
    with pytest.raises(AirflowException) as failed:
        notice.execute(context)
    assert not isinstance(failed.value, AirflowFailException)
    assert "connection 'careflow_messaging' is not defined: add it" in str(failed.value)
    assert "AIRFLOW_CONN_CAREFLOW_MESSAGING=" in str(failed.value)
    assert "messages stay due" in str(failed.value)
    assert len(webhook) == 1, webhook
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id="notice", run_id=context["run_id"], try_number=1)
    for callback in notice.on_failure_callback:
        callback({"ti": ti, "dag": dag, "exception": failed.value})

    # One alert (the task's failure is not a second one), which says the connection is missing,
    # not that the provider refused a token.
    assert len(webhook) == 1, webhook
    (alert,) = webhook
    assert "the careflow_messaging connection is not defined" in alert["text"]
    assert "Add careflow_messaging" in alert["text"] and "refused" not in alert["text"]
    assert f"workflow {WORKFLOW['id']}" in alert["text"] and alert["text"].endswith("/tasks/notice")
    posted = json.dumps(webhook, ensure_ascii=False)
    assert not [s for s in patient_strings(data) if s in posted]

    # Nothing was claimed: the steps are as they were, the ledger has no row of the node.
    assert _at_notice(engine) == (due, {})
    with FakeProviderServer() as provider:
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAREFLOW_MESSAGING",
            json.dumps({"conn_type": "http", "host": provider.url, "password": provider.token}),
        )
        counts = notice.execute(context)  # the connection added: the same run sends them all
        assert counts["sent"] == due["pending"] == len(provider.messages())
    dispose_engines()


def test_a_messaging_connection_without_a_host_fails_the_task_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    engine, _, dag, context = _simulated_day(tmp_path, monkeypatch)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps({"conn_type": "http", "password": "token"})
    )
    dag.get_task("booked").execute(context)
    dag.get_task("hour_later").execute(context)
    due, _ = _at_notice(engine)
    # Defined but unusable: no retry would find it otherwise, so Airflow does not retry.
    with pytest.raises(AirflowFailException) as failed:
        dag.get_task("notice").execute(context)
    assert "messages stay due" in str(failed.value)
    assert len(webhook) == 1 and "the careflow_messaging connection is not usable" in webhook[0]["text"]
    assert _at_notice(engine) == (due, {})
    dispose_engines()


def test_breaker_open_and_redis_fallback_alert_once_per_cooldown(webhook: list[dict[str, Any]]) -> None:
    for _ in range(3):
        events.emit(
            "breaker_transition",
            breaker="default:sms",
            from_state="closed",
            to_state="open",
            reason="failure rate 0.62 over 40 calls",
            generation=4,
            by=None,
            at=0.0,
            backend="redis",
        )
    events.emit(
        "breaker_transition",
        breaker="default:sms",
        from_state="open",
        to_state="half_open",
        reason="probe",
        generation=5,
        by=None,
        at=0.0,
        backend="redis",
    )
    refused = (
        "ConnectionError: its TLS certificate was refused (self-signed certificate); "
        "trust the CA that signed it with SSL_CERT_FILE or SSL_CERT_DIR"
    )
    events.emit("breaker_redis_fallback", url="rediss://127.0.0.1:6399/0", error=refused)
    # posted off the send path, on their own threads
    deadline = time.monotonic() + 10
    while len(webhook) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    kinds = sorted(a["text"] for a in webhook)
    assert len(kinds) == 2, kinds
    assert any("circuit breaker default:sms opened" in text for text in kinds), kinds
    assert any("Redis lost: circuit breakers fall back" in text and refused in text for text in kinds), kinds


def _up_to_the_notice(monkeypatch: pytest.MonkeyPatch, dag: Any, context: Any, provider: Any) -> None:
    """Point ``careflow_messaging`` at ``provider`` and run the simulated day's tasks before its action ``notice``."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING",
        json.dumps({"conn_type": "http", "host": provider.url, "password": provider.token}),
    )
    dag.get_task("booked").execute(context)
    dag.get_task("hour_later").execute(context)


def test_an_action_task_looks_its_connections_up_on_its_main_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    """The breaker opens in the send process; its alert is raised on the task's reader thread and
    posted from a thread of its own, to the webhook the task's main thread read: under ``airflow
    dags test`` a lookup from another thread can lose the main thread's report to Airflow."""
    import threading

    from airflow.sdk.exceptions import AirflowException

    from careflow import settings

    _, _, dag, context = _simulated_day(tmp_path, monkeypatch)
    monkeypatch.delenv("CAREFLOW_REDIS_URL")  # careflow_redis is looked up too (and not defined)
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_REDIS", raising=False)
    real_lookup = settings._look_up
    looked_up_on: list[tuple[str, str]] = []

    def lookup(conn_id: str) -> Any:
        looked_up_on.append((conn_id, threading.current_thread().name))
        return real_lookup(conn_id)

    monkeypatch.setattr(settings, "_look_up", lookup)
    with FakeProviderServer(error_rate=1.0) as provider:
        _up_to_the_notice(monkeypatch, dag, context, provider)
        looked_up_on.clear()
        with pytest.raises(AirflowException, match="still pending"):
            dag.get_task("notice").execute(context)
    dispose_engines()
    deadline = time.monotonic() + 10
    while not webhook and time.monotonic() < deadline:
        time.sleep(0.05)

    assert [a["text"] for a in webhook if "opened" in a["text"]], webhook
    looked_up = {conn_id for conn_id, _ in looked_up_on}
    assert {"careflow_alerts", "careflow_redis"} <= looked_up, looked_up_on
    assert {thread for _, thread in looked_up_on} == {threading.main_thread().name}, looked_up_on


def test_an_action_task_does_not_look_up_careflow_redis_when_the_environment_names_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CAREFLOW_REDIS_URL`` comes first (``settings.redis_url``): the connection is never asked for."""
    from careflow import settings
    from careflow.resilience.breaker import forget_breakers

    _, _, dag, context = _simulated_day(tmp_path, monkeypatch)  # CAREFLOW_REDIS_URL="" (embedded)
    forget_breakers()  # a breaker an earlier test opened stays open in this process
    real_lookup = settings._look_up
    looked_up: list[str] = []

    def lookup(conn_id: str) -> Any:
        looked_up.append(conn_id)
        return real_lookup(conn_id)

    monkeypatch.setattr(settings, "_look_up", lookup)
    with FakeProviderServer() as provider:
        _up_to_the_notice(monkeypatch, dag, context, provider)
        looked_up.clear()
        assert dag.get_task("notice").execute(context)["sent"] >= 1
    dispose_engines()
    forget_breakers()

    assert "careflow_alerts" in looked_up and "careflow_redis" not in looked_up, looked_up


def test_an_alert_posted_in_the_background_reads_its_webhook_before_its_thread_starts(
    monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    """Outside an action task too (a trigger task losing Redis): the alert's own thread only posts."""
    import threading

    from careflow import settings

    real_lookup = settings._look_up
    looked_up_on: list[str] = []

    def lookup(conn_id: str) -> Any:
        if conn_id == "careflow_alerts":
            looked_up_on.append(threading.current_thread().name)
        return real_lookup(conn_id)

    monkeypatch.setattr(settings, "_look_up", lookup)
    alerts.send_in_background(alerts.Alert(kind="breaker_redis_fallback", title="Redis lost")).join(10)

    assert len(webhook) == 1 and "Redis lost" in webhook[0]["text"], webhook
    assert looked_up_on == [threading.main_thread().name], looked_up_on


@pytest.mark.parametrize(
    ("text", "told"),
    [
        (
            "run scheduled__2026-03-04T09:00:00+00:00 stopped at 010-5551-2345",
            "run scheduled__2026-03-04T09:00:00+00:00 stopped at <number>",
        ),
        ("due 2026-03-04 09:00:00, to +82 10 5551 2345", "due 2026-03-04 09:00:00, to <number>"),
        ("manual__2026-12-03T22:47:18.123456Z", "manual__2026-12-03T22:47:18.123456Z"),
        ("010-2026-0304 and 2026-03-04 01055512345", "<number> and 2026-03-04 <number>"),
        ("not a date: 2026-13-40", "not a date: <number>"),
        (
            "the proxy http://10.20.0.7:3128 refused; redis://192.168.100.250:6379/2",
            "the proxy http://10.20.0.7:3128 refused; redis://192.168.100.250:6379/2",
        ),
        ("not an address: 010.5551.2345 or 82.10.5551.2345", "not an address: <number> or <number>"),
        ("nor 10.20.300.7 nor 1.2.3.4.5", "nor <number> nor <number>"),
    ],
)
def test_an_alert_tells_dates_and_addresses_and_masks_phone_numbers(text: str, told: str) -> None:
    assert alerts.scrub(text) == told


def test_task_failure_alert_names_the_run_and_masks_contact_data(webhook: list[dict[str, Any]]) -> None:
    ti = SimpleNamespace(
        dag_id="careflow__implant-aftercare", task_id="c1", run_id="scheduled__2026-03-04", try_number=2
    )
    from airflow.sdk.exceptions import AirflowException

    alerts.TASK_FAILED(
        {"ti": ti, "exception": AirflowException("lookup for 010-5551-2345 <kim@example.com> failed")}
    )
    alerts.TASK_FAILED({"ti": ti, "exception": ValueError("row (홍길동, 010-5551-2345)")})
    dag_run = SimpleNamespace(dag_id="careflow__implant-aftercare", run_id="scheduled__2026-03-04")
    alerts.DAG_RUN_FAILED({"dag_run": dag_run, "reason": "task_failure"})

    first, second, run = webhook
    assert first["text"].startswith(
        ":rotating_light: careflow: a task failed (workflow implant-aftercare, node c1, run scheduled__2026-03-04)"
    )
    assert "AirflowException: lookup for <number> <<email>> failed" in first["text"]
    assert first["text"].endswith(
        f"{BASE}/dags/careflow__implant-aftercare/runs/scheduled__2026-03-04/tasks/c1"
    )
    assert {"type": "mrkdwn", "text": "*Attempt*\n`2`"} in first["blocks"][1]["fields"]
    # a foreign exception's message may quote row values: only its type is told
    assert "ValueError" in second["text"] and "010" not in second["text"] and "홍길동" not in second["text"]
    assert "a DAG run failed" in run["text"] and run["text"].endswith("/runs/scheduled__2026-03-04")


def test_a_database_error_is_told_by_its_condition_never_by_its_message(
    webhook: list[dict[str, Any]], pg_server_url: str
) -> None:
    """SQLAlchemy wraps every driver error in a few classes; the driver's own names the condition
    (here a careflow_db that became a read-only standby), and its message, which may quote a row,
    stays in the task's log."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(pg_server_url)
    with pytest.raises(DBAPIError) as failed, engine.connect() as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        conn.execute(text("CREATE TEMPORARY TABLE x (phone text)"))  # refused in a read-only transaction
    engine.dispose()
    ti = SimpleNamespace(dag_id="careflow__implant-aftercare", task_id="c1", run_id="r", try_number=1)
    alerts.TASK_FAILED({"ti": ti, "exception": failed.value})

    [alert] = webhook
    assert "InternalError (ReadOnlySqlTransaction)" in alert["text"]
    assert "CREATE" not in alert["text"] and "read-only transaction" not in alert["text"]


def test_a_careflow_database_that_takes_no_writes_or_cannot_be_reached_is_named_by_the_alert(
    webhook: list[dict[str, Any]], pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that failed because careflow's database became a standby, or went away, gets an
    alert that names the database and where its URL came from, in careflow's words: what to fix
    without opening the task's log. The driver's message still stays out of it."""
    from sqlalchemy.exc import DBAPIError

    from careflow.store.db import get_engine

    ti = SimpleNamespace(dag_id="careflow__implant-aftercare", task_id="a1", run_id="r", try_number=3)
    standby = f"{pg_server_url}?options=-cdefault_transaction_read_only%3Don"
    nobody = free_port()
    for url in (standby, f"postgresql://careflow:hunter2@127.0.0.1:{nobody}/careflow"):
        monkeypatch.setenv("CAREFLOW_DB_URL", url)
        try:
            with pytest.raises(DBAPIError) as failed, get_engine().begin() as conn:
                conn.execute(text("CREATE TEMPORARY TABLE x (phone text)"))
        finally:
            dispose_engines()
        alerts.TASK_FAILED({"ti": ti, "exception": failed.value})

    read_only, unreachable = (alert["text"] for alert in webhook)
    database = pg_server_url.rsplit("/", 1)[1]
    assert "InternalError (ReadOnlySqlTransaction): careflow's database " in read_only
    assert (
        f"/{database}?options=-cdefault_transaction_read_only%3Don (from CAREFLOW_DB_URL) takes no writes; "
        "it is a standby, or its sessions are read-only: name the primary"
    ) in read_only
    assert "read-only transaction" not in read_only and "CREATE" not in read_only
    assert (
        "OperationalError: cannot connect to careflow's database "
        f"postgresql+psycopg2://careflow:***@127.0.0.1:{nobody}/careflow (from CAREFLOW_DB_URL)"
    ) in unreachable
    assert "hunter2" not in unreachable and "connection to server" not in unreachable


def test_a_careflow_database_out_of_disk_space_is_named_by_the_alert(
    webhook: list[dict[str, Any]], pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that failed because the disk of careflow's database is full (Postgres' own error,
    raised by the server) gets an alert that says so and names the database; the driver's message,
    which names the server's files, stays in the task's log."""
    from sqlalchemy.exc import DBAPIError

    from careflow.store.db import get_engine

    ti = SimpleNamespace(dag_id="careflow__implant-aftercare", task_id="a1", run_id="r", try_number=1)
    monkeypatch.setenv("CAREFLOW_DB_URL", pg_server_url)
    try:
        with pytest.raises(DBAPIError) as failed, get_engine().begin() as conn:
            conn.execute(
                text(
                    "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'disk_full', "
                    "MESSAGE = 'could not extend file \"base/16384/2619\": No space left on device'; END $$"
                )
            )
    finally:
        dispose_engines()
    alerts.TASK_FAILED({"ti": ti, "exception": failed.value})

    (alert,) = webhook
    database = pg_server_url.rsplit("/", 1)[1]
    assert "OperationalError (DiskFull): careflow's database " in alert["text"]
    assert (
        f"/{database} (from CAREFLOW_DB_URL) has no space left; free space on the disk that holds it"
    ) in alert["text"]
    assert "base/16384" not in alert["text"] and "No space left on device" not in alert["text"]


def test_the_dag_has_failure_callbacks_and_a_deadline_only_when_configured() -> None:
    plain = build_dag(compiled_workflow())
    assert plain.on_failure_callback is alerts.DAG_RUN_FAILED
    assert not plain.deadline
    for task in plain.tasks:
        assert alerts.TASK_FAILED in task.on_failure_callback

    doc = json.loads(json.dumps(WORKFLOW))
    doc["settings"] = {"run_deadline_hours": 6}
    (deadline,) = build_dag(compiled_workflow(doc)).deadline
    assert type(deadline.reference).__name__ == "DagRunQueuedAtDeadline"
    assert deadline.interval == timedelta(hours=6)
    assert deadline.callback.path == "careflow.airflow.alerts.run_deadline_missed"
    assert deadline.callback.kwargs == {"workflow_id": WORKFLOW["id"], "hours": 6.0}


def test_the_deadline_callback_posts_from_the_triggerer_context(webhook: list[dict[str, Any]]) -> None:
    context = {
        "dag_run": {
            "dag_id": "careflow__booking-followup",
            "dag_run_id": "scheduled__2026-03-04",
            "queued_at": "2026-03-04T00:00:05Z",
        },
        "deadline": {"id": "d1"},
    }
    asyncio.run(alerts.run_deadline_missed(workflow_id="booking-followup", hours=6.0, context=context))
    (alert,) = webhook
    assert "has not finished 6 hours after it was queued" in alert["text"]
    assert alert["text"].endswith(f"{BASE}/dags/careflow__booking-followup/runs/scheduled__2026-03-04")


@pytest.mark.parametrize(
    ("states", "alerted"),
    [
        # every node task ended; careflow_wake waits in the triggerer for the next wake
        ({"t1": "success", "a1": "failed", "a2": "upstream_failed", "careflow_wake": "deferred"}, False),
        ({"t1": "success", "a1": "running", "careflow_wake": None}, True),  # a node task is behind
        ({"t1": "success", "a1": "up_for_retry", "careflow_wake": None}, True),
        ({}, True),  # nothing known of the run
    ],
)
def test_the_deadline_is_not_alerted_for_a_run_that_only_waits_for_its_wake(
    webhook: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, states: dict[str, Any], alerted: bool
) -> None:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked: list[dict[str, Any]] = []

    def get_task_states(**kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs)
        return {"scheduled__2026-03-04": states} if states else {}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    context = {"dag_run": {"dag_id": "careflow__booking-followup", "dag_run_id": "scheduled__2026-03-04"}}
    asyncio.run(alerts.run_deadline_missed(workflow_id="booking-followup", hours=6.0, context=context))
    assert asked == [{"dag_id": "careflow__booking-followup", "run_ids": ["scheduled__2026-03-04"]}]
    assert len(webhook) == (1 if alerted else 0)


def test_a_proxy_that_refuses_the_tunnel_alerts_once_naming_the_proxy_and_keeps_the_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from tests.providers.test_proxy import PROXY_ENV, TunnelProxy

    engine, data, dag, context = _simulated_day(tmp_path, monkeypatch)
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    proxy = TunnelProxy(credentials="careflow:right")
    try:
        with FakeProviderServer() as provider:
            port = provider.url.rsplit(":", 1)[1]
            # the webhook, on this machine, is reached directly all the same (a loopback address)
            monkeypatch.setenv("HTTP_PROXY", proxy.url("careflow:wrong@"))
            monkeypatch.setenv(
                "AIRFLOW_CONN_CAREFLOW_MESSAGING",
                json.dumps({"conn_type": "http", "host": f"http://provider.test:{port}", "password": "t"}),
            )
            dag.get_task("booked").execute(context)
            dag.get_task("hour_later").execute(context)
            with pytest.raises(AirflowFailException) as failed:
                dag.get_task("notice").execute(context)  # fails at once: retries would find it as it is
            assert not provider.messages()
    finally:
        proxy.close()
    dispose_engines()

    assert f"the proxy http://127.0.0.1:{proxy.port} refused a tunnel" in str(failed.value)
    assert "HTTPS_PROXY" in str(failed.value) and "wrong" not in str(failed.value)
    assert len(webhook) == 1, webhook
    (alert,) = webhook
    assert "the proxy refused a tunnel to the messaging provider" in alert["text"]
    assert f"the proxy http://127.0.0.1:{proxy.port} refused" in alert["text"]
    assert "407 Proxy Authentication Required" in alert["text"] and "wrong" not in alert["text"]
    assert f"workflow {WORKFLOW['id']}" in alert["text"] and "node notice" in alert["text"]
    with engine.connect() as conn:  # nothing lost: the node's messages wait for a working proxy
        statuses = conn.execute(text("SELECT status FROM careflow_messages")).scalars().all()
    assert statuses and set(statuses) == {"pending"}
    posted = json.dumps(webhook, ensure_ascii=False)
    assert not [s for s in patient_strings(data) if s in posted]


@pytest.mark.redis
def test_a_redis_cluster_with_a_database_other_than_0_fails_the_task_at_once_with_an_alert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]], redis_cluster_url: str
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from careflow.resilience.breaker import forget_breakers
    from careflow.resilience.redis_link import forget_links

    engine, data, dag, context = _simulated_day(tmp_path, monkeypatch)
    monkeypatch.setenv("CAREFLOW_REDIS_URL", redis_cluster_url.rsplit("/", 1)[0] + "/2")
    forget_breakers()
    forget_links()
    try:
        with FakeProviderServer() as provider:
            monkeypatch.setenv(
                "AIRFLOW_CONN_CAREFLOW_MESSAGING",
                json.dumps({"conn_type": "http", "host": provider.url, "password": provider.token}),
            )
            dag.get_task("booked").execute(context)
            dag.get_task("hour_later").execute(context)
            with pytest.raises(AirflowFailException) as failed:
                dag.get_task("notice").execute(context)
            assert not provider.messages()
    finally:
        forget_breakers()
        forget_links()
        dispose_engines()

    assert "careflow_redis" in str(failed.value) and "database 2" in str(failed.value)
    (alert,) = webhook
    assert "the careflow_redis connection is not usable" in alert["text"]
    assert "Redis Cluster, which has database 0 only" in alert["text"]
    with engine.connect() as conn:  # nothing was claimed: the node's messages stay due
        assert not conn.execute(text("SELECT count(*) FROM careflow_messages")).scalar()
        steps = conn.execute(text("SELECT status FROM careflow_steps WHERE node_id = 'notice'")).scalars()
        assert set(steps) == {"pending"}


def test_without_the_connection_alerts_are_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_ALERTS", raising=False)
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    assert alerts.send_alert(alerts.Alert(kind="breaker_open", title="circuit breaker x opened")) is False
    assert "circuit breaker x opened" in caplog.text


def test_an_alert_goes_as_careflows_own_json_with_the_headers_the_connection_names(
    webhook: Received, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"format": "json"`` for an on-call service or a receiver of one's own, and its key in a header."""
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_CAREFLOW_ALERTS"])
    conn["extra"] = {"format": "json", "headers": {"Authorization": "GenieKey k-123", "X-Team": "clinic-ops"}}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", json.dumps(conn))
    alert = alerts.Alert(
        kind="breaker_open",
        title="circuit breaker default:sms opened",
        workflow_id=WORKFLOW,
        node_id="a1",
        detail="Sends through it wait until it half-opens (consecutive_failures).",
        facts={"Breaker": "default:sms"},
    )
    assert alerts.send_alert(alert) is True
    ((headers,), (body,)) = (webhook.headers, webhook)
    assert (headers["Authorization"], headers["X-Team"], headers["Content-Type"]) == (
        "GenieKey k-123",
        "clinic-ops",
        "application/json",
    )
    assert body == {
        "source": "careflow",
        "kind": "breaker_open",
        "title": "circuit breaker default:sms opened",
        "summary": f"careflow: circuit breaker default:sms opened (workflow {WORKFLOW}, node a1): Sends "
        "through it wait until it half-opens (consecutive_failures).",
        "workflow_id": WORKFLOW,
        "node_id": "a1",
        "run_id": None,
        "detail": "Sends through it wait until it half-opens (consecutive_failures).",
        "link": None,
        "facts": {"Breaker": "default:sms"},
    }


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (
            {"format": "xml"},
            "the careflow_alerts connection's format 'xml' is not one careflow posts (slack, json)",
        ),
        (
            {"format": ["json"]},
            "the careflow_alerts connection's format ['json'] is not one careflow posts (slack, json)",
        ),
        (
            {"headers": ["Authorization: key"]},
            "the careflow_alerts connection's headers must be an object of header names to text values of one "
            "line (list given)",
        ),
        (
            {"headers": {"Authorization": "key\r\nX-Injected: 1"}},
            "the careflow_alerts connection's headers must be an object of header names to text values of one "
            "line (an object with other values given)",
        ),
    ],
)
def test_an_alerts_connection_setting_careflow_cannot_use_is_logged_and_the_alert_still_posted(
    webhook: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    extra: dict[str, Any],
    said: str,
) -> None:
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_CAREFLOW_ALERTS"])
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", json.dumps({**conn, "extra": extra}))
    assert alerts.send_alert(alerts.Alert(kind="breaker_open", title="circuit breaker x opened")) is True
    assert said in caplog.text
    ((posted),) = webhook
    assert "blocks" in posted and "circuit breaker x opened" in posted["text"]  # Slack's shape


def test_alerts_go_through_the_proxy_the_alerts_connection_names(
    monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    import os
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    forwarded: list[str] = []

    class Forward(BaseHTTPRequestHandler):
        """A forward proxy for plain http: its request line names the whole URL, which it passes on."""

        def do_POST(self) -> None:
            forwarded.append(self.path)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = urllib.request.Request(self.path, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                request, timeout=5
            ) as answer:
                self.send_response(answer.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        conn = json.loads(os.environ["AIRFLOW_CONN_CAREFLOW_ALERTS"])
        conn["extra"] = {"proxies": {"http": f"http://127.0.0.1:{proxy.server_address[1]}"}}
        monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", json.dumps(conn))
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the environment's, not used: nothing there
        assert alerts.send_alert(alerts.Alert(kind="breaker_open", title="circuit breaker x opened")) is True
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert forwarded == [conn["host"]]
    assert len(webhook) == 1 and "circuit breaker x opened" in webhook[0]["text"]


def _configuration_alert(
    run_id: str = "scheduled__2026-03-04T00:00:00+00:00", problem: str = "connection_missing", **fields: Any
) -> None:
    alerts.on_event(
        "provider_configuration_error",
        workflow_id=WORKFLOW["id"],
        node_id="notice",
        run_id=run_id,
        channel="sms",
        connection="careflow_messaging",
        problem=problem,
        **fields,
    )


@pytest.mark.parametrize(
    ("result", "error", "title"),
    [
        (
            {"status_code": 401, "error_code": "unauthorized"},
            "the provider refused careflow's credentials (HTTP 401) while workflow w node n was sending: "
            "fix the token of the careflow_messaging connection",
            "the messaging provider refused careflow's credentials",
        ),
        (
            {"status_code": 404, "error_code": "http_404"},
            "the provider answered HTTP 404 to POST /v1/messages while workflow w node n was sending: "
            "check the base URL (host) of the careflow_messaging connection",
            "the messaging provider answered HTTP 404 to careflow's messages",
        ),
        (
            {"error_code": "tls_certificate", "error_message": "the server's TLS certificate was refused: x"},
            "the server's TLS certificate was refused: x while workflow w node n was sending: trust the CA "
            "that signed it (SSL_CERT_FILE) or fix the host of the careflow_messaging connection",
            "the TLS certificate of the messaging provider (or its proxy) is not trusted",
        ),
        (
            {
                "error_code": "proxy_refused",
                "error_message": "the proxy http://proxy.internal:3128 refused …",
            },
            "the proxy http://proxy.internal:3128 refused … while workflow w node n was sending: fix the proxy "
            "(the careflow_messaging connection's proxies or the workers' HTTPS_PROXY; its user and password)",
            "the proxy refused a tunnel to the messaging provider",
        ),
    ],
)
def test_each_configuration_problem_says_what_to_fix_in_the_error_and_the_alert(
    result: dict[str, Any], error: str, title: str, webhook: list[dict[str, Any]]
) -> None:
    from careflow.engine.actions import _configuration_stop
    from careflow.providers.client import Outcome, SendResult

    stop = _configuration_stop(SendResult("k", Outcome.CONFIGURATION, **result), "workflow w node n")
    assert str(stop) == error
    _configuration_alert(problem=stop.problem, error=str(stop))
    (alert,) = webhook
    assert title in alert["text"]
    if result.get("status_code") != 401:  # the others carry the error's own words
        assert error in alert["text"]


@pytest.mark.parametrize("redis", ["shared", "stopped", "none"])
def test_each_attempt_of_one_problem_alerts_once_where_redis_is_shared(
    redis: str, monkeypatch: pytest.MonkeyPatch, webhook: list[dict[str, Any]]
) -> None:
    """Each retry of a task runs in a new process: Redis lets them agree; without it each alerts."""
    import uuid

    from careflow.resilience.redis_link import forget_links

    url = {"shared": "redis://127.0.0.1:6379/0", "stopped": "redis://127.0.0.1:6390/0", "none": ""}[redis]
    monkeypatch.setenv("CAREFLOW_REDIS_URL", url)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", f"cftest:{uuid.uuid4().hex[:12]}")
    forget_links()
    try:
        for _attempt in range(3):
            monkeypatch.setattr("careflow.airflow.alerts._recent", {})  # a new process
            _configuration_alert()
        _configuration_alert(run_id="scheduled__2026-03-05T00:00:00+00:00")  # another run
    finally:
        forget_links()
    texts = [alert["text"] for alert in webhook]
    missing = [text for text in texts if "the careflow_messaging connection is not defined" in text]
    assert len(missing) == (2 if redis == "shared" else 4), texts
    # Redis out of reach is told once, as always; nothing else went out.
    assert len(texts) - len(missing) == (redis == "stopped"), texts


@pytest.mark.parametrize(
    ("states", "alerted"),
    [
        # hour_later failed and alerted on its own; notice is its consequence: the run's alert
        # would tell it again
        ({"booked": "success", "hour_later": "failed", "notice": "upstream_failed"}, False),
        ({"booked": "success", "notice": "failed", "careflow_wake": "failed"}, False),
        ({"booked": "success", "notice": "success", "careflow_wake": "success"}, True),  # none failed
        ({"booked": "success", "gone": "failed"}, True),  # a task no longer in the DAG
        (None, True),  # the states could not be read
    ],
)
def test_a_failed_run_is_alerted_once_not_again_after_its_task(
    webhook: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    states: dict[str, Any] | None,
    alerted: bool,
) -> None:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    def get_task_states(**kwargs: Any) -> dict[str, Any]:
        if states is None:
            raise ConnectionError("no supervisor to ask")
        assert kwargs == {"dag_id": "careflow__booking-followup", "run_ids": ["scheduled__2026-03-04"]}
        return {"scheduled__2026-03-04": states}

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    dag = build_dag(compiled_workflow())
    run = SimpleNamespace(dag_id="careflow__booking-followup", run_id="scheduled__2026-03-04")
    alerts.DAG_RUN_FAILED({"dag": dag, "dag_run": run, "run_id": run.run_id, "reason": "task_failure"})
    assert len(webhook) == (1 if alerted else 0)


def test_a_failed_run_is_alerted_when_airflow_hands_the_callback_its_serialized_dag(
    webhook: list[dict[str, Any]],
) -> None:
    # `airflow dags test` (DAG.test) runs the run's failure callbacks with the scheduler's
    # SerializedDAG in the context, which has no Jinja environment to render a notifier with.
    from airflow.serialization.serialized_objects import DagSerialization

    scheduler_dag = DagSerialization.deserialize_dag(
        DagSerialization.serialize_dag(build_dag(compiled_workflow()))
    )
    assert not hasattr(scheduler_dag, "get_template_env")
    run = SimpleNamespace(dag_id="careflow__booking-followup", run_id="manual__2026-03-04")
    alerts.DAG_RUN_FAILED(
        {"dag": scheduler_dag, "dag_run": run, "run_id": run.run_id, "reason": "task_failure"}
    )
    assert len(webhook) == 1 and "a DAG run failed" in webhook[0]["text"]
