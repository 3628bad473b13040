"""Editing a published workflow: executions in flight continue where their node still exists."""

from __future__ import annotations

from careflow.store import tables

from .harness import Clinic, example, executions, kst, ledger, rows, steps_of


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
