"""careflow's database runs out of disk space while an action records what the provider accepted.

Postgres' own disk-full error, raised by the server on the ledger's update to ``sent`` (a trigger
stands in for the disk): the task fails naming the full disk, nothing is resent once there is
space again, and every message is accepted once.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from careflow.engine import actions
from careflow.store.db import database_unusable

from .harness import Clinic, action, age_claims, assert_exactly_once, chain, cohort, kst, ledger

T = kst(2025, 3, 5)
DOC = chain("full", ("a", "action", action("{{ patient.name }}님, 수술 후 경과는 어떠신가요?")))
FULL = [
    "CREATE FUNCTION careflow_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION USING ERRCODE = 'disk_full', "
    "MESSAGE = 'could not extend file: No space left on device'; END $$",
    "CREATE TRIGGER full_disk BEFORE UPDATE ON careflow_messages FOR EACH ROW "
    "WHEN (NEW.status = 'sent') EXECUTE FUNCTION careflow_test_disk_full()",
]
SPACE_AGAIN = ["DROP TRIGGER full_disk ON careflow_messages", "DROP FUNCTION careflow_test_disk_full()"]


def _run(engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_full_disk_while_recording_fails_the_task_by_name_and_resends_nothing(engine, journey, fake):
    fake.configure(honour_idempotency=False)  # a second send would be accepted twice
    c = Clinic()
    patients = cohort(c, 30, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(DOC)
    j.node("t", T)

    _run(engine, FULL)
    try:
        with pytest.raises(DBAPIError) as failed:
            j.node("a", T)
    finally:
        _run(engine, SPACE_AGAIN)
    problem = database_unusable(failed.value)
    assert problem is not None and "has no space left" in problem
    accepted = fake.stats(brief=True)["accepted"]
    assert accepted >= 1  # sent, and what the provider said could not be written
    assert "sent" not in {r["status"] for r in ledger(engine, "full").values()}

    age_claims(engine, "full", actions.CLAIM_LEASE)  # the failed task's lease runs out
    time.sleep(0.3)
    again = j.node("a", T + timedelta(minutes=6))
    assert again.sent == 30 and again.reasons["reconciled"] >= accepted
    stats = assert_exactly_once(fake)
    assert stats["accepted"] == 30
    rows = ledger(engine, "full")
    assert {p for p, r in rows.items() if r["status"] == "sent"} == set(patients)
