"""The plans Postgres picks for the engine's hot queries on a node's steps just written.

A node task writes the next node's steps in bulk, and the next task reads them at once: the
planner's statistics are those of the table before the write (here: analysed empty). Under a
low ``random_page_cost`` (a common setting on SSDs) the planner then expects one row, and the
indexes must leave it no cheaper plan than the one that reads a batch in order.
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from careflow.engine.steps import due_steps, next_due
from careflow.store.migrations import upgrade

pytestmark = pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)

WORKFLOW = "seoul-clinic-visit-thanks-2026"
NOW = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)
STEPS = 10_000
BATCH = 1_000


def _written_just_now(engine: Any) -> None:
    """As the trigger node's task writes them: batch by batch, each execution's trigger step is
    written, run (done) and followed by its pending action step."""
    with engine.begin() as conn:
        conn.execute(text("ANALYZE careflow_steps"))  # statistics of the table before the write
        conn.execute(text("ANALYZE careflow_executions"))
    for first in range(1, STEPS + 1, BATCH):
        with engine.begin() as conn:
            ids = {"wf": WORKFLOW, "now": NOW, "first": first, "last": first + BATCH - 1}
            conn.execute(
                text(
                    "INSERT INTO careflow_executions (id, workflow_id, version, trigger_event_id, patient_id,"
                    " appointment_id, clinic_id, status, enrolled_at, event_at, updated_at)"
                    " SELECT md5(g::text), :wf, 1, 'e' || g, 'p' || g, 'a' || g, 'c', 'running', :now, :now, :now"
                    " FROM generate_series(:first, :last) AS g"
                ),
                ids,
            )
            insert_steps = text(
                "INSERT INTO careflow_steps (execution_id, workflow_id, node_id, status, arrived_at, attempts)"
                " SELECT md5(g::text), :wf, :node, 'pending', :now, 0 FROM generate_series(:first, :last) AS g"
            )
            conn.execute(insert_steps, {**ids, "node": "t1"})
            conn.execute(
                text(
                    "UPDATE careflow_steps SET status = 'done', started_at = :now WHERE node_id = 't1' AND status = 'pending'"
                ),
                {"now": NOW},
            )
            conn.execute(insert_steps, {**ids, "node": "a1"})


def _plan_of(conn: Any, call: Any) -> str:
    """EXPLAIN ANALYZE of the one statement ``call(conn)`` runs."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        call(conn)
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    [(statement, parameters)] = statements
    return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters))


@pytest.fixture
def engine(empty_db_url: str) -> Any:
    upgrade()
    engine = create_engine(empty_db_url)
    _written_just_now(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("random_page_cost", ["4", "1.1"])
def test_a_batch_of_due_steps_is_read_in_order_not_sorted(engine: Any, random_page_cost: str) -> None:
    ctx = SimpleNamespace(workflow_id=WORKFLOW, now=NOW)
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL random_page_cost = {random_page_cost}"))
        plan = _plan_of(conn, lambda c: due_steps(c, ctx, "a1", 0, 1000))
        assert "ix_steps_open" in plan and "Sort" not in plan, plan
        assert len(due_steps(conn, ctx, "a1", 0, 1000)) == 1000


@pytest.mark.parametrize("random_page_cost", ["4", "1.1"])
def test_the_next_wake_is_the_first_entry_of_the_waiting_steps(engine: Any, random_page_cost: str) -> None:
    ctx = SimpleNamespace(workflow_id=WORKFLOW, now=NOW)
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL random_page_cost = {random_page_cost}"))
        plan = _plan_of(conn, lambda c: next_due(c, ctx))
        assert "Index Only Scan using ix_steps_due" in plan, plan
        assert next_due(conn, ctx) is None


@pytest.fixture
def large_clinic(engine: Any) -> Any:
    """110,000 patients and as many appointments whose ids are not in the order the rows were
    written (as a clinic's generated ids)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (id, clinic_id, name, phone, consent_messages)"
                " SELECT 'p-' || md5(g::text), 'c', 'name ' || g, '010-0000-0000', true"
                " FROM generate_series(1, 110000) AS g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO appointments (id, patient_id, clinic_id, type, status, scheduled_at, created_at)"
                " SELECT 'a-' || md5(g::text), 'p-' || md5(g::text), 'c', 'visit', 'completed', :now, :now"
                " FROM generate_series(1, 110000) AS g"
            ),
            {"now": NOW},
        )
        conn.execute(text("ANALYZE patients"))
        conn.execute(text("ANALYZE appointments"))
    return engine


@pytest.mark.parametrize("table_name", ["patients", "appointments"])
@pytest.mark.parametrize("count", [1000, 2000, 5000])
def test_a_batchs_clinic_rows_are_each_read_through_the_primary_key(
    large_clinic: Any, table_name: str, count: int
) -> None:
    """A batch's ids out of 110,000 rows, as many as a batch may hold: written ``id = ANY(…)``,
    Postgres read the whole table for 1,000 of them; joined to their ``unnest``, it still hashed
    (or merged) the whole table for 2,000."""
    from careflow.engine.steps import _rows_of
    from careflow.store import tables

    table = getattr(tables, table_name)
    with large_clinic.begin() as conn:
        # Spread over the table, in no order of its own.
        ids = list(
            conn.execute(
                text(f"SELECT id FROM {table_name} ORDER BY md5(id) LIMIT :n"), {"n": count}
            ).scalars()
        )
    rows: list[Any] = []
    with large_clinic.connect() as conn:
        plan = _plan_of(conn, lambda c: rows.extend(c.execute(_rows_of(c, table, ids))))
    assert {row.id for row in rows} == set(ids)
    for whole_table in ("Seq Scan", "Hash Join", "Merge Join"):
        assert whole_table not in plan, plan
    assert f"Index Scan using {table_name}_pkey" in plan, plan
