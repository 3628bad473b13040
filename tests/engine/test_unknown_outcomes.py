"""A message whose outcome is unknown is looked up before anything else happens to it.

The provider here does not deduplicate keys (``honour_idempotency=False``): a second send of a key
is a second message to the patient, so every test below fails on a blind resend.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from careflow.engine import actions
from careflow.engine.nodes import process_node
from careflow.providers.client import Outcome, SendResult
from careflow.store import tables

from .harness import Clinic, action, age_claims, chain, cohort, kst, ledger, rows, steps_of

T = kst(2025, 3, 5)


class LookupFails:
    """The provider's client, except that every lookup fails (its GET answers 503 or times out)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lookups = 0

    def send_batch(self, messages: Any, **kw: Any) -> Any:
        return self.client.send_batch(messages, **kw)

    def lookup_many(self, keys: Any) -> dict[str, SendResult]:
        keys = list(keys)
        self.lookups += len(keys)
        return {k: SendResult(k, Outcome.UNKNOWN, status_code=503, error_code="http_503") for k in keys}


def _lost_answers(engine, journey, fake, n: int, *nodes: tuple) -> Any:  # type: ignore[no-untyped-def]
    """``n`` patients whose first send of node ``a`` reached the provider but whose answers were lost."""
    fake.configure(honour_idempotency=False, accept_then_timeout_rate=1.0, stall_seconds=1.0)
    c = Clinic()
    cohort(c, n, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("unknown", ("a", "action", action()), *nodes), timeout=0.3)
    j.node("t", T)
    ctx = j.context(T)
    ctx.sender = LookupFails(ctx.sender)  # the lookup after the lost answers fails too
    report = process_node(ctx, "a")
    assert report.sent == 0 and report.reasons["unknown_outcome"] == n
    assert {r["status"] for r in ledger(engine, "unknown").values()} == {"unknown"}
    assert fake.stats()["accepted"] == n
    time.sleep(1.1)  # the stalled answers are over
    fake.configure(accept_then_timeout_rate=0.0)
    return j


def test_a_failed_lookup_never_leads_to_a_resend(engine, journey, fake):
    j = _lost_answers(engine, journey, fake, 4)
    ctx = j.context(T + timedelta(minutes=10))
    ctx.sender = LookupFails(ctx.sender)
    report = process_node(ctx, "a")
    assert fake.stats()["accepted_twice"] == 0
    assert report.sent == 0 and report.pending == 4
    assert ctx.sender.lookups == 4
    assert {r["status"] for r in ledger(engine, "unknown").values()} == {"unknown"}

    again = j.node("a", T + timedelta(minutes=20))  # the lookup answers: the provider has them
    assert again.sent == 4 and again.reasons["reconciled"] == 4
    stats = fake.stats()
    assert (stats["accepted"], stats["accepted_twice"]) == (4, 0)
    assert {r["status"] for r in ledger(engine, "unknown").values()} == {"sent"}


def test_an_outage_does_not_turn_an_unknown_outcome_into_a_pending_one(engine, journey, fake):
    j = _lost_answers(engine, journey, fake, 4)
    fake.configure(outage_until=time.time() + 60)  # lookups and sends answered 503
    during = j.node("a", T + timedelta(minutes=10))
    assert during.sent == 0
    assert {r["status"] for r in ledger(engine, "unknown").values()} == {"unknown"}
    fake.configure(outage_until=0)
    after = j.node("a", T + timedelta(minutes=20))
    assert after.sent == 4 and after.reasons["reconciled"] == 4
    assert fake.stats()["accepted_twice"] == 0


def test_an_unknown_outcome_is_looked_up_before_it_expires(engine, journey, fake):
    j = _lost_answers(engine, journey, fake, 3, ("b", "action", action("두 번째 안내")))
    later = j.run_at(T + timedelta(hours=25))  # past the action's max_lateness (24 h)
    assert later["a"].sent == 3 and later["a"].expired == 0
    assert later["a"].reasons["reconciled"] == 3
    messages = rows(engine, tables.messages, workflow_id="unknown")
    assert {(r["node_id"], r["status"]) for r in messages} == {("a", "sent"), ("b", "sent")}
    steps = steps_of(engine, "unknown")
    assert {v["status"] for k, v in steps.items() if k[1] == "a"} == {"done"}
    assert len([k for k in steps if k[1] == "b"]) == 3  # the executions went on
    assert fake.stats()["accepted_twice"] == 0


