"""Editing a published workflow: executions in flight continue where their node still exists."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select

from careflow.engine import nodes
from careflow.snapshots import document_hash
from careflow.store import tables

from .harness import Clinic, action, chain, example, executions, kst, ledger, rows, steps_of


def record_version(engine, doc: dict[str, Any], version: int) -> None:
    """The published version's row, as ``careflow workflows publish`` writes it."""
    with engine.begin() as conn:
        conn.execute(
            tables.workflow_versions.insert(),
            {
                "workflow_id": doc["id"],
                "version": version,
                "content_hash": document_hash(doc),
                "name": doc["name"],
                "clinic_id": doc["clinic_id"],
                "status": "active",
                "document": doc,
                "diagnostics": [],
                "published_at": datetime(2025, 1, 1, tzinfo=timezone.utc),
            },
        )


def test_v2_removing_a_node_exits_the_executions_waiting_there(engine, journey, fake):
    c = Clinic()
    c.completed("at_window", kst(2025, 3, 5, 11))  # Saturday 11:00 release: parked at w1 until Monday
    c.completed("at_delay", kst(2025, 3, 7, 10))  # parked at d1 until Monday 10:00
    c.completed("new", kst(2025, 3, 9, 10))  # enrolls after v2 is published
    c.load(engine)
    v1 = journey(example("implant-aftercare"), version=1)
    v1.run_days(kst(2025, 3, 3), kst(2025, 3, 9))
    steps = steps_of(engine, "implant-aftercare")
    assert steps[("at_window", "w1")]["status"] == "waiting"
    assert steps[("at_delay", "d1")]["status"] == "waiting"

    doc = example("implant-aftercare")  # v2: no time window, the condition leads to the action
    doc["nodes"] = [n for n in doc["nodes"] if n["id"] != "w1"]
    doc["edges"] = [e for e in doc["edges"] if "w1" not in (e["source"], e["target"])]
    doc["edges"].append({"id": "e5", "source": "c1", "target": "a1", "sourceHandle": "true"})
    v2 = journey(doc, version=2)
    v2.run_days(kst(2025, 3, 9), kst(2025, 3, 11))

    ex = executions(engine, "implant-aftercare")
    assert ex["at_window"]["status"] == "exited"
    assert ex["at_window"]["exit_reason"] == "node_removed_in_version_2:w1"
    steps = steps_of(engine, "implant-aftercare")
    assert (steps[("at_window", "w1")]["status"], steps[("at_window", "w1")]["error"]) == (
        "skipped",
        "node_removed_in_version_2",
    )
    assert ("at_window", "a1") not in steps

    assert v2.sent == {"at_delay/a1": (kst(2025, 3, 10, 10), "wake")}
    assert ex["at_delay"]["status"] == "completed"
    assert ex["at_delay"]["version"] == 1 and ex["new"]["version"] == 2
    assert steps[("at_delay", "t1")]["version"] == 1
    assert {steps[("at_delay", n)]["version"] for n in ("d1", "c1", "a1")} == {2}
    assert ledger(engine, "implant-aftercare")["at_delay"]["version"] == 2
    assert v1.sent == {}
    assert len(rows(engine, tables.messages)) == 1


def test_a_node_id_kept_with_another_type_exits_the_executions_parked_there(engine, journey, fake):
    c = Clinic()
    c.completed("parked", kst(2025, 3, 3, 10))  # parked at d1 for 3 days, until Thursday 10:00
    c.completed("new", kst(2025, 3, 5, 12))  # enrolls under v2
    c.load(engine)
    v1_doc = chain("retyped", ("d1", "delay", {"amount": 3, "unit": "days"}), ("a1", "action", action()))
    record_version(engine, v1_doc, 1)
    journey(v1_doc, version=1).run_days(kst(2025, 3, 3), kst(2025, 3, 5))
    assert steps_of(engine, "retyped")[("parked", "d1")]["status"] == "waiting"

    v2_doc = chain("retyped", ("d1", "action", action("{{ patient.name }}님, 안녕하세요")))
    record_version(engine, v2_doc, 2)
    v2 = journey(v2_doc, version=2)
    v2.run_days(kst(2025, 3, 5), kst(2025, 3, 8))

    ex = executions(engine, "retyped")
    assert (ex["parked"]["status"], ex["parked"]["exit_reason"]) == (
        "exited",
        "node_type_changed_in_version_2:d1",
    )
    step = steps_of(engine, "retyped")[("parked", "d1")]
    assert (step["status"], step["error"]) == ("skipped", "node_type_changed_in_version_2")
    assert "parked" not in ledger(engine, "retyped")  # not recorded as a message expired days ago
    assert set(v2.sent) == {"new/d1"}  # the new version's action, for the new enrollment


