"""A counter of what a batch wrote moves once that batch has committed, and once only.

A batch that fails (a statement timeout, a connection lost at COMMIT) is rolled back and decided
again by Airflow's retry: its counters must not have gone out already, or the retry counts the
same messages and executions a second time. After every attempt, failed or not, careflow's
statsd counters say what the tables say.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from careflow.airflow import observability
from careflow.engine import actions
from careflow.engine import steps as st
from careflow.engine.recipients import normalize_phone

from .harness import Clinic, action, age_claims, chain, cohort, executions, kst, ledger

T = kst(2025, 3, 5)
RETRY = T + timedelta(minutes=5)


class CounterRecorder:
    """A statsd client that adds up every counter it is sent (timers and gauges are left out)."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        #: how many times each counter was moved (a statsd packet each)
        self.moves: Counter[str] = Counter()

    def incr(self, name: str, count: int = 1) -> None:
        self.counters[name] += count
        self.moves[name] += 1

    def timing(self, name: str, value: float) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> CounterRecorder:
    """What careflow's events send as statsd counters (through ``observability.emit``, as in a task)."""
    recorder = CounterRecorder()
    monkeypatch.setattr(observability, "stats", lambda: recorder)
    return recorder


def counted_by_tables(engine: Engine, workflow_id: str) -> Counter[str]:
    """The counters that the tables justify: every execution enrolled and ended, every message decided."""
    expected: Counter[str] = Counter()
    for execution in executions(engine, workflow_id).values():
        expected[f"careflow.executions.enrolled.{workflow_id}"] += 1
        if execution["status"] in ("completed", "failed", "exited"):
            expected[f"careflow.executions.{execution['status']}.{workflow_id}"] += 1
    for message in ledger(engine, workflow_id).values():
        if message["status"] in ("sent", "failed", "skipped", "expired"):
            name = f"{message['status']}.{workflow_id}.{message['node_id']}.{message['channel']}"
            expected[f"careflow.messages.{name}"] += 1
    return expected


