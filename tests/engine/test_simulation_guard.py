"""``careflow simulate`` never runs a workflow whose real runs have enrolled patients in its database."""

from __future__ import annotations

import pytest

from careflow.clock import SIMULATED_RUN_PREFIX
from careflow.exceptions import ConfigurationError
from careflow.simulation import _refuse_live_workflow

from .harness import Clinic, action, chain, executions, kst


def test_a_simulated_run_marks_the_executions_it_enrolls(engine, journey):
    c = Clinic()
    c.completed("sim", kst(2026, 3, 2, 10))
    c.completed("real", kst(2026, 3, 3, 10))
    c.load(engine)
    j = journey(chain("marked", ("a1", "action", action())))
    j.run_at(kst(2026, 3, 3, 0), simulated=True, run_id="manual__2026-03-03T00:00:00")
    _refuse_live_workflow("marked")  # only simulated executions: a simulation may go on
    j.run_at(kst(2026, 3, 4, 0), run_id="scheduled__2026-03-04T00:00:00")

    ex = executions(engine, "marked")
    assert ex["sim"]["run_id"] == SIMULATED_RUN_PREFIX + "manual__2026-03-03T00:00:00"
    assert ex["real"]["run_id"] == "scheduled__2026-03-04T00:00:00"
    with pytest.raises(ConfigurationError) as refused:
        _refuse_live_workflow("marked")
    message = str(refused.value)
    assert "'marked'" in message and "scheduled__2026-03-04T00:00:00" in message
    assert "--dry-run" in message and "copy of the database" in message
    _refuse_live_workflow("another-workflow")  # per workflow


def test_an_in_order_simulation_run_id_is_marked_once(engine, journey):
    c = Clinic()
    c.completed("p1", kst(2026, 3, 2, 10))
    c.load(engine)
    j = journey(chain("once", ("a1", "action", action())))
    run_id = f"{SIMULATED_RUN_PREFIX}scheduled__20260303T000000"
    j.run_at(kst(2026, 3, 3, 0), simulated=True, run_id=run_id)
    assert executions(engine, "once")["p1"]["run_id"] == run_id
    _refuse_live_workflow("once")