def test_a_longer_retention_in_a_new_version_never_enrolls_a_purged_event_again(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 1, 1, 10))
    c.load(engine)
    month = {"amount": 30, "unit": "days"}
    v1_doc = chain("kept", ("a1", "action", action()), settings={"retention_days": 7, "max_lateness": month})
    record_version(engine, v1_doc, 1)
    v1 = journey(v1_doc, version=1)
    v1.run_at(kst(2025, 1, 2))
    assert set(v1.sent) == {"p1/a1"}
    v1.run_at(kst(2025, 1, 12))  # ended more than 7 days ago: purged
    assert executions(engine, "kept") == {} and rows(engine, tables.messages) == []

    v2_doc = chain(
        "kept", ("a1", "action", action()), settings={"retention_days": 365, "max_lateness": month}
    )
    record_version(engine, v2_doc, 2)
    v2 = journey(v2_doc, version=2)
    # The run of 2025-01-02 cleared (or January backfilled): its data interval holds the event.
    report = v2.run_at(kst(2025, 1, 13), interval_start=kst(2025, 1, 1))["t"]
    assert report.enrolled == 0
    assert executions(engine, "kept") == {} and rows(engine, tables.messages) == []
    assert fake.stats()["received"] == 1


@pytest.fixture
def version_reads(engine, monkeypatch):
    """The versions whose documents enrollment reads from the store, from an empty cache."""
    monkeypatch.setattr(nodes, "_seen_versions", OrderedDict())
    read: list[int] = []
    derive = nodes._published_version
    monkeypatch.setattr(nodes, "_published_version", lambda v, doc: read.append(v) or derive(v, doc))
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if "careflow_workflow_versions.document" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    yield read, statements
    event.remove(engine, "before_cursor_execute", count)


def test_an_older_version_is_read_once_and_a_new_one_still_counts(engine, journey, fake, version_reads):
    read, statements = version_reads
    c = Clinic()
    c.completed("parked", kst(2025, 3, 3, 10))
    c.load(engine)
    record_version(engine, chain("seen", ("a1", "action", action())), 1)
    v2_doc = chain("seen", ("d1", "delay", {"amount": 3, "unit": "days"}), ("a1", "action", action()))
    record_version(engine, v2_doc, 2)
    v2 = journey(v2_doc, version=2)
    v2.run_at(kst(2025, 3, 4))
    v2.run_at(kst(2025, 3, 4, 1))
    assert read == [1] and len(statements) == 1  # the second run reads no document
    assert steps_of(engine, "seen")[("parked", "d1")]["status"] == "waiting"

    # v3 turns d1 into an action: only v2's document, read now, says the parked step is stale.
    v3_doc = chain("seen", ("d1", "action", action()))
    record_version(engine, v3_doc, 3)
    journey(v3_doc, version=3).run_at(kst(2025, 3, 4, 2))
    assert read == [1, 2] and len(statements) == 2
    assert executions(engine, "seen")["parked"]["exit_reason"] == "node_type_changed_in_version_3:d1"