def test_an_unknown_outcome_the_provider_does_not_have_expires_once_looked_up(engine, journey, fake):
    fake.configure(honour_idempotency=False)
    c = Clinic()
    patients = cohort(c, 3, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("unknown", ("a", "action", action())))
    j.node("t", T)
    ctx = j.context(T)

    class LostBeforeArrival(LookupFails):
        def send_batch(self, messages: Any, **kw: Any) -> Any:  # the requests never reached it
            return [SendResult(m.idempotency_key, Outcome.UNKNOWN, error_code="timeout") for m in messages]

    ctx.sender = LostBeforeArrival(ctx.sender)
    process_node(ctx, "a")
    assert {r["status"] for r in ledger(engine, "unknown").values()} == {"unknown"}
    late = j.node("a", T + timedelta(hours=25))
    assert late.expired == 3 and late.sent == 0
    rows = ledger(engine, "unknown")
    assert {rows[p]["status"] for p in patients} == {"expired"}
    assert fake.stats()["received"] == 0


class HeldBatch:
    """A client whose batches wait for ``go`` before they leave: a worker still holding its claims."""

    def __init__(self, client: Any, outcome: Outcome | None = None) -> None:
        self.client, self.outcome, self.go = client, outcome, threading.Event()

    def send_batch(self, messages: Any, **kw: Any) -> Any:
        self.go.wait(30)
        if self.outcome is not None:
            return [
                SendResult(m.idempotency_key, self.outcome, status_code=503, request_sent=True)
                for m in messages
            ]
        return self.client.send_batch(messages, **kw)

    def lookup_many(self, keys: Any) -> Any:
        return self.client.lookup_many(keys)


def _held_claims(engine, journey, fake, monkeypatch, outcome):  # type: ignore[no-untyped-def]
    fake.configure(honour_idempotency=False)
    c = Clinic()
    cohort(c, 3, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("lease", ("a", "action", action())))
    j.node("t", T)
    ctx = j.context(T, worker="A")
    ctx.sender = HeldBatch(ctx.sender, outcome)
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.setdefault("A", process_node(ctx, "a")))
    worker.start()
    deadline = time.monotonic() + 20
    while [r["status"] for r in ledger(engine, "lease").values()] != ["claimed"] * 3:
        assert time.monotonic() < deadline, ledger(engine, "lease")
        time.sleep(0.05)
    return j, ctx, worker, out


def test_a_worker_holding_its_claims_renews_them(engine, journey, fake, monkeypatch):
    monkeypatch.setattr(actions, "CLAIM_LEASE", timedelta(seconds=2))
    monkeypatch.setattr(actions, "RENEW_EVERY", 0.2)
    j, ctx, worker, out = _held_claims(engine, journey, fake, monkeypatch, None)
    time.sleep(2.5)  # longer than the lease: the worker is alive, its claims must still hold
    other = j.node("a", T, worker="B")
    assert other.sent == 0 and other.reasons["claimed_elsewhere"] == 3
    ctx.sender.go.set()
    worker.join(30)
    assert out["A"].sent == 3
    stats = fake.stats()
    assert (stats["accepted"], stats["accepted_twice"]) == (3, 0)


def test_a_worker_whose_claims_were_taken_does_not_overwrite_what_the_new_holder_recorded(
    engine, journey, fake, monkeypatch
):
    j, ctx, worker, out = _held_claims(engine, journey, fake, monkeypatch, Outcome.TRANSIENT)
    age_claims(engine, "lease", actions.CLAIM_LEASE)  # A's lease ran out, by B's clock
    taken = j.node("a", T, worker="B")
    assert taken.sent == 3
    ctx.sender.go.set()
    worker.join(30)
    assert out["A"].sent == 0
    rows = ledger(engine, "lease")
    assert {(r["status"], r["claimed_by"]) for r in rows.values()} == {("sent", "B")}
    assert {v["status"] for k, v in steps_of(engine, "lease").items() if k[1] == "a"} == {"done"}
    assert fake.stats()["accepted_twice"] == 0


def test_a_worker_whose_claims_were_taken_and_sent_does_not_count_them_again(
    engine, journey, fake, monkeypatch
):
    j, ctx, worker, out = _held_claims(engine, journey, fake, monkeypatch, None)
    age_claims(engine, "lease", actions.CLAIM_LEASE)  # A's lease ran out, by B's clock
    taken = j.node("a", T, worker="B")
    assert taken.sent == 3
    fake.configure(honour_idempotency=True)  # A's late requests get the provider's 409
    ctx.sender.go.set()
    worker.join(30)
    assert (out["A"].sent, out["A"].reasons["claim_taken_over"]) == (0, 3)
    rows = ledger(engine, "lease")
    assert {(r["status"], r["claimed_by"]) for r in rows.values()} == {("sent", "B")}
