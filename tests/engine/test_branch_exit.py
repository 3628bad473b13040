"""A branch that stops with a reason never ends an execution whose other branches are on their way."""

from __future__ import annotations

from typing import Any

import pytest

from careflow.engine.context import RunContext

from .harness import Clinic, action, chain, executions, kst, steps_of

# t -> d1 (until the appointment's completion, which is missing) -> a1
# t -> d2 (3 days) -> a2
EDGES = [("t", "d1", None), ("d1", "a1", None), ("t", "d2", None), ("d2", "a2", None)]


def two_branches(workflow_id: str, **settings: Any) -> dict[str, Any]:
    return chain(
        workflow_id,
        ("d1", "delay", {"until": "appointment.completed_at"}),
        ("a1", "action", action()),
        ("d2", "delay", {"amount": 3, "unit": "days"}),
        ("a2", "action", action()),
        edges=EDGES,
        settings=settings or None,
    )


def load_patient_without_completion(engine) -> None:
    c = Clinic()
    c.patient("p1")
    c.appointment("p1-a", "p1", scheduled_at=kst(2026, 3, 2, 9), completed_at=None, status="scheduled")
    c.event("p1-e", "p1-a", "appointment_completed", kst(2026, 3, 2, 10))
    c.load(engine)


def test_the_other_branch_runs_on_and_the_execution_exits_when_it_ends(engine, journey, monkeypatch):
    load_patient_without_completion(engine)
    j = journey(two_branches("branches"))
    j.run_at(kst(2026, 3, 3, 0))

    ex = executions(engine, "branches")["p1"]
    steps = steps_of(engine, "branches")
    assert (steps[("p1", "d1")]["status"], steps[("p1", "d1")]["error"]) == ("skipped", "delay_field_missing")
    assert steps[("p1", "d2")]["status"] == "waiting"
    # The stop is recorded, but the execution is still waiting on its other branch.
    assert (ex["status"], ex["exit_reason"], ex["finished_at"]) == ("waiting", "delay_field_missing@d1", None)

    j.run_days(kst(2026, 3, 3, 0, 1), kst(2026, 3, 8))
    assert set(j.sent) == {"p1/a2"}
    ex = executions(engine, "branches")["p1"]
    assert (ex["status"], ex["exit_reason"]) == ("exited", "delay_field_missing@d1")
    assert ex["finished_at"] is not None and ex["finished_at"] >= kst(2026, 3, 5)


def test_a_short_retention_never_purges_an_execution_with_a_branch_still_waiting(engine, journey):
    # Retention of 2 days, a 3-day wait on the other branch (the validator warns about it).
    load_patient_without_completion(engine)
    j = journey(two_branches("short-retention", retention_days=2))
    j.run_days(kst(2026, 3, 3), kst(2026, 3, 8))
    assert set(j.sent) == {"p1/a2"}
    assert executions(engine, "short-retention")["p1"]["status"] == "exited"


@pytest.mark.parametrize("stopped_first", [True, False])
def test_an_execution_exits_with_the_first_reason_and_counts_once(
    engine, journey, monkeypatch, stopped_first
):
    # Two branches that both stop: the first reason recorded stays, and the execution ends once.
    load_patient_without_completion(engine)
    events: list[tuple[str, dict[str, Any]]] = []
    doc = chain(
        "both-stop",
        ("d1", "delay", {"until": "appointment.completed_at"}),
        ("a1", "action", action()),
        ("d2", "delay", {"until": "appointment.completed_at", "offset": {"amount": 1, "unit": "days"}}),
        ("a2", "action", action()),
        edges=EDGES,
    )
    j = journey(doc)
    real_event = RunContext.event

    def spy(self: RunContext, name: str, **fields: Any) -> None:
        events.append((name, fields))
        real_event(self, name, **fields)

    monkeypatch.setattr(RunContext, "event", spy)
    if stopped_first:
        j.node("t", kst(2026, 3, 3, 0))
        j.node("d2", kst(2026, 3, 3, 0))
        assert executions(engine, "both-stop")["p1"]["status"] == "running"  # d1 is still pending
        j.node("d1", kst(2026, 3, 3, 0))
        first = "delay_field_missing@d2"
    else:
        j.run_at(kst(2026, 3, 3, 0))
        first = "delay_field_missing@d1"
    j.run_at(kst(2026, 3, 4, 0))
    ex = executions(engine, "both-stop")["p1"]
    assert (ex["status"], ex["exit_reason"]) == ("exited", first)
    ended = [f for name, f in events if name == "executions_completed"]
    assert ended == [{"status": "exited", "count": 1}]


def test_an_execution_recorded_as_exited_with_a_branch_open_is_not_purged(engine, journey):
    # Earlier releases marked the whole execution exited when one branch stopped.
    from sqlalchemy import update

    from careflow.store import tables

    load_patient_without_completion(engine)
    j = journey(two_branches("legacy-exit", retention_days=1))
    j.run_at(kst(2026, 3, 3, 0))
    with engine.begin() as conn:
        conn.execute(update(tables.executions).values(status="exited", finished_at=kst(2026, 3, 3, 0)))
    j.run_days(kst(2026, 3, 3, 0, 1), kst(2026, 3, 5, 12))
    assert set(j.sent) == {"p1/a2"}
    ex = executions(engine, "legacy-exit")["p1"]  # ended again, when its last branch did
    assert (ex["status"], ex["exit_reason"]) == ("exited", "delay_field_missing@d1")
    assert ex["finished_at"] >= kst(2026, 3, 5)