def test_a_version_number_holding_other_content_is_read_again(engine, journey, fake, version_reads):
    read, _ = version_reads
    c = Clinic()
    c.completed("parked", kst(2025, 3, 3, 10))
    c.load(engine)
    v1_doc = chain("renumbered", ("d1", "delay", {"amount": 3, "unit": "days"}), ("a1", "action", action()))
    record_version(engine, v1_doc, 1)
    journey(v1_doc, version=1).run_at(kst(2025, 3, 4))
    v2 = journey(chain("renumbered", ("d1", "delay", {"amount": 4, "unit": "days"})), version=2)
    v2.run_at(kst(2025, 3, 4, 1))
    assert steps_of(engine, "renumbered")[("parked", "d1")]["status"] == "waiting"

    # The database rebuilt, version 1 published again with d1 an action: not what was read before.
    with engine.begin() as conn:
        conn.execute(tables.workflow_versions.delete())
    record_version(engine, chain("renumbered", ("d1", "action", action())), 1)
    v2.run_at(kst(2025, 3, 4, 2))
    assert read == [1, 1]
    assert executions(engine, "renumbered")["parked"]["exit_reason"] == "node_type_changed_in_version_2:d1"


def test_a_new_delay_amount_applies_to_the_executions_that_arrive_after_it(engine, journey, fake):
    c = Clinic()
    c.completed("parked", kst(2025, 3, 3, 10))  # v1: parked at d1 for 3 days, until Thursday 10:00
    c.completed("new", kst(2025, 3, 5, 12))  # enrolls under v2: one day, until Thursday 12:00
    c.load(engine)
    v1_doc = chain("resized", ("d1", "delay", {"amount": 3, "unit": "days"}), ("a1", "action", action()))
    record_version(engine, v1_doc, 1)
    journey(v1_doc, version=1).run_days(kst(2025, 3, 3), kst(2025, 3, 5))
    parked = steps_of(engine, "resized")[("parked", "d1")]
    assert (parked["status"], parked["due_at"]) == ("waiting", kst(2025, 3, 6, 10))

    v2_doc = chain("resized", ("d1", "delay", {"amount": 1, "unit": "days"}), ("a1", "action", action()))
    record_version(engine, v2_doc, 2)
    v2 = journey(v2_doc, version=2)
    v2.run_days(kst(2025, 3, 5), kst(2025, 3, 8))

    # Nobody already waiting is released early by the shorter delay (v2 would have released the
    # parked one on Tuesday); the new enrollment gets it.
    assert {key: at for key, (at, _) in v2.sent.items()} == {
        "parked/a1": kst(2025, 3, 6, 10),
        "new/a1": kst(2025, 3, 6, 12),
    }
    steps = steps_of(engine, "resized")
    assert steps[("parked", "d1")]["version"] == 2 and steps[("new", "d1")]["version"] == 2


def test_a_wait_until_an_appointment_field_is_read_again_with_the_new_version(engine, journey, fake):
    c = Clinic()
    c.completed("parked", kst(2025, 3, 3, 10))
    c.load(engine)
    until = {"until": "appointment.completed_at", "offset": {"amount": 3, "unit": "days"}}
    v1_doc = chain("reread", ("d1", "delay", until), ("a1", "action", action()))
    record_version(engine, v1_doc, 1)
    journey(v1_doc, version=1).run_days(kst(2025, 3, 3), kst(2025, 3, 5))
    assert steps_of(engine, "reread")[("parked", "d1")]["due_at"] == kst(2025, 3, 6, 10)

    later = {**until, "offset": {"amount": 4, "unit": "days"}}
    v2_doc = chain("reread", ("d1", "delay", later), ("a1", "action", action()))
    record_version(engine, v2_doc, 2)
    v2 = journey(v2_doc, version=2)
    v2.run_days(kst(2025, 3, 5), kst(2025, 3, 9))
    # Read again when it fell due on Thursday, with the offset published since: Friday.
    assert {key: at for key, (at, _) in v2.sent.items()} == {"parked/a1": kst(2025, 3, 7, 10)}


