"""A cache never decides correctness: a key in ``sent_keys`` does not stand for a ledger row.

The action path reads the ledger for every batch (one query per batch of up to 500) and decides
from its rows alone; these tests keep it that way with a poisoned ``sent_keys`` cache.
"""

from __future__ import annotations

from sqlalchemy import select

from careflow.engine.actions import idempotency_key
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
    with FakeProviderServer() as fake:
        fake.configure(honour_idempotency=False, error_rate=1.0)  # every send fails: rows stay pending
        journey = Journey(compile_doc(DOC, 1), engine, fake)
        journey.run_at(T)
        pending = _ledger(engine)
        assert len(pending) == 3 and set(pending.values()) == {"pending"}

        # Poison: every key claims "sent moments ago" although no row says so.
        get_cache(SENT_KEYS, SENT_KEYS_TTL).set_many({key: "forged" for key in pending})
        fake.configure(error_rate=0.0)
        journey.run_at(T.replace(hour=1))
        assert set(_ledger(engine).values()) == {"sent"}
        stats = assert_exactly_once(fake)
        assert stats["accepted"] == 3 and set(stats["accepts_by_key"]) == set(pending)


def test_the_key_scheme_is_the_ledgers():
    assert idempotency_key("ex1", "a1") == "cf-ex1-a1"
