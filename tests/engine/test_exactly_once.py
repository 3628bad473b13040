"""Exactly one message per (execution, action node), proven on the fake provider's counters.

Re-runs, cleared tasks, two workers racing, provider errors, lost answers and a worker killed
mid-batch: in every case each due message is accepted once and ``accepted_twice`` stays 0, with
a provider that does *not* dedupe on the idempotency key (so nothing is forgiven).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from careflow.engine import actions
from careflow.engine.nodes import process_node
from careflow.providers.client import Outcome, SendResult
from careflow.store import tables
from careflow.store.db import transaction

from .harness import (
    Clinic,
    action,
    age_claims,
    assert_exactly_once,
    chain,
    cohort,
    executions,
    kst,
    ledger,
    send_in_child,
    steps_of,
)

T = kst(2025, 3, 5)  # the daily run after the surgeries
DOC = chain("once", ("a", "action", action("{{ patient.name }}님, 수술 후 경과는 어떠신가요?")))


def _setup(engine, fake, n: int) -> list[str]:
    # A provider that ignores idempotency keys: a second send would be accepted twice, so the
    # counters prove what careflow itself does, not what the provider forgives.
    fake.configure(honour_idempotency=False)
    c = Clinic()
    patients = cohort(c, n, kst(2025, 3, 4, 15))
    c.load(engine)
    return patients


def test_rerunning_a_day_sends_nothing_twice(engine, journey, fake):
    patients = _setup(engine, fake, 12)
    j = journey(DOC)
    assert j.run_at(T)["a"].sent == 12
    again = j.run_at(T)
    assert again["a"].processed == 0 and again["t"].enrolled == 0
    j.run_days(T - timedelta(days=1), T + timedelta(days=2))  # the same days once more, with wakes
    stats = assert_exactly_once(fake)
    assert stats["received"] == 12 and stats["accepted"] == 12
    assert {p for p, r in ledger(engine, "once").items() if r["status"] == "sent"} == set(patients)


def test_clearing_the_action_task_after_success_resends_nothing(engine, journey, fake):
    _setup(engine, fake, 10)
    j = journey(DOC)
    j.run_at(T)
    cleared = j.node("a", T, run_id="manual__cleared")
    assert cleared.processed == 0 and cleared.sent == 0
    # A task whose step updates were lost after the sends (the ledger knows): steps back to pending.
    with engine.begin() as conn:
        conn.execute(
            update(tables.steps)
            .where(tables.steps.c.workflow_id == "once", tables.steps.c.node_id == "a")
            .values(status="pending")
        )
    replay = j.node("a", T + timedelta(minutes=5), run_id="manual__replay")
    assert replay.processed == 10 and replay.sent == 0
    assert replay.reasons["ledger_sent"] == 10
    assert all(s["status"] == "done" for (_, node), s in steps_of(engine, "once").items() if node == "a")
    stats = assert_exactly_once(fake)
    assert stats["received"] == 10


def test_two_workers_racing_on_one_action_send_each_message_once(engine, journey, fake, monkeypatch):
    _race_two_workers(engine, journey, fake, monkeypatch)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("level", ["serializable", "repeatable read"])
def test_a_database_that_defaults_to_a_stricter_isolation_changes_nothing(
    level, db_url, engine, journey, fake, monkeypatch
):
    """A clinic database whose DBA set SERIALIZABLE (or REPEATABLE READ) as its default.

    careflow's transactions run READ COMMITTED whatever the default, so two workers racing on one
    action (each with its recording thread) meet no serialization error and send each message once;
    the database's default is left as the DBA set it.
    """
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = '{level}'"))
        conn.commit()
    engine.dispose()  # the connections opened from now on take the database's default
    try:
        with transaction(engine) as conn:
            assert conn.execute(text("SHOW default_transaction_isolation")).scalar_one() == level
            assert conn.execute(text("SHOW transaction_isolation")).scalar_one() == "read committed"
        _race_two_workers(engine, journey, fake, monkeypatch)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET default_transaction_isolation'))
            conn.commit()
        engine.dispose()


def _race_two_workers(engine, journey, fake, monkeypatch) -> None:
    patients = _setup(engine, fake, 60)
    fake.configure(latency_ms=5)
    j = journey({**DOC, "settings": {"batch_size": 20}})  # several batches: the workers interleave
    j.node("t", T)
    start = threading.Barrier(2)
    reports, errors = [], []
    # Each worker goes on past its first batch only once the other has read one too, so that they
    # do race: left to the scheduler, SQLite's one writer sometimes let the first worker take every
    # batch while the second slept in its busy handler.
    met, waiting = threading.Barrier(2, timeout=30), {"w1", "w2"}
    real_prepare = actions._prepare_batch

    def prepare(ctx, *args, **kwargs):  # type: ignore[no-untyped-def]
        prepared = real_prepare(ctx, *args, **kwargs)
        if ctx.worker in waiting:  # after its first batch, each racing worker waits for the other
            waiting.discard(ctx.worker)
            met.wait()
        return prepared

    monkeypatch.setattr(actions, "_prepare_batch", prepare)

    def worker(name: str) -> None:
        ctx = j.context(T, run_id=f"race_{name}", worker=name)
        start.wait()
        try:
            reports.append(process_node(ctx, "a"))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(reports) == 2 and all(r.batches for r in reports)  # both workers took part
    assert sum(r.sent for r in reports) == 60
    stats = assert_exactly_once(fake)
    assert stats["received"] == 60 and stats["duplicates"] == 0
    rows = ledger(engine, "once")
    assert {p for p, r in rows.items() if r["status"] == "sent"} == set(patients)
    assert all(r["attempts"] == 1 for r in rows.values())
    j.node("a", T)  # whatever the loser left pending goes nowhere: all is sent
    assert fake.stats()["received"] == 60


def test_provider_5xx_then_success_sends_every_message_once(engine, journey, fake):
    patients = _setup(engine, fake, 15)
    j = journey(DOC)
    fake.configure(error_rate=1.0)
    first = j.run_at(T)["a"]
    assert (first.sent, first.pending) == (0, 15)
    rows = ledger(engine, "once")
    assert {r["status"] for r in rows.values()} == {"pending"}
    assert {r["last_error"] for r in rows.values()} == {"transient HTTP 503 unavailable"}
    assert {e["status"] for e in executions(engine, "once").values()} == {"running"}

    fake.configure(error_rate=0.0)
    second = j.run_at(T + timedelta(minutes=10))["a"]
    assert (second.sent, second.pending) == (15, 0)
    stats = assert_exactly_once(fake)
    assert stats["accepted"] == 15 and stats["errors"] == 15
    rows = ledger(engine, "once")
    assert {p for p, r in rows.items() if r["status"] == "sent"} == set(patients)
    assert {r["attempts"] for r in rows.values()} == {2}
    assert {e["status"] for e in executions(engine, "once").values()} == {"completed"}


def test_answer_lost_after_acceptance_is_reconciled_never_resent(engine, journey, fake):
    _setup(engine, fake, 8)
    fake.configure(accept_then_timeout_rate=1.0, stall_seconds=2.0)
    j = journey(DOC, timeout=0.5)
    first = j.run_at(T)["a"]
    # Under load a connection may time out before the request leaves (transient, retried later);
    # every request that did leave was accepted, its answer lost, and found again by a lookup.
    assert first.sent >= 1 and first.sent + first.pending == 8
    assert first.reasons["reconciled"] == first.sent
    second = j.run_at(T + timedelta(minutes=5))["a"]
    assert first.sent + second.sent == 8
    stats = assert_exactly_once(fake)
    assert stats["received"] == 8 and stats["accept_then_timeout"] == 8
    assert stats["lookups"] >= 8
    assert all(n == 1 for n in stats["attempts_by_key"].values())
    assert {r["status"] for r in ledger(engine, "once").values()} == {"sent"}


class _LookupOutage:
    """A provider client whose lookups fail (UNKNOWN): the outcome of a lost answer stays unknown."""

    def __init__(self, client):
        self.client = client

    def send_batch(self, messages, **kw):
        return self.client.send_batch(messages, **kw)

    def lookup_many(self, keys):
        return {k: SendResult(k, Outcome.UNKNOWN, error_code="timeout") for k in keys}


def test_unknown_outcome_is_kept_until_the_provider_answers(engine, journey, fake):
    _setup(engine, fake, 6)
    fake.configure(accept_then_timeout_rate=1.0, stall_seconds=2.0)
    j = journey(DOC, timeout=0.5)
    j.node("t", T)
    ctx = j.context(T)
    ctx.sender = _LookupOutage(ctx.sender)
    first = process_node(ctx, "a")
    unknown = first.reasons["unknown_outcome"]
    assert first.sent == 0 and first.pending == 6 and unknown >= 1
    statuses = [r["status"] for r in ledger(engine, "once").values()]
    assert statuses.count("unknown") == unknown and set(statuses) <= {"unknown", "pending"}

    fake.configure(accept_then_timeout_rate=0.0)
    second = j.node("a", T + timedelta(minutes=10))
    assert second.sent == 6 and second.reasons["reconciled"] == unknown
    stats = assert_exactly_once(fake)
    assert stats["received"] == 6  # the unknown ones were asked about, never resent
    assert {r["status"] for r in ledger(engine, "once").values()} == {"sent"}


def test_worker_killed_mid_batch_every_message_delivered_once(engine, journey, fake, db_url):
    patients = _setup(engine, fake, 40)
    fake.configure(latency_ms=40)
    j = journey(DOC)
    j.node("t", T)
    child = multiprocessing.get_context("spawn").Process(
        target=send_in_child, args=(db_url, DOC, T.isoformat(), "a", fake.url, fake.token), daemon=True
    )
    child.start()
    deadline = time.monotonic() + 60
    while fake.stats(brief=True)["accepted"] < 5 and time.monotonic() < deadline and child.is_alive():
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    fake.configure(latency_ms=0)
    accepted_by_child = fake.stats(brief=True)["accepted"]
    assert 5 <= accepted_by_child < 40, accepted_by_child
    rows = ledger(engine, "once")
    assert {r["status"] for r in rows.values()} == {"claimed"}  # the child died before recording

    held = j.node("a", T)  # within the lease: another worker leaves the claims alone
    assert held.sent == 0 and held.reasons["claimed_elsewhere"] == 40

    age_claims(engine, "once", actions.CLAIM_LEASE)  # the dead worker's lease runs out
    time.sleep(0.3)  # requests the child had in flight have finished on the provider
    recovered = j.node("a", T + timedelta(minutes=6))
    assert recovered.sent == 40
    assert recovered.reasons["reconciled"] >= accepted_by_child
    stats = assert_exactly_once(fake)
    assert stats["accepted"] == 40
    assert set(stats["accepts_by_key"]) == {
        actions.idempotency_key(e["id"], "a") for e in executions(engine, "once").values()
    }
    rows = ledger(engine, "once")
    assert {p for p, r in rows.items() if r["status"] == "sent"} == set(patients)