@contextmanager
def fails_once(engine: Engine, name: str, call: int, how: str) -> Iterator[None]:
    """The ``call``-th call to ``careflow.engine.steps.<name>`` fails, once; the batch rolls back.

    ``how``: ``"statement"`` the call fails instead of running (a statement timeout); ``"after"``
    it runs, then fails (its last statement does); ``"commit"`` it runs and the commit of its
    transaction fails (the connection lost at COMMIT).
    """
    real = getattr(st, name)
    calls = 0
    doomed: list[Any] = []

    def failing(conn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls != call:
            return real(conn, *args, **kwargs)
        if how == "statement":
            raise RuntimeError("statement timeout (simulated)")
        result = real(conn, *args, **kwargs)
        if how == "after":
            raise RuntimeError("statement timeout (simulated)")
        doomed.append(conn)
        return result

    def refuse_commit(conn: Any) -> None:
        if conn in doomed:
            doomed.remove(conn)
            raise RuntimeError("connection lost at COMMIT (simulated)")

    event.listen(engine, "commit", refuse_commit)
    try:
        with mock.patch.object(st, name, failing):
            yield
    finally:
        event.remove(engine, "commit", refuse_commit)
    assert calls >= call, f"steps.{name} was called {calls} times, never a {call}th"


@pytest.mark.parametrize(
    ("name", "call", "how"),
    [
        ("finish_steps", 1, "statement"),  # preparing: the decisions' step updates time out
        ("settle_executions", 1, "commit"),  # preparing: its commit fails
        ("settle_executions", 2, "commit"),  # recording what the provider answered: its commit fails
    ],
    ids=["prepare-statement", "prepare-commit", "record-commit"],
)
def test_a_failed_action_batch_counts_each_outcome_once_after_the_retry(
    engine, journey, fake, statsd, name, call, how
):
    c = Clinic()
    c.completed("sent1", T - timedelta(minutes=30))
    c.completed("sent2", T - timedelta(minutes=30))
    c.completed("refused", T - timedelta(minutes=30))
    c.completed("no_consent", T - timedelta(minutes=30), consent_messages=False)
    c.completed("late", T - timedelta(hours=5))
    refused = next(p["phone"] for p in c.rows["patients"] if p["id"] == "refused")
    fake.configure(permanent_fail_recipients=[normalize_phone(refused)])
    c.load(engine)
    j = journey(chain("counted", ("a", "action", action(max_lateness={"amount": 1, "unit": "hours"}))))
    j.node("t", T, emit=observability.emit)

    with fails_once(engine, name, call, how), pytest.raises(RuntimeError, match="simulated"):
        j.node("a", T, emit=observability.emit)
    assert statsd.counters == counted_by_tables(engine, "counted")

    # Airflow's retry comes after the failed attempt's claims have run out.
    age_claims(engine, "counted", actions.CLAIM_LEASE + timedelta(minutes=1))
    j.node("a", RETRY, emit=observability.emit)
    status = {p: row["status"] for p, row in ledger(engine, "counted").items()}
    assert status == {
        "sent1": "sent",
        "sent2": "sent",
        "refused": "failed",
        "no_consent": "skipped",
        "late": "expired",
    }
    assert statsd.counters == counted_by_tables(engine, "counted")
    assert statsd.counters["careflow.executions.completed.counted"] == 4
    assert statsd.counters["careflow.executions.failed.counted"] == 1


def test_a_batchs_messages_not_sent_move_each_counter_once_a_reason(engine, journey, fake, statsd):
    """Skipped, failed and expired messages are counted by the batch (one event, one statsd
    packet for each outcome and reason), not a packet a message."""
    c = Clinic()
    due = T - timedelta(minutes=30)
    for n in range(6):
        c.completed(f"no_consent{n}", due, consent_messages=False)
    for n in range(4):
        c.completed(f"no_phone{n}", due, phone=None)
    for n in range(3):
        c.completed(f"refused{n}", due)
    c.completed("late", T - timedelta(hours=5))
    c.completed("sent", due)
    fake.configure(
        permanent_fail_recipients=[
            normalize_phone(p["phone"]) for p in c.rows["patients"] if p["id"].startswith("refused")
        ]
    )
    c.load(engine)
    heard: list[tuple[str, dict[str, Any]]] = []

    def emit(name: str, **fields: Any) -> None:
        heard.append((name, fields))
        observability.emit(name, **fields)

    j = journey(chain("tallied", ("a", "action", action(max_lateness={"amount": 1, "unit": "hours"}))))
    j.node("t", T, emit=emit)
    report = j.node("a", T, emit=emit)

    assert (report.sent, report.skipped, report.failed, report.expired) == (1, 10, 3, 1)
    assert statsd.counters == counted_by_tables(engine, "tallied")
    outcomes = Counter(
        {(f["outcome"], f["reason"]): f["count"] for name, f in heard if name == "message_outcome"}
    )
    assert sum(outcomes.values()) == 14
    assert len([name for name, _ in heard if name == "message_outcome"]) == len(outcomes) == 4
    assert outcomes[("skipped", "no_consent_messages")] == 6
    assert outcomes[("expired", next(r for o, r in outcomes if o == "expired"))] == 1
    prefix = "careflow.messages"
    assert statsd.moves[f"{prefix}.skipped.tallied.a.kakao"] == 2  # no consent, no phone
    assert statsd.moves[f"{prefix}.failed.tallied.a.kakao"] == 1
    assert statsd.moves[f"{prefix}.expired.tallied.a.kakao"] == 1


@pytest.mark.parametrize("how", ["after", "commit"])
def test_a_failed_settle_counts_each_ended_execution_once_after_the_retry(engine, journey, statsd, how):
    c = Clinic()
    cohort(c, 4, T - timedelta(hours=3))
    c.load(engine)
    j = journey(chain("settled", ("wait", "delay", {"amount": 1, "unit": "hours"})))
    j.node("t", T, emit=observability.emit)

    with fails_once(engine, "settle_executions", 1, how), pytest.raises(RuntimeError, match="simulated"):
        j.node("wait", T, emit=observability.emit)
    assert statsd.counters == counted_by_tables(engine, "settled")

    assert j.node("wait", RETRY, emit=observability.emit).passed == 4
    assert {e["status"] for e in executions(engine, "settled").values()} == {"completed"}
    assert statsd.counters == counted_by_tables(engine, "settled")
    assert statsd.counters["careflow.executions.completed.settled"] == 4


@pytest.mark.parametrize("how", ["statement", "commit"])
def test_an_enrollment_page_that_fails_counts_every_patient_once_after_the_retry(
    engine, journey, statsd, how
):
    c = Clinic()
    cohort(c, 5, T - timedelta(hours=3))
    c.load(engine)
    j = journey(chain("paged", ("a", "action", action()), settings={"batch_size": 2}))

    # The first page (two patients) commits; the second fails.
    with fails_once(engine, "create_steps", 2, how), pytest.raises(RuntimeError, match="simulated"):
        j.node("t", T, emit=observability.emit)
    assert len(executions(engine, "paged")) == 2
    assert statsd.counters == counted_by_tables(engine, "paged")

    assert j.node("t", RETRY, emit=observability.emit).enrolled == 3
    assert len(executions(engine, "paged")) == 5
    assert statsd.counters == counted_by_tables(engine, "paged")
    assert statsd.counters["careflow.executions.enrolled.paged"] == 5


def test_events_the_clinic_data_cannot_match_are_counted_once_enrolled(engine, journey, statsd):
    """An event that names an appointment the clinic's data does not hold is not enrolled: its
    counter says so, beside the enrolled ones."""
    from careflow.store import tables

    c = Clinic()
    cohort(c, 2, T - timedelta(hours=3))
    c.load(engine)
    with engine.begin() as conn:
        conn.execute(
            tables.appointment_events.insert().values(
                id="ghost", appointment_id="A-0001", patient_id="p0000", clinic_id="gangnam-01",
                type="appointment_completed", occurred_at=T - timedelta(hours=2),
            )
        )  # fmt: skip
    j = journey(chain("ghosts", ("a", "action", action())))
    assert j.node("t", T, emit=observability.emit).enrolled == 2
    assert (
        statsd.counters["careflow.executions.enrolled.ghosts"],
        statsd.counters["careflow.events.unmatched.ghosts"],
    ) == (2, 1)


def test_held_events_follow_the_outermost_block_and_only_this_thread(journey):
    import threading

    heard: list[str] = []
    ctx = journey(chain("held", ("a", "action", action()))).context(
        T, emit=lambda name, **_: heard.append(name)
    )
    with ctx.events_held():
        ctx.event("outer")
        with pytest.raises(RuntimeError), ctx.events_held():
            ctx.event("rolled_back")
            raise RuntimeError("inner batch failed")
        with ctx.events_held():
            ctx.event("inner")
        other = threading.Thread(target=ctx.event, args=("other_thread",))
        other.start()
        other.join()
        assert heard == ["other_thread"]  # the rest waits for the outer block
    assert heard == ["other_thread", "outer", "inner"]

    with pytest.raises(RuntimeError), ctx.events_held():
        ctx.event("dropped")
        raise RuntimeError("batch failed")
    ctx.event("direct")
    assert heard[3:] == ["direct"]
