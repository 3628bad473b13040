"""The action node's send pipeline and the bulk writes it relies on.

While one batch is on the wire (in the send thread) the task records the batch before it and
prepares the batch after it. Whatever happens, every claimed batch is recorded: nothing is left
``claimed`` by a task that ended, and no key is sent twice.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from careflow.engine import steps as st
from careflow.engine.nodes import process_node
from careflow.exceptions import ProviderConfigurationError
from careflow.providers.client import Outcome, ProviderClient, SendResult
from careflow.store import tables

from .harness import Clinic, action, assert_exactly_once, chain, cohort, kst, ledger

T = kst(2025, 3, 5, 10)
m = tables.messages


def ledger_row(workflow_id: str, **fields: Any) -> dict[str, Any]:
    """A ledger row of workflow ``workflow_id`` at node ``a``; ``fields`` add to it or override it."""
    return {
        "workflow_id": workflow_id,
        "node_id": "a",
        "version": 1,
        "channel": "kakao",
        "purpose": "care",
        "patient_id": "p",
        "due_at": T,
        "updated_at": T,
        **fields,
    }


def execution_row(workflow_id: str, execution_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """An execution of workflow ``workflow_id`` (its id the workflow's unless given), for the steps a
    test writes; ``fields`` add to it or override it, as :func:`ledger_row`'s do."""
    return {
        "id": execution_id or workflow_id,
        "workflow_id": workflow_id,
        "version": 1,
        "trigger_event_id": "e",
        "patient_id": "p",
        "appointment_id": "a",
        "clinic_id": "c",
        "status": "running",
        "enrolled_at": T,
        "event_at": T,
        "updated_at": T,
        **fields,
    }


def enrolled(engine, journey, workflow_id: str, *, patients: int, batch_size: int) -> Any:
    """A trigger → action journey whose ``patients`` completed yesterday, enrolled at ``T``."""
    c = Clinic()
    cohort(c, patients, kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain(workflow_id, ("a", "action", action()), settings={"batch_size": batch_size}))
    j.node("t", T)
    return j


def test_bulk_update_gives_each_row_its_own_values(engine) -> None:
    base = ledger_row("bulk", execution_id="x", attempts=2, status="claimed")
    keys = ["bulk-1", "bulk-2", "bulk-3", "bulk-untouched"]
    with engine.begin() as conn:
        conn.execute(insert(m), [{**base, "idempotency_key": k, "execution_id": k} for k in keys])
        st.bulk_update(
            conn,
            m,
            "idempotency_key",
            [
                # Quotes, percent signs and non-ASCII text reach the database as they are.
                {"idempotency_key": "bulk-1", "status": "sent", "why": None, "at": T, "ms": 12},
                {
                    "idempotency_key": "bulk-2",
                    "status": "failed",
                    "why": "50% o'clock; 실패",
                    "at": None,
                    "ms": None,
                },
                {"idempotency_key": "bulk-3", "status": "pending", "why": "%(x)s %s", "at": None, "ms": 0},
            ],
            {"status": "status", "reason": "why", "sent_at": "at", "latency_ms": "ms"},
            {"updated_at": T + timedelta(hours=1), "provider_id": "p-1", "attempts": 10},
            {"attempts": "{attempts} + {value}"},
        )
    with engine.connect() as conn:
        got = {
            row["idempotency_key"]: row
            for row in conn.execute(select(m).where(m.c.workflow_id == "bulk")).mappings()
        }
    assert (got["bulk-1"]["status"], got["bulk-1"]["reason"], got["bulk-1"]["latency_ms"]) == (
        "sent",
        None,
        12,
    )
    assert got["bulk-1"]["sent_at"] == T
    assert (got["bulk-2"]["status"], got["bulk-2"]["reason"]) == ("failed", "50% o'clock; 실패")
    assert got["bulk-2"]["sent_at"] is None and got["bulk-2"]["latency_ms"] is None
    assert (got["bulk-3"]["reason"], got["bulk-3"]["latency_ms"]) == ("%(x)s %s", 0)
    for key in ("bulk-1", "bulk-2", "bulk-3"):
        assert got[key]["updated_at"] == T + timedelta(hours=1)
        assert got[key]["provider_id"] == "p-1"
        assert got[key]["attempts"] == 12  # the expression saw the row's own value
    assert got["bulk-untouched"]["status"] == "claimed" and got["bulk-untouched"]["attempts"] == 2


def test_bulk_update_sends_what_every_row_shares_once(engine) -> None:
    """What every row holds alike goes as a constant; each row keeps the value it was given."""
    base = ledger_row("shared", attempts=1, status="claimed")
    keys = [f"shared-{i}" for i in range(4)]
    rows = [
        {"idempotency_key": k, "status": "sent", "sent_at": T, "provider_id": f"p-{i}", "latency": i or None}
        for i, k in enumerate(keys)
    ]
    columns = {
        "status": "status",
        "sent_at": "sent_at",
        "provider_id": "provider_id",
        "latency_ms": "latency",
    }
    with engine.begin() as conn:
        conn.execute(insert(m), [{**base, "idempotency_key": k, "execution_id": k} for k in keys])
        if engine.dialect.name == "postgresql":
            _, params = st._values_update_sql(conn, m, "idempotency_key", rows, columns, {}, {})
            import json

            assert [sorted(r) for r in json.loads(params["rows"])] == [
                ["idempotency_key", "provider_id"],
                *[["idempotency_key", "latency_ms", "provider_id"]] * 3,
            ]
        st.bulk_update(conn, m, "idempotency_key", rows, columns, {"updated_at": T + timedelta(hours=1)})
    with engine.connect() as conn:
        got = conn.execute(
            select(m.c.idempotency_key, m.c.status, m.c.sent_at, m.c.provider_id, m.c.latency_ms)
            .where(m.c.workflow_id == "shared")
            .order_by(m.c.idempotency_key)
        ).all()
    assert got == [(k, "sent", T, f"p-{i}", i or None) for i, k in enumerate(keys)]


def test_bulk_update_of_rows_alike_but_for_their_keys_sends_the_keys_alone(engine) -> None:
    """Nothing differs but the key: on Postgres the keys go as one array, with no document to join."""
    base = ledger_row("alike", attempts=1, status="claimed")
    keys = ["alike-1", 'alike-"2"', "alike-3", "alike-untouched"]
    rows = [{"idempotency_key": k, "status": "sent", "sent_at": T} for k in keys[:3]]
    columns = {"status": "status", "sent_at": "sent_at"}
    with engine.begin() as conn:
        conn.execute(insert(m), [{**base, "idempotency_key": k, "execution_id": k} for k in keys])
        if engine.dialect.name == "postgresql":
            statement, params = st._values_update_sql(
                conn, m, "idempotency_key", rows, columns, {}, {"attempts": "{attempts} + 1"}
            )
            assert "json_populate_recordset" not in statement and "rows" not in params
            assert params["keys"] == '{"alike-1","alike-\\"2\\"","alike-3"}'
        st.bulk_update(
            conn, m, "idempotency_key", rows, columns, {"updated_at": T}, {"attempts": "{attempts} + 1"}
        )
    with engine.connect() as conn:
        got = conn.execute(
            select(m.c.idempotency_key, m.c.status, m.c.sent_at, m.c.attempts)
            .where(m.c.workflow_id == "alike")
            .order_by(m.c.idempotency_key)
        ).all()
    assert sorted(got) == sorted(
        [(k, "sent", T, 2) for k in keys[:3]] + [("alike-untouched", "claimed", None, 1)]
    )


def test_bulk_update_writes_each_json_value_as_it_was_given(engine) -> None:
    """Equal JSON values of distinct objects are each row's own (``1`` and ``1.0`` are not written alike)."""
    from careflow.engine.steps import finish_steps

    s = tables.steps
    execution = execution_row("jsonv")
    with engine.begin() as conn:
        st.insert_ignore(conn, tables.executions, [execution], ["workflow_id", "trigger_event_id"])
        st.insert_ignore(
            conn,
            s,
            [{"execution_id": "jsonv", "node_id": n, "arrived_at": T} for n in ("n1", "n2", "n3")],
            ["execution_id", "node_id"],
            constants={"workflow_id": "jsonv", "status": "pending"},
        )
        ids = dict(conn.execute(select(s.c.node_id, s.c.id).where(s.c.workflow_id == "jsonv")).all())
        shared = {"message": "sent"}
        ctx = type("Ctx", (), {"now": T, "compiled": type("C", (), {"version": 2})(), "run_id": "r"})()
        finish_steps(
            conn,
            ctx,
            [
                {"id": ids["n1"], "status": "done", "output": {"n": 1}},
                {"id": ids["n2"], "status": "done", "output": {"n": 1.0}},
                {"id": ids["n3"], "status": "done", "output": {"n": 1}},
            ],
        )
        finish_steps(conn, ctx, [{"id": ids[n], "status": "done", "output": shared} for n in ("n1", "n3")])
        got = dict(conn.execute(select(s.c.node_id, s.c.output).where(s.c.workflow_id == "jsonv")).all())
    assert got == {"n1": {"message": "sent"}, "n2": {"n": 1.0}, "n3": {"message": "sent"}}
    assert type(got["n2"]["n"]) is float


def test_settling_decides_each_execution_from_its_steps_states(engine) -> None:
    """Pending wins over waiting, waiting over failed; nothing open or failed ends it, once."""
    s, x = tables.steps, tables.executions
    steps = {
        "running": ["done", "pending", "failed"],
        "waiting": ["done", "waiting", "failed"],
        "failed": ["done", "failed", "skipped"],
        "completed": ["done", "done", "skipped"],
        "exited": ["done", "skipped"],
        "no-steps": [],
        "ended-before": ["done"],
    }
    own: dict[str, dict[str, Any]] = {
        "exited": {"exit_reason": "condition_false"},
        "ended-before": {"status": "completed", "finished_at": T - timedelta(days=1)},
    }
    # Every row with the same columns: one insert of them all.
    executions = [
        execution_row(
            "settle",
            f"settle-{name}",
            **{
                "trigger_event_id": f"settle-{name}",
                "exit_reason": None,
                "finished_at": None,
                **own.get(name, {}),
            },
        )
        for name in steps
    ]
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = type("Ctx", (), {"now": T, "event": lambda self, name, **f: events.append((name, f))})()
    with engine.begin() as conn:
        conn.execute(insert(x), executions)
        conn.execute(
            insert(s),
            [
                {
                    "execution_id": f"settle-{name}",
                    "workflow_id": "settle",
                    "node_id": f"n{i}",
                    "status": status,
                    "arrived_at": T,
                }
                for name, states in steps.items()
                for i, status in enumerate(states)
            ],
        )
        st.settle_executions(conn, ctx, [row["id"] for row in executions])
        got = {
            execution_id.removeprefix("settle-"): (status, finished_at)
            for execution_id, status, finished_at in conn.execute(
                select(x.c.id, x.c.status, x.c.finished_at).where(x.c.workflow_id == "settle")
            )
        }
    assert {name: status for name, (status, _) in got.items()} == {
        "running": "running",
        "waiting": "waiting",
        "failed": "failed",
        "completed": "completed",
        "exited": "exited",
        "no-steps": "completed",
        "ended-before": "completed",
    }
    assert {name for name, (_, finished) in got.items() if finished == T} == {
        "failed",
        "completed",
        "exited",
        "no-steps",
    }
    assert sorted((name, f["status"], f["count"]) for name, f in events) == [
        ("executions_completed", "completed", 2),
        ("executions_completed", "exited", 1),
        ("executions_completed", "failed", 1),
    ]


def test_insert_ignore_skips_conflicts_and_returns_what_it_wrote(engine) -> None:
    base = ledger_row("ins", attempts=0, status="pending")
    with engine.begin() as conn:
        first = st.insert_ignore(
            conn,
            m,
            [{**base, "idempotency_key": "ins-1", "execution_id": "x1", "reason": None}],
            ["idempotency_key"],
        )
        wrote = st.insert_ignore(
            conn,
            m,
            [
                # Quotes, percent signs and non-ASCII text reach the database as they are.
                {**base, "idempotency_key": "ins-1", "execution_id": "x1", "reason": "again"},
                {**base, "idempotency_key": "ins-2", "execution_id": "x2", "reason": "50% o'clock; 실패"},
                {**base, "idempotency_key": "ins-3", "execution_id": "x3", "reason": "%(x)s %s"},
            ],
            ["idempotency_key"],
            returning="idempotency_key",
        )
    assert first == set() and wrote == {"ins-2", "ins-3"}
    with engine.connect() as conn:
        got = {
            r["idempotency_key"]: r
            for r in conn.execute(select(m).where(m.c.workflow_id == "ins")).mappings()
        }
    assert set(got) == {"ins-1", "ins-2", "ins-3"}
    assert got["ins-1"]["reason"] is None  # the conflicting row left the first one as it was
    assert (got["ins-2"]["reason"], got["ins-3"]["reason"]) == ("50% o'clock; 실패", "%(x)s %s")
    assert got["ins-2"]["due_at"] == T and got["ins-2"]["attempts"] == 0


def test_insert_ignore_refuses_rows_of_different_shapes(engine) -> None:
    from sqlalchemy.exc import StatementError

    rows = [{"idempotency_key": "shape-a", "status": "x"}, {"idempotency_key": "shape-b"}]
    with (
        pytest.raises((ValueError, StatementError), match="row 1 has columns|bind parameter"),
        engine.begin() as conn,
    ):
        st.insert_ignore(conn, m, rows, ["idempotency_key"])
    with engine.connect() as conn:
        assert (
            conn.execute(select(m.c.idempotency_key).where(m.c.idempotency_key.like("shape-%"))).all() == []
        )


def test_insert_ignore_names_the_table_not_the_value_it_cannot_write(engine) -> None:
    from sqlalchemy.exc import StatementError

    class Secret:
        def __repr__(self) -> str:
            return "010-1234-5678"

    row = {**ledger_row("bad", attempts=0, status="pending"), "idempotency_key": "bad-1", "reason": Secret()}
    with pytest.raises((ValueError, StatementError)) as raised, engine.begin() as conn:
        st.insert_ignore(conn, m, [row], ["idempotency_key"])
    assert "careflow_messages" in str(raised.value)
    assert "010-1234-5678" not in str(raised.value)
    if engine.dialect.name == "postgresql":  # SQLite's path is SQLAlchemy's own executemany
        assert "Secret" in str(raised.value)
    with engine.connect() as conn:
        assert conn.execute(select(m.c.idempotency_key).where(m.c.idempotency_key == "bad-1")).all() == []


def test_insert_ignore_writes_json_and_time_columns(engine) -> None:
    execution = execution_row("json", "json-x")
    rows = [
        {
            "execution_id": "json-x",
            "workflow_id": "json",
            "node_id": f"n{i}",
            "status": "done",
            "arrived_at": T + timedelta(minutes=i),
            "output": {"message": "sent", "n": i, "text": "100% '좋음'"},
        }
        for i in range(3)
    ]
    with engine.begin() as conn:
        st.insert_ignore(conn, tables.executions, [execution], ["workflow_id", "trigger_event_id"])
        st.insert_ignore(conn, tables.steps, rows, ["execution_id", "node_id"])
        st.insert_ignore(conn, tables.steps, rows, ["execution_id", "node_id"])
    s = tables.steps
    with engine.connect() as conn:
        got = conn.execute(
            select(s.c.node_id, s.c.arrived_at, s.c.output).where(s.c.workflow_id == "json")
        ).all()
    assert sorted((n, at, out["n"], out["text"]) for n, at, out in got) == [
        (f"n{i}", T + timedelta(minutes=i), i, "100% '좋음'") for i in range(3)
    ]


def test_insert_ignore_gives_every_row_the_constants(engine) -> None:
    rows = [
        {"idempotency_key": f"const-{i}", "execution_id": f"x{i}", "reason": None if i else "first"}
        for i in range(3)
    ]
    constants = {
        **ledger_row("const"),
        "status": "claimed",
        "attempts": 1,
        "claimed_at": T,
        "last_error": None,
    }
    with engine.begin() as conn:
        wrote = st.insert_ignore(
            conn, m, rows, ["idempotency_key"], returning="idempotency_key", constants=constants
        )
        again = st.insert_ignore(conn, m, rows[:1], ["idempotency_key"], constants=constants)
    assert wrote == {"const-0", "const-1", "const-2"} and again == set()
    with engine.connect() as conn:
        got = {
            r["idempotency_key"]: r
            for r in conn.execute(select(m).where(m.c.workflow_id == "const")).mappings()
        }
    assert set(got) == {"const-0", "const-1", "const-2"}
    for i, key in enumerate(sorted(got)):
        row = got[key]
        assert (row["execution_id"], row["status"], row["attempts"]) == (f"x{i}", "claimed", 1)
        assert (row["channel"], row["claimed_at"], row["due_at"], row["last_error"]) == ("kakao", T, T, None)
        assert row["reason"] == ("first" if i == 0 else None)


def test_insert_ignore_refuses_a_column_given_twice(engine) -> None:
    row = {**ledger_row("twice"), "idempotency_key": "twice-1", "execution_id": "x", "status": "claimed"}
    given_twice = r"\['status'\] given both in the rows and as constants"
    with pytest.raises(ValueError, match=given_twice), engine.begin() as conn:
        st.insert_ignore(conn, m, [row], ["idempotency_key"], constants={"status": "sent"})


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # the document is Postgres' statement's
def test_rows_leave_their_nulls_out_of_the_document(engine) -> None:
    """A NULL is a key left out of the JSON the rows go in as: the same NULL, less to write and parse."""
    rows = [
        {"execution_id": "nulls", "node_id": "n1", "output": None, "error": None, "arrived_at": T},
        {"execution_id": "nulls", "node_id": "n2", "output": {"a": None}, "error": "e", "arrived_at": T},
    ]
    with engine.connect() as conn:
        document = st._Recordset(conn, tables.steps).document([(c, c) for c in rows[0]], rows)
    import json

    assert [sorted(r) for r in json.loads(document)] == [
        ["arrived_at", "execution_id", "node_id"],
        ["arrived_at", "error", "execution_id", "node_id", "output"],
    ]
    execution = execution_row("nulls")
    s = tables.steps
    with engine.begin() as conn:
        st.insert_ignore(conn, tables.executions, [execution], ["workflow_id", "trigger_event_id"])
        st.insert_ignore(
            conn, s, rows, ["execution_id", "node_id"], constants={"workflow_id": "nulls", "status": "done"}
        )
        got = dict(
            conn.execute(
                select(s.c.node_id, s.c.output.is_(None) & s.c.error.is_(None)).where(
                    s.c.workflow_id == "nulls"
                )
            ).all()
        )
        output = conn.exec_driver_sql(
            "SELECT output::text FROM careflow_steps WHERE execution_id = 'nulls' AND node_id = 'n2'"
        ).scalar()
    assert got == {"n1": True, "n2": False}  # SQL NULLs, not the JSON null
    assert output == '{"a":null}'


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite enforces no VARCHAR length
def test_a_constant_too_long_for_its_column_is_refused_not_cut(engine) -> None:
    """A constant is cast to text, so the column's own length refuses what would not fit."""
    from sqlalchemy.exc import DataError

    row = {**ledger_row("long"), "idempotency_key": "long-1", "execution_id": "x", "status": "claimed"}
    with engine.begin() as conn:
        st.insert_ignore(conn, m, [row], ["idempotency_key"])
    too_long = "w" * 300  # claimed_by is VARCHAR(250)
    with pytest.raises(DataError, match="too long"), engine.begin() as conn:
        st.insert_ignore(
            conn,
            m,
            [{k: v for k, v in row.items() if k != "status"} | {"idempotency_key": "long-2"}],
            ["idempotency_key"],
            constants={"status": "claimed", "claimed_by": too_long},
        )
    with pytest.raises(DataError, match="too long"), engine.begin() as conn:
        st.bulk_update(
            conn,
            m,
            "idempotency_key",
            [{"idempotency_key": "long-1", "status": "sent"}],
            {"status": "status"},
            {"claimed_by": too_long},
        )
    with engine.connect() as conn:
        got = conn.execute(
            select(m.c.idempotency_key, m.c.status, m.c.claimed_by).where(m.c.workflow_id == "long")
        ).all()
    assert got == [("long-1", "claimed", None)]


def test_many_small_batches_send_every_message_once(engine, journey, fake) -> None:
    j = enrolled(engine, journey, "pipe", patients=47, batch_size=5)
    threads: set[str] = set()
    inner = j.client

    class Watching:
        """Records which thread sends; otherwise the real client."""

        def __init__(self) -> None:
            self.client = inner()

        def send_batch(self, messages: Any, **kw: Any) -> list[SendResult]:
            threads.add(threading.current_thread().name)
            return self.client.send_batch(messages, **kw)

        def lookup_many(self, keys: Any) -> Any:
            return self.client.lookup_many(keys)

    ctx = j.context(T)
    ctx.sender = Watching()
    report = process_node(ctx, "a")
    assert (report.sent, report.pending, report.batches) == (47, 0, 10)
    assert threads and threading.current_thread().name not in threads  # sends left this thread
    stats = assert_exactly_once(fake)
    assert stats["accepted"] == 47
    assert {row["status"] for row in ledger(engine, "pipe").values()} == {"sent"}


def test_the_last_batch_goes_out_in_parts_each_recorded_as_it_comes_back(
    engine, journey, fake, monkeypatch
) -> None:
    from careflow.engine import actions

    monkeypatch.setattr(actions, "LAST_PART", 10)
    j = enrolled(engine, journey, "pipe-parts", patients=250, batch_size=1000)
    sizes: list[int] = []
    recorded: list[int] = []
    inner = j.client()

    class Watching:
        """Notes the size of what it is handed; otherwise the real client."""

        def send_batch(self, messages: Any, **kw: Any) -> list[SendResult]:
            sizes.append(len(messages))
            return inner.send_batch(messages, **kw)

        def lookup_many(self, keys: Any) -> Any:
            return inner.lookup_many(keys)

    real_record = actions._record

    def record(ctx: Any, node: Any, to_send: Any, *args: Any) -> None:
        recorded.append(len(to_send))
        real_record(ctx, node, to_send, *args)

    monkeypatch.setattr(actions, "_record", record)
    ctx = j.context(T)
    ctx.sender = Watching()
    report = process_node(ctx, "a")
    # The first batch (100) was full; the second found the other 150: the last, sent in halves
    # down to the last part, each recorded on its own.
    assert (report.sent, report.pending, report.batches) == (250, 0, 2)
    assert sizes == recorded == [100, 75, 37, 19, 19]
    assert assert_exactly_once(fake)["accepted"] == 250
    assert {row["status"] for row in ledger(engine, "pipe-parts").values()} == {"sent"}


def test_a_batch_on_the_wire_is_recorded_when_the_one_before_it_stops_the_task(engine, journey, fake) -> None:
    j = enrolled(engine, journey, "pipe-stop", patients=30, batch_size=10)
    calls: list[int] = []
    inner = j.client()

    class RefusedOnSecondBatch:
        """The provider takes the first batch, then refuses careflow's credentials."""

        def send_batch(self, messages: Any, **kw: Any) -> list[SendResult]:
            calls.append(len(messages))
            if len(calls) == 1:
                return inner.send_batch(messages, **kw)
            return [
                SendResult(
                    msg.idempotency_key, Outcome.CONFIGURATION, status_code=401, error_code="unauthorized"
                )
                for msg in messages
            ]

        def lookup_many(self, keys: Any) -> Any:
            return inner.lookup_many(keys)

    ctx = j.context(T)
    ctx.sender = RefusedOnSecondBatch()
    with pytest.raises(ProviderConfigurationError):
        process_node(ctx, "a")
    statuses = [row["status"] for row in ledger(engine, "pipe-stop").values()]
    # The first batch went out; the second was refused; the third, claimed and handed to the
    # send thread while the second was being recorded, was recorded too: no claim is left behind.
    assert statuses.count("sent") == 10
    assert "claimed" not in statuses
    assert fake.stats()["accepted"] == 10

    # The next attempt, with working credentials, sends the other 20 and nothing twice.
    report = j.node("a", T + timedelta(minutes=5))
    assert report.sent == 20
    stats = assert_exactly_once(fake)
    assert stats["accepted"] == 30


def test_held_back_sends_stop_the_preparing_of_more_batches(engine, journey, fake) -> None:
    j = enrolled(engine, journey, "pipe-held", patients=47, batch_size=5)

    class BreakerOpen:
        """Every send is held back by an open breaker for the next 30 s."""

        def send_batch(self, messages: Any, **kw: Any) -> list[SendResult]:
            return [
                SendResult(msg.idempotency_key, Outcome.NOT_SENT, error_code="breaker_open", retry_after=30.0)
                for msg in messages
            ]

        def lookup_many(self, keys: Any) -> Any:
            return {}

    ctx = j.context(T)
    ctx.sender = BreakerOpen()
    report = process_node(ctx, "a")
    # The first batch came back held back while the second was on the wire: both are recorded
    # pending, and the other 37 messages were not rendered, claimed or written at all.
    assert report.retry_at is not None and report.sent == 0
    assert report.pending == 10 and report.batches == 2
    rows = ledger(engine, "pipe-held")
    assert len(rows) == 10 and {row["status"] for row in rows.values()} == {"pending"}
    assert fake.stats()["received"] == 0

    # After the wait, the next attempt sends all 47, once each.
    report = j.node("a", T + timedelta(minutes=1))
    assert report.sent == 47
    assert assert_exactly_once(fake)["accepted"] == 47


# -- the send process -----------------------------------------------------------------------------


def test_a_real_client_sends_from_a_process_of_its_own(engine, journey, fake, started) -> None:
    j = enrolled(engine, journey, "pipe-proc", patients=47, batch_size=5)
    report = j.node("a", T)

    assert (report.sent, report.pending, report.batches) == (47, 0, 10)
    assert len(started) == 1 and started[0].pid != os.getpid()
    assert started[0]._closed  # stopped and reaped when the node was done
    assert assert_exactly_once(fake)["accepted"] == 47
    assert {row["status"] for row in ledger(engine, "pipe-proc").values()} == {"sent"}


def test_the_send_process_starts_with_the_first_due_steps_before_they_are_claimed(
    engine, journey, fake, monkeypatch
) -> None:
    """On Postgres it opens its connections while the first batch is prepared, told how many may come."""
    from careflow.engine import steps
    from careflow.providers import send_process

    j = enrolled(engine, journey, "pipe-early", patients=47, batch_size=5)
    real_start = send_process.SendProcess.start.__func__  # type: ignore[attr-defined]
    real_insert = steps.insert_ignore
    seen: list[str] = []

    def start(cls: Any, client: Any, gate: Any = None, *, warm: int = 0) -> Any:
        seen.append(f"start, {warm} coming")
        return real_start(cls, client, gate, warm=warm)

    def insert_ignore(conn: Any, table: Any, rows: list[Any], *args: Any, **kw: Any) -> Any:
        if rows and kw.get("returning"):
            seen.append(f"claim {len(rows)}")
        return real_insert(conn, table, rows, *args, **kw)

    monkeypatch.setattr(send_process.SendProcess, "start", classmethod(start))
    monkeypatch.setattr(steps, "insert_ignore", insert_ignore)
    report = j.node("a", T)

    assert report.sent == 47 and len([s for s in seen if s.startswith("start")]) == 1
    if engine.dialect.name == "postgresql":
        assert seen[:3] == ["start, 5 coming", "claim 5", "claim 5"]
    else:  # SQLite's one writer would wait for the fork: the batch is claimed first
        assert seen[:3] == ["claim 5", "start, 0 coming", "claim 5"]
    assert assert_exactly_once(fake)["accepted"] == 47


def test_no_send_process_starts_when_nothing_is_due(engine, journey, fake, started) -> None:
    j = enrolled(engine, journey, "pipe-none", patients=3, batch_size=5)
    assert j.node("a", T).sent == 3 and len(started) == 1
    assert j.node("a", T + timedelta(minutes=1)).processed == 0 and len(started) == 1


def priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a Linux feature")
def test_the_preparing_thread_gives_way_to_the_send_process_while_it_runs(
    engine, journey, fake, started, monkeypatch
) -> None:
    from careflow.engine import actions

    during: list[tuple[int, int]] = []
    real = actions._lower_priority

    def lower(nice: int) -> Any:
        lowered = real(nice)
        during.append((nice, priority()))
        return lowered

    monkeypatch.setattr(actions, "_lower_priority", lower)
    before = priority()
    j = enrolled(engine, journey, "pipe-nice", patients=12, batch_size=5)
    report = j.node("a", T)

    assert report.sent == 12 and len(started) == 1
    # Lowered by the default 5 while the send process ran, on this thread only ...
    assert during == [(5, min(19, before + 5))]
    if os.geteuid() == 0:  # ... and given back where raising a priority is allowed
        assert priority() == before


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a Linux feature")
def test_prepare_nice_0_keeps_the_priority(engine, journey, fake, started, monkeypatch) -> None:
    from careflow.engine import actions

    during: list[int] = []
    real = actions._lower_priority
    monkeypatch.setattr(actions, "_lower_priority", lambda nice: (during.append(priority()), real(nice))[1])
    monkeypatch.setenv("AIRFLOW__CAREFLOW__PREPARE_NICE", "0")
    before = priority()
    j = enrolled(engine, journey, "pipe-nice-0", patients=3, batch_size=5)
    assert j.node("a", T).sent == 3 and len(started) == 1 and during == [before] and priority() == before


def test_a_prepare_nice_out_of_range_is_refused_by_name(engine, journey, fake, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CAREFLOW__PREPARE_NICE", "25")
    j = enrolled(engine, journey, "pipe-nice-bad", patients=3, batch_size=5)
    with pytest.raises(ValueError, match=r"\[careflow\] prepare_nice .* 0 to 19, got 25"):
        j.node("a", T)
    assert assert_exactly_once(fake)["accepted"] == 0


def test_send_process_false_keeps_the_sends_in_the_task_process(
    engine, journey, fake, started, monkeypatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CAREFLOW__SEND_PROCESS", "false")
    j = enrolled(engine, journey, "pipe-thread", patients=12, batch_size=5)
    report = j.node("a", T)
    assert report.sent == 12 and started == []
    assert assert_exactly_once(fake)["accepted"] == 12


def test_a_send_process_setting_that_is_not_on_or_off_is_refused_by_name(
    engine, journey, fake, monkeypatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CAREFLOW__SEND_PROCESS", "flase")  # taken for "on" before
    j = enrolled(engine, journey, "pipe-flag-bad", patients=3, batch_size=5)
    with pytest.raises(ValueError, match=r"^\[careflow\] send_process must be true or false, got 'flase'$"):
        j.node("a", T)
    assert assert_exactly_once(fake)["accepted"] == 0


def test_with_a_send_process_on_postgres_batches_are_recorded_on_a_thread_of_their_own(
    engine, journey, fake, started, monkeypatch
) -> None:
    from careflow.engine import actions

    j = enrolled(engine, journey, "pipe-rec", patients=47, batch_size=5)
    prepared_on: set[str] = set()
    recorded_on: set[str] = set()
    real_prepare, real_record = actions._prepare_batch, actions._record

    def prepare(*args: Any, **kw: Any) -> Any:
        prepared_on.add(threading.current_thread().name)
        return real_prepare(*args, **kw)

    def record(*args: Any) -> None:
        recorded_on.add(threading.current_thread().name)
        real_record(*args)

    monkeypatch.setattr(actions, "_prepare_batch", prepare)
    monkeypatch.setattr(actions, "_record", record)
    report = j.node("a", T)

    # Counted once each, whichever thread counted them.
    assert (report.sent, report.pending, report.batches, report.processed) == (47, 0, 10, 47)
    assert prepared_on == {threading.current_thread().name} and len(started) == 1
    if engine.dialect.name == "postgresql":
        # while this thread prepared the next batch; once none was left, a second one took the
        # answered batches
        assert "careflow-record-a" in recorded_on
        assert recorded_on <= {"careflow-record-a", "careflow-record-a-2"}
    else:
        assert recorded_on == prepared_on  # SQLite takes one writer at a time: one thread does both
    assert assert_exactly_once(fake)["accepted"] == 47
    assert {row["status"] for row in ledger(engine, "pipe-rec").values()} == {"sent"}


def test_a_batch_waiting_for_room_in_the_recorder_has_its_claims_renewed_with_the_others(monkeypatch) -> None:
    """A renewal moves the deadline every later batch may use: it must cover the waiting ones too.

    The queue is full and its oldest batch is slow, so the next claimed batches wait in ``hand``
    while their claims age. A renewal that left them out would hand them a deadline their own
    claims never had: another worker may have taken them over, and they would be sent twice.
    """
    import ctypes
    from concurrent.futures import Future
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from careflow.engine import actions

    renewals: list[set[str]] = []

    def renew(ctx: Any, batches: list[dict[str, Any]]) -> datetime:
        renewals.append({key for batch in batches for key in batch})
        return datetime.now(timezone.utc)

    monkeypatch.setattr(actions, "RENEW_EVERY", 0.02)
    monkeypatch.setattr(actions, "_renew_claims", renew)
    monkeypatch.setattr(actions, "_record", lambda *args: None)

    class Stage:
        depth = 2
        ctx = SimpleNamespace(clock_offset=lambda: timedelta(0))

        def __init__(self) -> None:
            self._renewed = ctypes.c_double(0.0)
            self.renewals_before: dict[str, int] = {}

        def submit(self, part: dict[str, Any], claimed_at: datetime) -> Future[Any]:
            key = next(iter(part))
            self.renewals_before[key] = len(renewals)
            future: Future[Any] = Future()
            threading.Timer(0.3 if key == "k0" else 0.01, future.set_result, [actions._Sent({})]).start()
            return future

        def renewed(self, at: datetime) -> None:
            self._renewed.value = actions._lease_deadline(self.ctx, at)

    stage = Stage()
    recorder = actions._Recorder(SimpleNamespace(), SimpleNamespace(id="a", type="action"), stage)  # type: ignore[arg-type]
    recorder.hand([{"k0": {}}, {"k1": {}}, {"k2": {}}], datetime.now(timezone.utc))
    # Counted and handed under the recorder's lock (re-entrant; released while ``hand`` waits),
    # which renewals also take: no renewal falls between the count and the hand-over.
    with recorder._cond:
        claimed = len(renewals)
        recorder.hand([{"k3": {}}, {"k4": {}}], datetime.now(timezone.utc))  # waits while k0 is slow
    recorder.close(raise_first=True)

    assert stage.renewals_before["k3"] > claimed  # it did wait through renewals
    for key in ("k3", "k4"):
        assert all(key in keys for keys in renewals[claimed : stage.renewals_before[key]]), key


class _TimedStage:
    """A send stage whose batches are answered after the delay their first key names (seconds)."""

    depth = 2

    def __init__(self, delays: dict[str, float]) -> None:
        import ctypes

        self.delays = delays
        self._renewed = ctypes.c_double(0.0)

    def submit(self, part: dict[str, Any], claimed_at: Any) -> Any:
        from concurrent.futures import Future

        from careflow.engine import actions

        future: Future[Any] = Future()
        threading.Timer(self.delays[next(iter(part))], future.set_result, [actions._Sent({})]).start()
        return future

    def renewed(self, at: Any) -> None:
        pass


def _recorder_logging(
    monkeypatch, delays: dict[str, float], fail: str | None = None
) -> tuple[Any, list[Any]]:
    """A recorder over a ``_TimedStage``; what it records is logged (key, thread, start, end), not written."""
    from types import SimpleNamespace

    from careflow.engine import actions

    log: list[tuple[str, str, float, float]] = []

    def record(ctx: Any, node: Any, to_send: dict[str, Any], sent: Any, report: Any) -> None:
        key, started = next(iter(to_send)), time.monotonic()
        time.sleep(0.05)  # statements take time
        report.sent += len(to_send)
        log.append((key, threading.current_thread().name, started, time.monotonic()))
        if key == fail:
            raise RuntimeError(f"recording {key} failed")

    monkeypatch.setattr(actions, "_record", record)
    node = SimpleNamespace(id="a", type="action")
    return actions._Recorder(SimpleNamespace(), node, _TimedStage(delays)), log  # type: ignore[arg-type]


def test_once_nothing_more_is_handed_a_second_thread_records_the_answered_batches(monkeypatch) -> None:
    """The last batches are recorded on two connections at once, not one after the other.

    The oldest batch is answered last: the recording thread waits for it while a second one,
    started by ``close``, records those already answered. Each is recorded once, and the counts
    of both threads are the recorder's.
    """
    from datetime import datetime, timezone

    recorder, log = _recorder_logging(monkeypatch, {"k0": 0.4, "k1": 0.0, "k2": 0.0})
    recorder.hand([{"k0": {}}, {"k1": {}}, {"k2": {}}], datetime.now(timezone.utc))
    report = recorder.close(raise_first=True)

    by_key = {key: (thread, started, ended) for key, thread, started, ended in log}
    assert sorted(key for key, *_ in log) == ["k0", "k1", "k2"]  # once each
    assert by_key["k0"][0] == "careflow-record-a"
    assert {by_key["k1"][0], by_key["k2"][0]} == {"careflow-record-a-2"}
    assert by_key["k1"][2] <= by_key["k0"][1] and by_key["k2"][2] <= by_key["k0"][1]  # before k0's answer
    assert report.sent == 3


def test_a_batch_the_second_thread_fails_to_record_is_raised_once_the_others_are_recorded(
    monkeypatch,
) -> None:
    from datetime import datetime, timezone

    recorder, log = _recorder_logging(monkeypatch, {"k0": 0.3, "k1": 0.0, "k2": 0.0}, fail="k1")
    recorder.hand([{"k0": {}}, {"k1": {}}, {"k2": {}}], datetime.now(timezone.utc))
    with pytest.raises(RuntimeError, match="recording k1 failed"):
        recorder.close(raise_first=True)

    assert sorted(key for key, *_ in log) == ["k0", "k1", "k2"]
    assert dict((key, thread) for key, thread, *_ in log)["k1"] == "careflow-record-a-2"
    assert recorder.report.sent == 3  # counted before the failure, by the thread that recorded it


def test_without_an_answered_batch_behind_the_oldest_the_recording_thread_alone_records(monkeypatch) -> None:
    """The second thread only takes answered batches: one still on the wire stays with the thread
    that renews its claims while it waits."""
    from datetime import datetime, timezone

    recorder, log = _recorder_logging(monkeypatch, {"k0": 0.2, "k1": 0.3})
    recorder.hand([{"k0": {}}, {"k1": {}}], datetime.now(timezone.utc))
    recorder.close(raise_first=True)

    assert [(key, thread) for key, thread, *_ in log] == [
        ("k0", "careflow-record-a"),
        ("k1", "careflow-record-a"),
    ]


def test_once_nothing_more_is_handed_a_large_answered_batch_is_recorded_in_two_halves_at_once(
    monkeypatch,
) -> None:
    """The last big batch is the task's last work: its two halves go to the two threads.

    Each half is recorded with what the provider said of its own messages; the lookups the batch
    counted are counted once.
    """
    from datetime import datetime, timezone

    from careflow.engine import actions
    from careflow.providers.client import Outcome, SendResult

    monkeypatch.setattr(actions, "LAST_PART", 2)
    keys = [f"k{i}" for i in range(10)]
    answer = actions._Sent(
        {key: SendResult(key, Outcome.ACCEPTED, provider_id=key) for key in keys}, reconciled=3
    )
    recorder, log = _recorder_logging(monkeypatch, {"k0": 0.2})
    recorder.stage.submit = lambda part, at: _answered_after(0.2, answer)  # type: ignore[method-assign]
    seen: list[tuple[list[str], list[str]]] = []
    logging_record = actions._record

    def record(ctx: Any, node: Any, to_send: dict[str, Any], sent: Any, report: Any) -> None:
        seen.append((sorted(to_send), sorted(sent.results)))
        logging_record(ctx, node, to_send, sent, report)

    monkeypatch.setattr(actions, "_record", record)
    recorder.hand([{key: {} for key in keys}], datetime.now(timezone.utc))
    report = recorder.close(raise_first=True)

    assert sorted(seen) == [(keys[:5], keys[:5]), (keys[5:], keys[5:])]
    (first, one, start_one, end_one), (_, other, start_other, end_other) = sorted(log, key=lambda x: x[2])
    assert {one, other} == {"careflow-record-a", "careflow-record-a-2"}
    assert start_other < end_one  # at once, not one after the other
    assert report.sent == 10 and report.reasons["reconciled"] == 3


def _answered_after(seconds: float, sent: Any) -> Any:
    from concurrent.futures import Future

    future: Future[Any] = Future()
    threading.Timer(seconds, future.set_result, [sent]).start()
    return future


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # the recorder runs on Postgres only
def test_with_batches_shared_at_the_end_each_message_is_recorded_once(
    engine, journey, fake, started, monkeypatch
) -> None:
    """A real action whose last batches are shared between the two recording threads."""
    from careflow.engine import actions

    monkeypatch.setattr(actions, "LAST_PART", 1)
    j = enrolled(engine, journey, "pipe-share", patients=47, batch_size=8)
    fake.configure(latency_ms=100)  # the last batches are still on the wire when the last is handed over
    shares: list[int] = []
    real_share = actions._Recorder._share

    def share(self: Any, to_send: dict[str, Any], sent: Any) -> Any:
        shares.append(len(to_send))
        return real_share(self, to_send, sent)

    monkeypatch.setattr(actions._Recorder, "_share", share)
    recorded: list[str] = []
    real_record = actions._record

    def record(ctx: Any, node: Any, to_send: dict[str, Any], *args: Any) -> None:
        recorded.extend(to_send)
        real_record(ctx, node, to_send, *args)

    monkeypatch.setattr(actions, "_record", record)
    report = j.node("a", T)

    assert shares  # some were shared
    assert (report.sent, report.pending, report.processed) == (47, 0, 47)
    assert sorted(recorded) == sorted(set(recorded)) and len(recorded) == 47
    assert assert_exactly_once(fake)["accepted"] == 47
    assert {row["status"] for row in ledger(engine, "pipe-share").values()} == {"sent"}


def test_the_sent_keys_cache_is_warmed_while_the_first_batch_is_prepared(engine, journey, fake) -> None:
    """Its first read comes with the first batch's send: the cache reaches Redis before that."""
    j = enrolled(engine, journey, "pipe-warm", patients=12, batch_size=5)
    calls: list[tuple[str, str]] = []

    class SentKeys:
        def warm(self) -> None:
            calls.append(("warm", threading.current_thread().name))

        def get_many(self, keys: Any) -> dict[str, str]:
            calls.append(("get_many", threading.current_thread().name))
            return {}

        def set_many(self, mapping: Any) -> None:
            calls.append(("set_many", threading.current_thread().name))

    report = j.node("a", T, sent_keys=SentKeys())

    assert report.sent == 12
    warms = [thread for name, thread in calls if name == "warm"]
    assert len(warms) == 1 and warms[0] != threading.current_thread().name  # once, off this thread
    if engine.dialect.name == "postgresql":  # started with the first due steps, before they are claimed
        assert calls[0][0] == "warm"
    assert assert_exactly_once(fake)["accepted"] == 12


def stop_when_the_stage_is_full(engine, monkeypatch, stop: Any) -> list[int]:
    """Call ``stop`` as the action starts waiting on a full send stage; the batches prepared by then.

    Every batch is on the wire for a second (the caller makes the provider that slow). With the
    recorder (Postgres) the stage holds three batches and the fourth, claimed, waits for room in
    ``hand``; without it (SQLite) the task waits for the first batch once it handed the third.
    """
    from careflow.engine import actions

    real_prepare = actions._prepare_batch
    prepared: list[int] = []
    full_at = 4 if engine.dialect.name == "postgresql" else 3

    def prepare(*args: Any, **kw: Any) -> Any:
        result = real_prepare(*args, **kw)
        prepared.append(1)
        if len(prepared) == full_at:
            stop()
        return result

    monkeypatch.setattr(actions, "_prepare_batch", prepare)
    return prepared


def assert_stopped_cleanly(engine, fake, j, workflow_id: str, prepared: list[int]) -> None:
    """What a stopped action leaves: nothing claimed, nothing more sent, the rest sent once later.

    The two batches on the wire when the stop came are answered and recorded. The third was
    handed over but waited for a connection (ten, all taken for a second by the first two): the
    stop keeps its requests from being written, and it is recorded not sent. With the recorder
    the fourth, claimed and waiting for room, is released too.
    """
    rows = ledger(engine, workflow_id)
    statuses = [row["status"] for row in rows.values()]
    assert "claimed" not in statuses
    assert len(prepared) == (4 if engine.dialect.name == "postgresql" else 3)
    assert len(rows) == 5 * len(prepared)
    sent = statuses.count("sent")
    assert 0 < sent <= 10 and sent == fake.stats()["accepted"]
    assert statuses.count("pending") == len(rows) - sent
    stopped = [row for row in rows.values() if row["last_error"] == "not_sent task_stopped"]
    assert len(stopped) >= 5  # the third batch at least: handed over, never written

    fake.configure(latency_ms=0)
    report = j.node("a", T + timedelta(minutes=1))  # well inside the lease: nothing is left claimed
    assert report.sent == 40 - sent and report.reasons["claimed_elsewhere"] == 0
    assert assert_exactly_once(fake)["accepted"] == 40


def run_until_the_timeout(j: Any) -> None:
    """Run node ``a`` at ``T`` until the execution timeout ends it: a SIGALRM the test set, raising
    ``AirflowTaskTimeout`` where the task is, as Airflow's timeout does."""
    import signal

    from airflow.sdk.exceptions import AirflowTaskTimeout

    def timeout(signum: int, frame: Any) -> None:
        raise AirflowTaskTimeout("the task's execution timeout")

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        with pytest.raises(AirflowTaskTimeout):
            j.node("a", T)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_claimed_batches_are_recorded_or_released_when_the_task_times_out(
    engine, journey, fake, started, monkeypatch
) -> None:
    """An execution timeout (SIGALRM, as Airflow raises it) while the action waits on a full stage.

    Every batch handed to the send stage is recorded, and a batch claimed but not handed over yet
    is recorded as not sent (pending) instead of staying claimed until its lease runs out.
    """
    import signal

    j = enrolled(engine, journey, "pipe-stopped", patients=40, batch_size=5)
    fake.configure(latency_ms=1000)
    prepared = stop_when_the_stage_is_full(
        engine, monkeypatch, lambda: signal.setitimer(signal.ITIMER_REAL, 0.2)
    )
    run_until_the_timeout(j)
    assert_stopped_cleanly(engine, fake, j, "pipe-stopped", prepared)


def test_a_stop_after_the_last_batch_was_handed_over_stops_the_sending_too(
    engine, journey, fake, started, monkeypatch
) -> None:
    """The timeout comes once every batch is handed over, while the task waits for them to be recorded.

    Ten connections, a second an answer: the first ten requests are on the wire; the thirty others
    are not written, and are recorded pending as soon as those ten are answered.
    """
    import signal

    from careflow.engine import actions

    j = enrolled(engine, journey, "pipe-closing", patients=40, batch_size=20)
    fake.configure(latency_ms=1000)
    real_prepare = actions._prepare_batch

    def prepare(*args: Any, **kw: Any) -> Any:
        result = real_prepare(*args, **kw)
        if result is None:  # nothing left to prepare: the task now waits for what it handed over
            signal.setitimer(signal.ITIMER_REAL, 0.3)
        return result

    monkeypatch.setattr(actions, "_prepare_batch", prepare)
    run_until_the_timeout(j)

    statuses = [row["status"] for row in ledger(engine, "pipe-closing").values()]
    assert len(statuses) == 40 and "claimed" not in statuses
    sent = statuses.count("sent")
    assert 0 < sent <= 10 and sent == fake.stats()["accepted"]
    assert statuses.count("pending") == 40 - sent

    fake.configure(latency_ms=0)
    report = j.node("a", T + timedelta(minutes=1))
    assert report.sent == 40 - sent
    assert assert_exactly_once(fake)["accepted"] == 40


def test_a_stop_between_a_claim_and_its_hand_over_releases_the_claimed_batch(
    engine, journey, fake, started
) -> None:
    """The timeout comes once the first batch is claimed, right before it is handed over."""
    from airflow.sdk.exceptions import AirflowTaskTimeout

    from careflow.engine import actions

    j = enrolled(engine, journey, "pipe-unhanded", patients=40, batch_size=5)

    def records_aside(*_: Any) -> bool:
        raise AirflowTaskTimeout("the task's execution timeout")  # as the signal raises it

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(actions, "_records_aside", records_aside)
        with pytest.raises(AirflowTaskTimeout):
            j.node("a", T)

    rows = ledger(engine, "pipe-unhanded")
    # the send process started with the first due steps, and was stopped without a request
    assert len(rows) == 5 and len(started) == 1 and started[0]._closed
    assert fake.stats()["received"] == 0
    assert {(row["status"], row["last_error"]) for row in rows.values()} == {
        ("pending", "not_sent task_stopped")
    }

    report = j.node("a", T + timedelta(minutes=1))  # well inside the lease: nothing is left claimed
    assert report.sent == 40 and report.reasons["claimed_elsewhere"] == 0
    assert assert_exactly_once(fake)["accepted"] == 40


def test_airflow_stopping_the_action_task_records_what_was_handed_over_and_frees_the_rest(
    engine, journey, fake, started, monkeypatch, tmp_path
) -> None:
    """Airflow's SIGTERM (a task marked failed, or cleared while it runs) calls the task's ``on_kill``.

    The action operator stops its sending there, as at an execution timeout.
    """
    import signal
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowTaskTerminated

    from careflow.airflow.factory import build_dag

    j = enrolled(engine, journey, "pipe-term", patients=40, batch_size=5)
    fake.configure(latency_ms=1000)
    monkeypatch.setattr("careflow.airflow.operators.base.now_for", lambda conf: T)  # the run's time
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:{fake.token}@127.0.0.1:{fake.port}")
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    monkeypatch.setenv("CAREFLOW_BREAKER_DB", str(tmp_path / "breakers.db"))
    task = build_dag(j.compiled).get_task("a")
    context = {
        "dag_run": SimpleNamespace(conf={}, run_id="scheduled__x", start_date=T),
        "run_id": "scheduled__x",
    }

    def sigterm() -> None:
        # Airflow signals the task's whole process group: its send process gets the SIGTERM too.
        for process in started:
            os.kill(process.pid, signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    term = threading.Timer(0.2, sigterm)
    prepared = stop_when_the_stage_is_full(engine, monkeypatch, term.start)
    # What Airflow's task runner installs: a SIGTERM calls the running task's on_kill.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: task.on_kill())
    try:
        with pytest.raises(AirflowTaskTerminated, match="stopped by Airflow while sending"):
            task.execute({**context, "data_interval_start": None})
        task.on_kill()  # outside the sending (as after an execution timeout): nothing to stop
    finally:
        term.cancel()
        if term.is_alive():
            term.join()
        signal.signal(signal.SIGTERM, previous)
    assert_stopped_cleanly(engine, fake, j, "pipe-term", prepared)


def test_a_released_batch_leaves_a_message_an_earlier_attempt_may_have_sent_for_the_provider_to_answer() -> (
    None
):
    from careflow.engine import actions

    released = actions._not_handed(
        {
            "new": {"previous": None},
            "refused": {"previous": {"status": "pending"}},
            "abandoned": {"previous": {"status": "claimed"}, "hold": ("expired", "late_by_90_min")},
            "lost": {"previous": {"status": "unknown"}},
        }
    )
    outcomes = {key: result.outcome for key, result in released.results.items()}
    assert outcomes == {
        "new": Outcome.NOT_SENT,
        "refused": Outcome.NOT_SENT,
        "abandoned": Outcome.UNKNOWN,  # not asked about: its hold waits for the provider's answer
        "lost": Outcome.UNKNOWN,
    }
    assert not any(result.request_sent or result.delivered for result in released.results.values())


def test_a_batch_that_cannot_be_recorded_fails_the_task_after_the_others_are_recorded(
    engine, journey, fake, started, monkeypatch
) -> None:
    from careflow.engine import actions

    j = enrolled(engine, journey, "pipe-rec-fail", patients=30, batch_size=5)
    real_record = actions._record
    calls: list[int] = []

    def record(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        real_record(*args)

    monkeypatch.setattr(actions, "_record", record)
    with pytest.raises(RuntimeError, match="went away"):
        j.node("a", T)

    rows = ledger(engine, "pipe-rec-fail")
    statuses = [row["status"] for row in rows.values()]
    # The second batch stays claimed (the next attempt after its lease asks the provider about
    # it); every batch handed over after it was still recorded, and nothing was sent twice.
    assert statuses.count("claimed") == 5
    assert statuses.count("sent") == len(rows) - 5 >= 5
    assert len(calls) * 5 == len(rows)
    assert assert_exactly_once(fake)["accepted"] == len(rows)


def test_every_batch_in_the_send_process_is_recorded_when_the_credentials_are_refused(
    engine, journey, fake, started
) -> None:
    j = enrolled(engine, journey, "pipe-401", patients=30, batch_size=5)
    ctx = j.context(T)
    ctx.sender = ProviderClient(fake.url, "not-the-token", max_concurrency=4, timeout=5)
    with pytest.raises(ProviderConfigurationError):
        process_node(ctx, "a")

    rows = ledger(engine, "pipe-401")
    # Several batches were in the send process when the first refusal was recorded: each of them
    # was recorded too (pending, not claimed), and nothing after them was prepared.
    assert 5 < len(rows) < 30
    assert {row["status"] for row in rows.values()} == {"pending"}
    assert fake.stats()["accepted"] == 0 and len(started) == 1 and started[0]._closed

    report = j.node("a", T + timedelta(minutes=5))
    assert report.sent == 30
    assert assert_exactly_once(fake)["accepted"] == 30


def test_an_open_breaker_in_the_send_process_holds_the_sends_back(
    engine, journey, fake, started, tmp_path
) -> None:
    from careflow.resilience import BreakerConfig, CircuitBreaker
    from careflow.resilience.backends.sqlite_backend import EmbeddedBackend

    j = enrolled(engine, journey, "pipe-open", patients=47, batch_size=5)
    breaker = CircuitBreaker(
        "pipe:kakao",
        BreakerConfig(open_seconds=30, max_open_seconds=60),
        backend=EmbeddedBackend(tmp_path / "b.db"),
    )
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(breaker.acquire(), "transient")
    ctx = j.context(T)
    ctx.gate = breaker.gate()
    report = process_node(ctx, "a")

    # The batches handed over before the first came back are recorded pending; no more were prepared.
    assert report.retry_at is not None and report.sent == 0
    assert report.pending == 5 * report.batches and report.batches <= 4
    assert fake.stats()["received"] == 0 and len(started) == 1


def test_the_heap_is_frozen_while_an_action_runs_and_handed_back(engine, journey, fake, monkeypatch) -> None:
    import gc

    from careflow.engine import actions

    seen: list[int] = []
    real = actions._send_action
    monkeypatch.setattr(
        actions, "_send_action", lambda ctx, node: (seen.append(gc.get_freeze_count()), real(ctx, node))[1]
    )
    # Python 3.12 starts with a few hundred objects of its own in the permanent generation.
    start = gc.get_freeze_count()
    assert start <= actions._INTERPRETER_FROZEN
    j = enrolled(engine, journey, "pipe-frozen", patients=3, batch_size=5)
    assert j.node("a", T).sent == 3
    assert seen and seen[0] > 100_000 and gc.get_freeze_count() == 0


def test_young_collections_are_rarer_while_an_action_runs(engine, journey, fake, monkeypatch) -> None:
    import gc

    from careflow.engine import actions

    seen: list[tuple[int, int, int]] = []
    real = actions._send_action
    monkeypatch.setattr(
        actions, "_send_action", lambda ctx, node: (seen.append(gc.get_threshold()), real(ctx, node))[1]
    )
    before = gc.get_threshold()
    j = enrolled(engine, journey, "pipe-young", patients=3, batch_size=5)
    assert j.node("a", T).sent == 3
    assert seen == [(actions.YOUNG_COLLECTION_EVERY, *before[1:])]
    assert gc.get_threshold() == before


@pytest.mark.parametrize("enabled", [True, False])
def test_every_generation_is_collected_every_few_batches_of_an_action(
    engine, journey, fake, monkeypatch, enabled
) -> None:
    import gc

    from careflow.engine import actions

    j = enrolled(engine, journey, f"pipe-full-{enabled}", patients=25, batch_size=1)
    full: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: full.append(generation) or 0)
    if not enabled:
        gc.disable()
    try:
        assert j.node("a", T).sent == 25
    finally:
        gc.enable()
    # 25 batches of one message: after the 10th and the 20th; none when the collector is off.
    assert full == ([2] * (25 // actions.FULL_COLLECTION_EVERY) if enabled else [])


def test_the_thresholds_come_back_when_the_last_of_overlapping_actions_ends() -> None:
    import gc

    from careflow.engine.actions import YOUNG_COLLECTION_EVERY, _frozen_heap

    before = gc.get_threshold()
    first, second = _frozen_heap(), _frozen_heap()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # actions on two threads need not end in the order they began
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


@pytest.mark.parametrize("young", [0, 100_000])
def test_a_collector_switched_off_or_already_rarer_is_left_as_it_is(young) -> None:
    import gc

    from careflow.engine.actions import _frozen_heap

    before = gc.get_threshold()
    gc.set_threshold(young, *before[1:])
    try:
        with _frozen_heap():
            assert gc.get_threshold()[0] == young
        assert gc.get_threshold()[0] == young
    finally:
        gc.set_threshold(*before)


def test_garbage_made_while_the_heap_is_frozen_is_still_collected() -> None:
    import gc
    import weakref

    from careflow.engine.actions import _frozen_heap

    class Node:
        other: Any = None

    with _frozen_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None


def test_a_heap_frozen_before_the_action_stays_frozen() -> None:
    import gc

    from careflow.engine.actions import _frozen_heap

    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with _frozen_heap():
            pass
        assert gc.get_freeze_count() >= before
    finally:
        gc.unfreeze()