def test_a_workflow_published_not_active_is_purged_past_its_retention_by_the_active_ones(
    engine, journey, fake, caplog
):
    """Its DAG is not built, so no run of its own purges it: an active workflow's trigger does."""
    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("old", t0 - timedelta(days=40) - timedelta(hours=5))
    c.completed("held", t0 - timedelta(days=40) - timedelta(hours=4))
    c.load(engine)
    stopped_doc = chain("stopped", ("a", "action", action()), settings={"retention_days": 30})
    record_version(engine, stopped_doc, 1)
    journey(stopped_doc, version=1).run_at(t0 - timedelta(days=40))
    with engine.begin() as conn:
        x = tables.executions
        conn.execute(x.update().where(x.c.patient_id == "held").values(status="waiting"))
    paused = {**stopped_doc, "status": "paused"}
    record_version(engine, paused, 2)
    with engine.begin() as conn:
        v = tables.workflow_versions
        conn.execute(v.update().where(v.c.workflow_id == "stopped", v.c.version == 2).values(status="paused"))
    assert set(executions(engine, "stopped")) == {"old", "held"}

    active_doc = chain("going", ("a", "action", action()))
    record_version(engine, active_doc, 1)
    going = journey(active_doc, version=1)
    going.run_at(t0, simulated=True)  # a simulation's clock is made up: it purges nobody else
    assert set(executions(engine, "stopped")) == {"old", "held"}

    if engine.dialect.name == "postgresql":  # another run purging it holds its lock: left to that run
        with engine.connect() as other, other.begin():
            other.execute(select(func.pg_advisory_xact_lock(nodes._purge_lock_key("stopped"))))
            going.run_at(t0 + timedelta(minutes=30))
            assert set(executions(engine, "stopped")) == {"old", "held"}

    with caplog.at_level("INFO", logger="careflow.engine.nodes"):
        going.run_at(t0 + timedelta(hours=1))
    assert set(executions(engine, "stopped")) == {"held"}  # an execution in flight is kept
    assert "old" not in ledger(engine, "stopped") and "old" not in {p for p, _ in steps_of(engine, "stopped")}
    assert (
        "careflow going: purged 1 executions of workflow stopped (paused since version 2) ended before "
        "its retention" in caplog.messages
    )


def test_purging_the_workflows_not_active_never_fails_an_enrollment(
    engine, journey, fake, monkeypatch, caplog
):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 10))
    c.load(engine)
    stopped_doc = {**chain("stopped", ("a", "action", action())), "status": "archived"}
    record_version(engine, stopped_doc, 1)
    with engine.begin() as conn:
        v = tables.workflow_versions
        conn.execute(v.update().where(v.c.workflow_id == "stopped").values(status="archived"))

    purge = nodes._purge

    def broken(conn, workflow_id, cutoff):  # noqa: ANN001, ANN202
        if workflow_id == "stopped":
            raise RuntimeError("disk on fire")
        return purge(conn, workflow_id, cutoff)

    monkeypatch.setattr(nodes, "_purge", broken)
    doc = chain("going", ("a", "action", action()))
    with caplog.at_level("WARNING", logger="careflow.engine.nodes"):
        report = journey(doc).run_at(kst(2025, 3, 4))["t"]
    assert report.enrolled == 1
    assert (
        "careflow going: the executions of workflows published not active were not purged past their "
        "retention this run (the next run tries again): RuntimeError: disk on fire" in caplog.messages
    )


