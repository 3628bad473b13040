"""A cache never decides correctness: a key in ``sent_keys`` does not stand for a ledger row.

The action path reads the ledger for every batch (one query per batch) and decides from its rows.
The ``sent_keys`` cache (keys the provider accepted in the last 5 minutes) only adds caution: a
key it holds that the ledger does not show as sent is looked up at the provider before any
send. A forged hit costs a lookup, never a message; a ledger that lost its last writes (a
database restored or failed over) is caught by it instead of sending the same messages again.
"""

from __future__ import annotations

from sqlalchemy import select, update

from careflow.engine.actions import idempotency_key
from careflow.engine.nodes import process_node
from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience.cache import SENT_KEYS, SENT_KEYS_TTL, get_cache
from careflow.store import tables
from engine.harness import Clinic, Journey, action, assert_exactly_once, chain, cohort, compile_doc, kst

T = kst(2025, 3, 5)
DOC = chain("poisoned", ("a", "action", action("{{ patient.name }}님, 수술 후 경과는 어떠신가요?")))


def _ledger(engine) -> dict[str, str]:
    m = tables.messages
    with engine.connect() as conn:
        return dict(conn.execute(select(m.c.idempotency_key, m.c.status)).all())


def test_a_poisoned_sent_key_does_not_stop_a_pending_message(shared, engine):
    c = Clinic()
    cohort(c, 3, kst(2025, 3, 4, 15))
    c.load(engine)
    cache = get_cache(SENT_KEYS, SENT_KEYS_TTL)
    with FakeProviderServer() as fake:
        fake.configure(honour_idempotency=False, error_rate=1.0)  # every send fails: rows stay pending
        journey = Journey(compile_doc(DOC, 1), engine, fake)
        journey.run_at(T, sent_keys=cache)
        pending = _ledger(engine)
        assert len(pending) == 3 and set(pending.values()) == {"pending"}

        # Poison: every key claims "sent moments ago" although no row says so.
        cache.set_many({key: "forged" for key in pending})
        fake.configure(error_rate=0.0)
        reports = journey.run_at(T.replace(hour=1), sent_keys=cache)
        # The run read the forged hits (each one a suspect) and still sent every message.
        assert reports["a"].reasons["sent_key_cache_suspects"] == 3
        assert reports["a"].sent == 3
        assert set(_ledger(engine).values()) == {"sent"}
        stats = assert_exactly_once(fake)
        assert stats["accepted"] == 3 and set(stats["accepts_by_key"]) == set(pending)


def test_a_poisoned_sent_key_costs_a_lookup_not_a_message(shared, engine):
    c = Clinic()
    cohort(c, 3, kst(2025, 3, 4, 15))
    c.load(engine)
    cache = get_cache(SENT_KEYS, SENT_KEYS_TTL)
    with FakeProviderServer() as fake:
        fake.configure(error_rate=1.0)  # every send fails: rows stay pending
        journey = Journey(compile_doc(DOC, 1), engine, fake)
        journey.run_at(T, sent_keys=cache)
        pending = _ledger(engine)
        assert set(pending.values()) == {"pending"}

        cache.set_many({key: "forged" for key in pending})
        fake.configure(error_rate=0.0)
        reports = journey.run_at(T.replace(hour=1), sent_keys=cache)
        assert reports["a"].reasons["sent_key_cache_suspects"] == 3
        assert reports["a"].reasons["reconciled"] == 0  # the provider did not have them
        assert reports["a"].sent == 3
        assert set(_ledger(engine).values()) == {"sent"}
        assert assert_exactly_once(fake)["accepted"] == 3


def _forget_sends(engine, workflow_id: str) -> None:
    """The ledger loses its last writes: sent messages and their steps are pending again."""
    m, s = tables.messages, tables.steps
    with engine.begin() as conn:
        conn.execute(
            update(m).where(m.c.workflow_id == workflow_id).values(status="pending", provider_id=None)
        )
        conn.execute(
            update(s)
            .where(s.c.workflow_id == workflow_id, s.c.node_id == "a")
            .values(status="pending", finished_at=None)
        )


def test_a_ledger_that_lost_its_last_writes_does_not_send_again(shared, engine):
    c = Clinic()
    cohort(c, 4, kst(2025, 3, 4, 15))
    c.load(engine)
    cache = get_cache(SENT_KEYS, SENT_KEYS_TTL)
    with FakeProviderServer() as fake:
        # A provider that does not deduplicate: a second send would be a second message.
        fake.configure(honour_idempotency=False)
        doc = chain("restored", ("a", "action", action()))
        journey = Journey(compile_doc(doc, 1), engine, fake)
        journey.run_at(T, sent_keys=cache)
        assert fake.stats()["accepted"] == 4

        _forget_sends(engine, "restored")
        ctx = journey.context(T.replace(hour=1), sent_keys=cache)
        report = process_node(ctx, "a")
        assert (report.sent, report.reasons["reconciled"], report.reasons["sent_key_cache_suspects"]) == (
            4,
            4,
            4,
        )
        stats = fake.stats()
        assert stats["accepted"] == 4 and stats["accepted_twice"] == 0, stats
        assert set(_ledger(engine).values()) == {"sent"}

        # The same loss without the cache: the ledger alone cannot know, and sends again.
        _forget_sends(engine, "restored")
        report = process_node(journey.context(T.replace(hour=2)), "a")
        assert report.sent == 4 and fake.stats()["accepted_twice"] == 4


def test_the_key_scheme_is_the_ledgers():
    assert idempotency_key("ex1", "a1") == "cf-ex1-a1"
