"""One patient's failure never fails the others; one branch's failure never stops the other."""

from __future__ import annotations

from datetime import timedelta

import pytest

from careflow.engine.recipients import normalize_phone

from .harness import Clinic, action, chain, cohort, executions, kst, ledger, steps_of

T = kst(2025, 3, 5)


def _phones(engine_rows: list[dict]) -> dict[str, str]:
    return {p["id"]: normalize_phone(p["phone"]) for p in engine_rows}


def test_permanent_provider_errors_are_recorded_per_patient(engine, journey, fake):
    c = Clinic()
    patients = cohort(c, 6, kst(2025, 3, 4, 15))
    phones = _phones(c.rows["patients"])
    refused = {patients[1], patients[4]}
    fake.configure(permanent_fail_recipients=[phones[p] for p in refused])
    c.load(engine)
    j = journey(chain("partial", ("a", "action", action())))
    report = j.run_at(T)["a"]

    assert (report.sent, report.failed, report.pending) == (4, 2, 0)
    assert report.reasons["provider_recipient_rejected"] == 2
    assert set(j.sent) == {f"{p}/a" for p in patients if p not in refused}
    rows = ledger(engine, "partial")
    for p in refused:
        assert (rows[p]["status"], rows[p]["reason"]) == ("failed", "provider_recipient_rejected")
        assert rows[p]["last_error"] == "permanent HTTP 422 recipient_rejected"
    steps = steps_of(engine, "partial")
    assert {p for p in patients if steps[(p, "a")]["status"] == "failed"} == refused
    assert all(steps[(p, "a")]["error"] == "provider_recipient_rejected" for p in refused)
    status = {p: e["status"] for p, e in executions(engine, "partial").items()}
    assert status == {p: ("failed" if p in refused else "completed") for p in patients}

    j.run_at(T + timedelta(hours=1))  # a permanent failure is not retried
    assert fake.stats()["received"] == 6


def test_a_failing_branch_does_not_stop_the_other_branch(engine, journey, fake):
    c = Clinic()
    patients = cohort(c, 3, kst(2025, 3, 4, 15))
    bad = patients[0]
    fake.configure(permanent_fail_recipients=[_phones(c.rows["patients"])[bad]])
    c.load(engine)
    doc = chain(
        "branches",
        ("kakao", "action", action()),
        (
            "mail",
            "action",
            {"channel": "email", "subject": "안내", "template": "{{ patient.name }}님 안내드립니다"},
        ),
        edges=[("t", "kakao", None), ("t", "mail", None)],
    )
    j = journey(doc)
    j.run_at(T)
    steps = steps_of(engine, "branches")
    assert steps[(bad, "kakao")]["status"] == "failed"
    assert steps[(bad, "mail")]["status"] == "done"
    assert f"{bad}/mail" in j.sent and f"{bad}/kakao" not in j.sent
    assert len(j.sent) == 5
    assert executions(engine, "branches")[bad]["status"] == "failed"
    assert {executions(engine, "branches")[p]["status"] for p in patients[1:]} == {"completed"}


# Statement timeouts are Postgres's; SQLite waits for its write lock (busy_timeout).
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_batch_stuck_on_a_lock_fails_after_node_timeout_seconds(engine, journey, fake):
    import time

    from sqlalchemy import text

    c = Clinic()
    cohort(c, 3, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("stuck", ("a", "action", action()), settings={"node_timeout_seconds": 1}))
    j.node("t", T)
    with engine.connect() as holder, holder.begin():
        holder.execute(text("LOCK TABLE patients IN ACCESS EXCLUSIVE MODE"))  # a migration gone wrong
        started = time.monotonic()
        with pytest.raises(Exception, match="statement timeout"):
            j.node("a", T)
        assert time.monotonic() - started < 10
    assert fake.stats()["received"] == 0
    assert j.node("a", T).sent == 3  # the lock gone, the next attempt sends