def test_publishing_a_workflow_archived_ends_its_executions_in_flight(
    engine, journey, fake, tmp_path, caplog
):
    """Archiving retires a workflow: no run of it will move them on, so they end, each with why and
    where it was, and are purged past the retention like the rest."""
    from careflow.publishing import publish_paths

    c = Clinic()
    c.completed("at_window", kst(2025, 3, 5, 11))  # Saturday 11:00 release: parked at w1 until Monday
    c.completed("at_delay", kst(2025, 3, 7, 10))  # parked at d1 until Monday 10:00
    c.load(engine)
    doc = example("implant-aftercare")
    record_version(engine, doc, 1)
    journey(doc, version=1).run_days(kst(2025, 3, 3), kst(2025, 3, 9))
    assert {p: e["status"] for p, e in executions(engine, "implant-aftercare").items()} == {
        "at_window": "waiting",
        "at_delay": "waiting",
    }

    failing = executions(engine, "implant-aftercare")["at_window"]["id"]
    with engine.begin() as conn:  # a branch of one of them failed: it ends failed
        s = tables.steps
        conn.execute(
            s.update().where(s.c.execution_id == failing, s.c.node_id == "c1").values(status="failed")
        )
    archived = tmp_path / "archived.json"
    archived.write_text(json.dumps({**doc, "status": "archived"}), encoding="utf-8")
    (result,) = publish_paths([archived], engine=engine, workflows_dir=tmp_path / "snapshots")
    assert (result.action, result.version, result.ended) == ("published", 2, 2)
    ex = executions(engine, "implant-aftercare")
    assert {p: (e["status"], e["exit_reason"]) for p, e in ex.items()} == {
        "at_window": ("failed", "workflow_archived_in_version_2:w1"),
        "at_delay": ("exited", "workflow_archived_in_version_2:d1"),
    }
    assert all(e["finished_at"] is not None for e in ex.values())
    steps = steps_of(engine, "implant-aftercare")
    assert (steps[("at_window", "w1")]["status"], steps[("at_window", "w1")]["error"]) == (
        "skipped",
        "workflow_archived_in_version_2",
    )
    assert steps[("at_delay", "d1")]["status"] == "skipped"
    assert steps[("at_delay", "t1")]["status"] == "done"  # what ended before is kept as it was
    (again,) = publish_paths([archived], engine=engine, workflows_dir=tmp_path / "snapshots")
    assert (again.action, again.ended) == ("unchanged", 0)

    # A run in flight as it was archived moved one on since: the active workflows' runs end it.
    x, s = tables.executions, tables.steps
    with engine.begin() as conn:
        conn.execute(
            s.update()
            .where(s.c.workflow_id == "implant-aftercare", s.c.node_id == "d1")
            .values(status="waiting")
        )
        conn.execute(
            x.update()
            .where(x.c.workflow_id == "implant-aftercare", x.c.patient_id == "at_delay")
            .values(status="waiting", exit_reason=None, finished_at=None)
        )
    active_doc = chain("going", ("a", "action", action()))
    record_version(engine, active_doc, 1)
    going = journey(active_doc, version=1)
    going.run_at(kst(2025, 3, 10), simulated=True)  # a simulation's clock is made up: it ends nobody else's
    assert executions(engine, "implant-aftercare")["at_delay"]["status"] == "waiting"
    with caplog.at_level("INFO", logger="careflow.engine.nodes"):
        going.run_at(kst(2025, 3, 10, 1))
    assert executions(engine, "implant-aftercare")["at_delay"]["status"] == "exited"
    assert steps_of(engine, "implant-aftercare")[("at_delay", "d1")]["status"] == "skipped"
    assert (
        "careflow going: ended 1 executions of workflow implant-aftercare still in flight since it was "
        "archived in version 2" in caplog.messages
    )


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has one writer at a time
def test_archiving_waits_for_a_run_purging_the_workflow(engine, journey, fake, tmp_path):
    """Publish and an active workflow's run may both end an archived one's executions: on Postgres
    they take turns (the purge's advisory lock), rather than update the same rows at once."""
    import threading

    from careflow.publishing import publish_paths

    c = Clinic()
    c.completed("at_delay", kst(2025, 3, 7, 10))  # parked at d1 until Monday 10:00
    c.load(engine)
    doc = example("implant-aftercare")
    record_version(engine, doc, 1)
    journey(doc, version=1).run_days(kst(2025, 3, 7), kst(2025, 3, 9))
    archived = tmp_path / "archived.json"
    archived.write_text(json.dumps({**doc, "status": "archived"}), encoding="utf-8")

    results: list[Any] = []
    with engine.connect() as other, other.begin():
        other.execute(select(func.pg_advisory_xact_lock(nodes._purge_lock_key("implant-aftercare"))))
        publishing = threading.Thread(
            target=lambda: results.extend(
                publish_paths([archived], engine=engine, workflows_dir=tmp_path / "s")
            )
        )
        publishing.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        for _ in range(200):  # the publish is seen waiting for the lock
            if other.exec_driver_sql(waiting).scalar():
                break
            publishing.join(0.05)
        assert other.exec_driver_sql(waiting).scalar() == 1
        assert results == []
    publishing.join(30)
    assert [(r.action, r.ended) for r in results] == [("published", 1)]
    assert executions(engine, "implant-aftercare")["at_delay"]["status"] == "exited"
