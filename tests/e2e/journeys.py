"""The runs both executors go through: load a cohort, trigger through the REST API, check the provider."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine

from careflow.providers.fake_server import FakeProviderServer
from support import wait_for

from .cluster import Cluster
from .scenario import AFTERCARE, BOOKING, Cohort, dag_id, e164, now_utc


def provider_keys(provider: FakeProviderServer, workflow_id: str) -> dict[str, dict[str, Any]]:
    """The messages the provider accepted for one workflow, by idempotency key."""
    return {
        m["idempotency_key"]: m for m in provider.messages() if m["metadata"]["workflow_id"] == workflow_id
    }


def booking_journey(cluster: Cluster, engine: Engine, provider: FakeProviderServer, prefix: str) -> Cohort:
    """A booking cohort: 10 messages to send, 4 recorded with a reason; two REST-triggered runs."""
    now = now_utc()
    cohort = Cohort(BOOKING, "notice", prefix)
    # After the enrollment watermark of the runs so far: an event is enrolled by the first run after it.
    at = now - timedelta(seconds=2)
    cohort.add(10, event="appointment_created", at=at, status="scheduled")
    cohort.add(1, event="appointment_created", at=at, status="scheduled", consent_messages=False,
               expect="skipped:no_consent_messages")  # fmt: skip
    cohort.add(
        1, event="appointment_created", at=at, status="scheduled", phone=None, expect="skipped:no_phone"
    )
    cohort.add(1, event="appointment_created", at=at, status="scheduled", phone="02-555-0199",
               expect="skipped:invalid_phone")  # fmt: skip
    refused = cohort.add(1, event="appointment_created", at=at, status="scheduled",
                         expect="failed:provider_recipient_rejected")  # fmt: skip
    refused_to = e164(next(p["phone"] for p in cohort.rows["patients"] if p["id"] == refused[0]))
    provider.configure(
        permanent_fail_recipients=[*provider.provider.config.permanent_fail_recipients, refused_to]
    )
    cohort.load(engine)

    dag = dag_id(BOOKING)
    first = cluster.trigger(dag)
    run = cluster.wait_run(dag, first)
    assert run["state"] == "success", (run, cluster.task_states(dag, first), cluster.diagnostics())
    sent = provider_keys(provider, BOOKING["id"])
    assert set(sent) >= cohort.expected_keys()
    assert {k for k in sent if k in {cohort.key(p) for p in cohort.expect}} == cohort.expected_keys()
    ledger = cohort.ledger(engine)
    for pid, what in cohort.expect.items():
        row = ledger[pid]
        if what == "sent":
            assert row["status"] == "sent" and row["provider_id"] == sent[cohort.key(pid)]["id"], row
        else:
            status, reason = what.split(":")
            assert (row["status"], row["reason"]) == (status, reason), (pid, row)

    # A second run the same day: nothing is enrolled or sent twice.
    before = provider.stats(brief=True)["received"]
    second = cluster.trigger(dag)
    assert cluster.wait_run(dag, second)["state"] == "success"
    assert provider.stats(brief=True)["received"] == before
    assert provider.stats(brief=True)["accepted_twice"] == 0
    return cohort


def aftercare_journey(cluster: Cluster, engine: Engine, provider: FakeProviderServer, prefix: str) -> Cohort:
    """A one-minute delay: the run's ``careflow_wake`` waits in the triggerer and starts a wake run."""
    now = now_utc()
    cohort = Cohort(AFTERCARE, "ask", prefix)
    at = now - timedelta(seconds=5)
    cohort.add(6, event="appointment_completed", at=at)
    # Completed, then cancelled before the condition is reached: the condition sees "cancelled".
    cohort.add(1, event="appointment_completed", at=at, status="cancelled", expect="none")
    cohort.load(engine)
    due = at + timedelta(minutes=1)

    dag = dag_id(AFTERCARE)
    before = {r["dag_run_id"] for r in cluster.runs(dag)}
    run_id = cluster.trigger(dag)
    run = cluster.wait_run(dag, run_id, timeout=150)
    assert run["state"] == "success", (run, cluster.task_states(dag, run_id))

    def wake_run() -> dict[str, Any] | None:
        fresh = [r for r in cluster.runs(dag) if r["dag_run_id"] not in before | {run_id}]
        wakes = [r for r in fresh if r["dag_run_id"].startswith("careflow_wake__")]
        return wakes[0] if wakes else None

    wake = wait_for("the wake run careflow_wake started", wake_run, timeout=60, interval=1)
    finished = cluster.wait_run(dag, wake["dag_run_id"], timeout=120)
    assert finished["state"] == "success", (finished, cluster.task_states(dag, wake["dag_run_id"]))

    sent = provider_keys(provider, AFTERCARE["id"])
    mine = {k: m for k, m in sent.items() if k in {cohort.key(p) for p in cohort.expect}}
    assert set(mine) == cohort.expected_keys()
    # Not sent before the delay was over; sent by the wake run, not a day later.
    assert all(m["accepted_at"] >= due.timestamp() - 1 for m in mine.values())
    assert all(m["accepted_at"] <= due.timestamp() + 120 for m in mine.values())
    assert provider.stats(brief=True)["accepted_twice"] == 0
    return cohort
