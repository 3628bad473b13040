"""A worker writes no request once the lease of its claims has run out.

Another worker may have taken the claims over by then and decided the messages otherwise
(expired, failed): a late request would reach the patient anyway. The provider here does not
deduplicate keys (``honour_idempotency=False``), so nothing is forgiven.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import update

from careflow.engine import actions
from careflow.engine.nodes import process_node
from careflow.providers.client import ProviderClient
from careflow.store import tables

from .harness import Clinic, action, assert_exactly_once, chain, cohort, kst, ledger

T = kst(2025, 3, 5)


def _journey(engine, journey, fake, workflow_id: str, patients: int):  # type: ignore[no-untyped-def]
    fake.configure(honour_idempotency=False)
    c = Clinic()
    cohort(c, patients, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain(workflow_id, ("a", "action", action())))
    j.node("t", T)
    return j


def _slow_sender(fake: Any) -> ProviderClient:
    """One request at a time: a batch stays on the wire for longer than the lease."""
    return ProviderClient(fake.url, fake.token, max_concurrency=1, timeout=5)


def test_what_the_send_process_holds_past_the_lease_is_left_pending(
    engine, journey, fake, started, monkeypatch
) -> None:
    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(seconds=2))
    monkeypatch.setattr(actions, "RENEW_EVERY", 60.0)  # a stalled worker: no renewal comes
    j = _journey(engine, journey, fake, "fence-pending", 8)
    fake.configure(latency_ms=400)  # 8 messages one at a time: 3.2 s on the wire
    ctx = j.context(T)
    ctx.sender = _slow_sender(fake)
    report = process_node(ctx, "a")

    assert len(started) == 1
    sent = report.sent
    assert sent < 8 and fake.stats()["received"] == sent
    # Not failed, not expired: pending, for the next attempt to decide again.
    assert (report.pending, report.failed, report.expired) == (8 - sent, 0, 0)
    unsent = [r for r in ledger(engine, "fence-pending").values() if r["status"] != "sent"]
    assert len(unsent) == 8 - sent
    assert {(r["status"], r["last_error"]) for r in unsent} == {("pending", "not_sent lease_expired")}

    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(minutes=5))
    fake.configure(latency_ms=0)
    again = j.node("a", T + timedelta(minutes=1))
    assert again.sent == 8 - sent
    assert assert_exactly_once(fake)["accepted"] == 8
    assert {r["status"] for r in ledger(engine, "fence-pending").values()} == {"sent"}


def test_renewals_keep_a_live_workers_batch_in_the_send_process_going(
    engine, journey, fake, started, monkeypatch
) -> None:
    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(seconds=2))
    monkeypatch.setattr(actions, "RENEW_EVERY", 0.2)
    j = _journey(engine, journey, fake, "fence-renewed", 8)
    fake.configure(latency_ms=400)  # longer on the wire than the lease: only the renewals carry it
    ctx = j.context(T)
    ctx.sender = _slow_sender(fake)
    report = process_node(ctx, "a")

    assert len(started) == 1
    assert (report.sent, report.pending) == (8, 0)
    assert assert_exactly_once(fake)["accepted"] == 8


def test_claims_taken_over_are_not_renewed_and_their_batch_stops(
    engine, journey, fake, started, monkeypatch
) -> None:
    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(seconds=2))
    monkeypatch.setattr(actions, "RENEW_EVERY", 0.2)
    j = _journey(engine, journey, fake, "fence-taken", 12)
    fake.configure(latency_ms=400)  # 4.8 s on the wire
    ctx = j.context(T, worker="A")
    ctx.sender = _slow_sender(fake)
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.setdefault("A", process_node(ctx, "a")))
    worker.start()
    deadline = time.monotonic() + 20
    while fake.stats(brief=True)["received"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Another worker holds the claims now (A's renewals came too late): A's next renewals move
    # nothing, and its batch stops once the lease of its last complete renewal runs out.
    m = tables.messages
    with engine.begin() as conn:
        conn.execute(update(m).where(m.c.workflow_id == "fence-taken").values(claimed_by="B"))
    worker.join(30)

    received = fake.stats()["received"]
    assert received < 12
    report = out["A"]
    assert report.reasons["claim_taken_over"] == 12 - received


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_worker_whose_clock_runs_ahead_leaves_another_workers_live_claims_alone(
    engine, journey, fake, monkeypatch, caplog
) -> None:
    """Leases are judged on the database's clock, not on each machine's.

    Worker A holds its batch claimed (its provider is slow); worker B, on a machine whose clock
    runs ten minutes ahead, runs the same node. On B's own clock A's claims were five minutes past
    their lease: B took them over and sent, and A sent the same messages when its answers came.
    """
    j = _journey(engine, journey, fake, "fence-clock", 3)
    ctx, worker, out = _stalled_worker(engine, j, "fence-clock")

    ahead = timedelta(minutes=10)
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, "careflow.engine.context"):
        m.setattr("careflow.clock.wall_clock", lambda: datetime.now(timezone.utc) + ahead)
        other = j.node("a", T, worker="B")
    assert (other.sent, other.pending, other.reasons["claimed_elsewhere"]) == (0, 3, 3)
    assert any(
        "clock is 600." in message and "ahead of the database's" in message for message in caplog.messages
    )
    assert {r["claimed_by"] for r in ledger(engine, "fence-clock").values()} == {"A"}

    ctx.sender.go.set()  # A's answers come
    worker.join(30)
    assert out["A"].sent == 3
    assert assert_exactly_once(fake)["accepted"] == 3  # the provider takes every key it is sent
    assert fake.stats()["received"] == 3


def _stalled_worker(engine, j, workflow_id: str):  # type: ignore[no-untyped-def]
    """Worker A runs node ``a`` in a thread and stalls once its three messages are claimed.

    Returns A's context (``ctx.sender.go.set()`` lets it go on), its thread, and where its
    report goes (``out["A"]``).
    """
    ctx = j.context(T, worker="A")
    ctx.sender = Stalled(ctx.sender)  # not the client itself: sent from a thread of the task
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.setdefault("A", process_node(ctx, "a")))
    worker.start()
    deadline = time.monotonic() + 20
    while [r["status"] for r in ledger(engine, workflow_id).values()] != ["claimed"] * 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return ctx, worker, out


class Stalled:
    """The provider client of a worker that stalls with its batch claimed, until ``go``."""

    def __init__(self, client: Any) -> None:
        self.client, self.go = client, threading.Event()

    def send_batch(self, messages: Any, **kw: Any) -> Any:
        self.go.wait(30)
        return self.client.send_batch(messages, **kw)

    def lookup_many(self, keys: Any) -> Any:
        return self.client.lookup_many(keys)


def test_a_worker_resuming_past_its_lease_sends_nothing_that_another_worker_let_expire(
    engine, journey, fake, monkeypatch
) -> None:
    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(seconds=1))
    j = _journey(engine, journey, fake, "fence-expired", 3)
    ctx, worker, out = _stalled_worker(engine, j, "fence-expired")
    time.sleep(1.2)  # A's lease runs out; it renews nothing (every minute, as in production)

    late = j.node("a", T + timedelta(hours=25), worker="B")  # past max_lateness
    assert late.expired == 3
    ctx.sender.go.set()  # A resumes
    worker.join(30)

    assert fake.stats()["received"] == 0
    assert (out["A"].sent, out["A"].reasons["claim_taken_over"]) == (0, 3)
    assert {r["status"] for r in ledger(engine, "fence-expired").values()} == {"expired"}
