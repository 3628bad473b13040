"""Operations tests: a clinic database, a small workflow, the engine driven run by run, a webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from careflow.compiler import CompiledWorkflow, compile_workflow
from careflow.compiler.schedule import next_run_after, runs_between
from careflow.demo.data import generate, load
from careflow.engine.context import RunContext
from careflow.engine.nodes import next_wake, process_node
from careflow.workflow.validation import validate_workflow
from support import phone_spellings

START = datetime(2026, 3, 4, tzinfo=timezone.utc)

#: Booked → one hour later → an SMS: every delay step waits exactly an hour.
WORKFLOW: dict[str, Any] = {
    "id": "booking-followup",
    "name": "예약 후 안내",
    "clinic_id": "gangnam-01",
    "timezone": "Asia/Seoul",
    "nodes": [
        {
            "id": "booked",
            "type": "trigger",
            "data": {"label": "예약", "event": "appointment_created", "schedule": "@daily"},
        },
        {"id": "hour_later", "type": "delay", "data": {"label": "1시간 후", "amount": 1, "unit": "hours"}},
        {
            "id": "notice",
            "type": "action",
            "data": {
                "label": "안내 문자",
                "channel": "lms",
                "template": "{{ patient.name }}님, {{ clinic.name }} 예약 감사합니다. 문의 {{ clinic.phone }}",
            },
        },
    ],
    "edges": [
        {"id": "e1", "source": "booked", "target": "hour_later"},
        {"id": "e2", "source": "hour_later", "target": "notice"},
    ],
}


def compiled_workflow(doc: dict[str, Any] | None = None) -> CompiledWorkflow:
    """The test workflow, validated and compiled."""
    report = validate_workflow(json.loads(json.dumps(doc or WORKFLOW)))
    assert report.ok and report.workflow is not None, report.to_dict()
    return compile_workflow(report.workflow, version=1, content_hash="ops-test")


def clinic_data(engine: Engine, patients: int = 60) -> dict[str, list[dict[str, Any]]]:
    """Load the demo clinic (synthetic patients and appointments around START) and return its rows."""
    data = generate(date(2026, 3, 2), patients=patients)
    load(engine, data)
    return data


def run_engine(
    engine: Engine, compiled: CompiledWorkflow, sender: Any, days: int, emit: Any = None
) -> list[datetime]:
    """Scheduled runs over ``days`` from START and the wake runs between them, node by node."""
    moments: list[datetime] = []

    def one_run(now: datetime, kind: str) -> None:
        moments.append(now)
        ctx = RunContext(
            compiled=compiled,
            now=now,
            engine=engine,
            run_id=f"{kind}__{now:%Y%m%dT%H%M}",
            simulated=True,
            emit=emit,
            sender=sender,
        )
        for node_id in compiled.order:
            process_node(ctx, node_id)

    end = START + timedelta(days=days)
    for moment in runs_between(compiled, START, end):
        one_run(moment, "scheduled")
        upcoming, clock = next_run_after(compiled, moment), moment
        while (wake := next_wake(RunContext(compiled=compiled, now=clock, engine=engine))) is not None:
            if wake >= min(upcoming, end):
                break
            one_run(wake, "wake")
            clock = wake
    return moments


def patient_strings(data: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every patient's name, phone number (as written, as digits, in E.164) and e-mail address."""
    out: list[str] = []
    for p in data["patients"]:
        out.append(p["name"])
        if p["phone"]:
            out += phone_spellings(p["phone"])
        if p.get("email"):
            out.append(p["email"])
    return out


class Received(list):
    """What the webhook received: each request's JSON body, and in ``headers`` each one's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[dict[str, str]] = []


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.headers.append(dict(self.headers))  # type: ignore[attr-defined]
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A local Slack-style webhook set as the ``careflow_alerts`` connection; yields what it received."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = Received()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/hook"
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_ALERTS", json.dumps({"conn_type": "http", "host": url}))
    monkeypatch.setattr("careflow.airflow.alerts._recent", {})
    yield server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()
