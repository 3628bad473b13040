"""Set-based queries on executions and steps: a fixed number of queries per batch, never per patient."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import (
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.sql import sqltypes

from careflow.engine.context import NodeReport, RunContext
from careflow.store import tables

log = logging.getLogger(__name__)

OPEN_STATES = ("pending", "waiting")
s = tables.steps
x = tables.executions


@contextmanager
def batch_transaction(ctx: RunContext, report: NodeReport | None = None) -> Iterator[Connection]:
    """One transaction of a node's batch.

    On Postgres no statement in it may run longer than the workflow's ``node_timeout_seconds``: a
    lock that is never released or a query gone wrong fails the batch (and the attempt, which
    Airflow retries) instead of holding the task until its own timeout. The setting belongs to
    the pooled connection and is sent only when it differs from what that connection has.

    The events reported through ``ctx`` inside it (messages decided, executions ended) are sent
    once it has committed and dropped if it rolls back: the retry that decides the same rows
    again counts them.
    """
    timeout_ms = int(ctx.compiled.settings.node_timeout_seconds) * 1000
    with ctx.events_held(), ctx.engine.begin() as conn:
        info = conn.info
        fresh = conn.dialect.name == "postgresql" and info.get(_STATEMENT_TIMEOUT) != timeout_ms
        if fresh:
            conn.exec_driver_sql(f"SET statement_timeout = {timeout_ms}")
            if report is not None:
                report.queries += 1
        yield conn
    if fresh:  # committed with the transaction (a rolled-back SET is undone: sent again next time)
        info[_STATEMENT_TIMEOUT] = timeout_ms


_STATEMENT_TIMEOUT = "careflow_statement_timeout_ms"


def insert_ignore(
    conn: Connection,
    table: Any,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    returning: str | None = None,
    constants: dict[str, Any] | None = None,
) -> set[Any]:
    """Insert rows, silently skipping those that violate the unique ``keys`` (idempotent writes).

    With ``returning`` (a column name), the values of that column for the rows actually inserted.
    Every row must have the same columns. ``constants`` gives columns the same value in every
    row; on Postgres each is sent once, not once a row.
    """
    if not rows:
        return set()
    constants = constants or {}
    both = sorted(rows[0].keys() & constants.keys())
    if both:
        raise ValueError(f"insert into {table.name}: {both} given both in the rows and as constants")
    if conn.dialect.name == "postgresql":
        # One statement with every row quoted by psycopg2: a fraction of the CPU that compiling
        # the insert and binding each row's parameters costs (the action task's hot path).
        result = conn.exec_driver_sql(*_values_insert_sql(conn, table, rows, keys, returning, constants))
        return set(result.scalars()) if returning is not None else set()
    if constants:
        rows = [{**row, **constants} for row in rows]
    statement = sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if returning is None:
        conn.execute(statement, list(rows))
        return set()
    result = conn.execute(statement.returning(table.c[returning]), list(rows))
    return set(result.scalars())


def bulk_update(
    conn: Connection,
    table: Any,
    key: str,
    rows: Sequence[dict[str, Any]],
    columns: dict[str, str],
    constants: dict[str, Any] | None = None,
    expressions: dict[str, str] | None = None,
) -> None:
    """Update many rows, each with its own values, in one statement where the database allows.

    ``rows`` are dicts holding ``key`` and the fields named by ``columns`` (target column -> row
    field). ``constants`` sets the same value on every row. ``expressions`` sets a column to SQL
    over the row's current values, ``{column}`` standing for a column and ``{value}`` for the
    target's entry in ``constants`` (``"coalesce({started_at}, {value})"``).

    Postgres gets one ``UPDATE`` for the whole list (``_values_update_sql``): one round trip and
    one plan instead of a statement per row, the rows joined from one JSON document, or named by
    one array of keys when nothing else differs from row to row. SQLite (the embedded default,
    in-process) gets an ``executemany`` of the same update.
    """
    if not rows:
        return
    constants = constants or {}
    expressions = expressions or {}
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(*_values_update_sql(conn, table, key, rows, columns, constants, expressions))
        return
    binds = {field: f"b_{field}" for field in [key, *columns.values()]}
    assignments: dict[str, Any] = {target: bindparam(binds[field]) for target, field in columns.items()}
    for target, value in constants.items():
        if target not in expressions:
            assignments[target] = value
    names = {column.name: f"{table.name}.{column.name}" for column in table.c}
    for target, sql in expressions.items():
        clause = text(sql.format(**names, value=f":c_{target}"))
        if target in constants:
            clause = clause.bindparams(
                bindparam(f"c_{target}", constants[target], type_=table.c[target].type)
            )
        assignments[target] = clause
    conn.execute(
        update(table).where(table.c[key] == bindparam(binds[key])).values(assignments),
        [{binds[field]: row[field] for field in binds} for row in rows],
    )


class _Recordset:
    """Rows of one table as one JSON parameter, which Postgres turns back into rows of the table's type.

    ``json_populate_recordset(NULL::<table>, %(rows)s)`` gives every value its column's type on
    the server, so the statement is short whatever the number of rows: psycopg2 quotes one string,
    Postgres parses one JSON document instead of a literal and a cast per value.
    """

    def __init__(self, conn: Connection, table: Any) -> None:
        dialect = conn.dialect
        self.source = f"json_populate_recordset(NULL::{_sql(dialect.identifier_preparer.format_table(table))}, %(rows)s)"
        # A string is cast to text, not to the column's VARCHAR(n): an explicit cast would cut a
        # longer value silently, where writing it into the column refuses it.
        self._sql_type = {
            column.name: "TEXT"
            if isinstance(column.type, sqltypes.String) and not isinstance(column.type, sqltypes.Enum)
            else column.type.compile(dialect=dialect)
            for column in table.c
        }
        # JSON columns take the value itself (nested in the document); others what SQLAlchemy binds.
        self._processors = {
            column.name: process
            for column in table.c
            if not isinstance(column.type, sqltypes.JSON)
            and (process := column.type._cached_bind_processor(dialect)) is not None
        }
        # Times go in as ISO 8601 text with their UTC offset; a batch's rows mostly share a few
        # (the run's now), so each distinct one is converted once per document.
        self._times = {column.name for column in table.c if isinstance(column.type, tables.UTCDateTime)}
        self._json = {column.name for column in table.c if isinstance(column.type, sqltypes.JSON)}
        self._table = table.name

    def document(self, pairs: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
        """The JSON array: for each row, its ``field`` of every ``(field, column)`` pair, under the column's name."""
        processors, times = self._processors, self._times
        plain = [(field, column) for field, column in pairs if column not in processors]
        processed: list[tuple[str, str, Any, dict[Any, str] | None]] = [
            (field, column, processors[column], {} if column in times else None)
            for field, column in pairs
            if column in processors
        ]
        records = []
        for row in rows:
            # A key left out is a NULL to json_populate_recordset, as a JSON null is: NULLs are
            # not written into the document, nor parsed out of it.
            record = {column: value for field, column in plain if (value := row[field]) is not None}
            for field, column, process, seen in processed:
                value = row[field]
                if value is None:
                    continue
                if seen is None:
                    record[column] = process(value)
                else:
                    text = seen.get(value)
                    if text is None:
                        text = seen[value] = process(value).isoformat()
                    record[column] = text
            records.append(record)
        try:
            # msgspec writes the document about ten times faster than json (a few µs a message),
            # as UTF-8 text. Times are ISO 8601 text already; others go through _json_value.
            return _DOCUMENT.encode(records).decode()
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise ValueError(f"rows for {self._table} cannot be written: {exc}") from exc

    def same_in(self, column: str, field: str, rows: Sequence[dict[str, Any]]) -> bool:
        """Whether every row holds the same value in ``field`` (for ``column``): of the same type
        and equal, or for a JSON column the very same object (``1`` and ``1.0`` are equal, and
        would not be written alike)."""
        first = rows[0][field]
        if column in self._json:
            return all(row[field] is first for row in rows)
        kind = type(first)
        return all(type(value := row[field]) is kind and value == first for row in rows)

    def bind(self, params: dict[str, Any], column: str, value: Any) -> str:
        """Put one value of ``column`` in ``params`` (as psycopg2 should bind it: JSON columns get
        their JSON text) and give its placeholder, cast to the column's type."""
        if value is not None and column in self._json:
            value = json.dumps(value, default=_json_value, allow_nan=False)
        elif value is not None and (process := self._processors.get(column)) is not None:
            value = process(value)
        name = f"c{len(params)}"
        params[name] = value
        return f"CAST(%({name})s AS {self._sql_type[column]})"


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write by itself: times (ISO 8601, with their offset) and decimals."""
    if isinstance(value, (datetime, date, clock_time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    # The type only: a value that cannot be written says nothing about whose row it was.
    raise TypeError(f"a {type(value).__name__} is not a column value")


_DOCUMENT = msgspec.json.Encoder(enc_hook=_json_value, decimal_format="string")


def _sql(text_: str) -> str:
    """SQL that goes to psycopg2 with parameters: a literal ``%`` in it must be doubled."""
    return text_.replace("%", "%%")


def _values_insert_sql(
    conn: Connection,
    table: Any,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    returning: str | None,
    constants: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The Postgres statement of :func:`insert_ignore` and its parameters: the rows as JSON, the constants."""
    preparer = conn.dialect.identifier_preparer
    first = rows[0].keys()
    columns = list(first)
    for index, row in enumerate(rows):
        if row.keys() != first:
            raise ValueError(
                f"insert into {table.name}: row {index} has columns {sorted(row)}, row 0 has {sorted(columns)}"
            )
    recordset = _Recordset(conn, table)
    params: dict[str, Any] = {"rows": recordset.document([(c, c) for c in columns], rows)}
    values = [_sql(preparer.quote(c)) for c in columns]
    values += [recordset.bind(params, column, value) for column, value in constants.items()]
    names = ", ".join(preparer.quote(c) for c in [*columns, *constants])
    conflict = ", ".join(preparer.quote(k) for k in keys)
    statement = (
        f"{_sql(f'INSERT INTO {preparer.format_table(table)} ({names})')} SELECT {', '.join(values)} "
        f"FROM {recordset.source} "
        f"{_sql(f'ON CONFLICT ({conflict}) DO NOTHING')}"
    )
    if returning is not None:
        statement += f" {_sql(f'RETURNING {preparer.quote(returning)}')}"
    return statement, params


def _values_update_sql(
    conn: Connection,
    table: Any,
    key: str,
    rows: Sequence[dict[str, Any]],
    columns: dict[str, str],
    constants: dict[str, Any],
    expressions: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """The Postgres statement of :func:`bulk_update` and its parameters: the rows as JSON, the constants."""
    preparer = conn.dialect.identifier_preparer
    recordset = _Recordset(conn, table)
    # A column whose value is the same in every row (a batch's status, the run's time) is sent
    # once, as a constant: the document holds what differs from row to row.
    shared = {
        target: rows[0][field] for target, field in columns.items() if recordset.same_in(target, field, rows)
    }
    varying = {target: field for target, field in columns.items() if target not in shared}
    # With nothing left that differs from row to row, the rows are their keys: an array, which
    # Postgres reads faster than a JSON document to join (about 2 ms of 9 for a thousand steps).
    listed = None if varying else array_text([row[key] for row in rows])
    params: dict[str, Any] = (
        {"keys": listed}
        if listed is not None
        else {"rows": recordset.document([(key, key), *((f, t) for t, f in varying.items())], rows)}
    )
    names = {column.name: _sql(f"t.{preparer.quote(column.name)}") for column in table.c}
    sets = [_sql(f"{preparer.quote(target)} = v.{preparer.quote(target)}") for target in varying]
    for target, value in {**shared, **constants}.items():
        placeholder = recordset.bind(params, target, value)
        if target in expressions:
            sets.append(
                f"{_sql(preparer.quote(target))} = {_sql(expressions[target]).format(**names, value=placeholder)}"
            )
        else:
            sets.append(f"{_sql(preparer.quote(target))} = {placeholder}")
    for target, sql in expressions.items():
        if target not in constants:
            sets.append(f"{_sql(preparer.quote(target))} = {_sql(sql).format(**names, value='NULL')}")
    where = (
        f"{_sql(f'WHERE t.{preparer.quote(key)}')} = ANY(%(keys)s)"
        if listed is not None
        else f"FROM {recordset.source} AS v {_sql(f'WHERE t.{preparer.quote(key)} = v.{preparer.quote(key)}')}"
    )
    statement = f"{_sql(f'UPDATE {preparer.format_table(table)} AS t SET')} {', '.join(sets)} {where}"
    return statement, params


#: What a node reads of each step it advances, with the execution's ids.
STEP_COLUMNS = (
    s.c.id,
    s.c.execution_id,
    s.c.status,
    s.c.arrived_at,
    s.c.due_at,
    s.c.started_at,
    s.c.attempts,
    x.c.patient_id,
    x.c.appointment_id,
    x.c.clinic_id,
    x.c.event_at,
    x.c.version,
    x.c.trigger_event_id,
)


def due_steps(conn: Connection, ctx: RunContext, node_id: str, after_id: int, limit: int) -> list[RowMapping]:
    """The next batch of steps at ``node_id`` that are due now (pending, or waiting and due)."""
    query = (
        select(*STEP_COLUMNS)
        .join(x, x.c.id == s.c.execution_id)
        .where(
            s.c.workflow_id == ctx.workflow_id,
            s.c.node_id == node_id,
            s.c.id > after_id,
            or_(s.c.status == "pending", and_(s.c.status == "waiting", s.c.due_at <= ctx.now)),
        )
        .order_by(s.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        # Two workers on the same node never process the same step at once.
        query = query.with_for_update(skip_locked=True, of=s)
    return list(conn.execute(query).mappings().all())


def moved_waits(
    conn: Connection, ctx: RunContext, node_ids: Sequence[str], start: datetime, end: datetime
) -> list[RowMapping]:
    """Steps waiting at ``node_ids`` whose appointment the clinic rescheduled in [start, end).

    Read through the clinic's ``appointment_rescheduled`` events of the interval (the events'
    lookup index: clinic, type, time) and each one's patient's executions (their patient index),
    so the cost follows the moves, not the executions or the parked steps.
    """
    e = tables.appointment_events
    occurred = clinic_time(conn, e.c.occurred_at)
    moved = (
        select(x.c.id)
        .join(e, and_(e.c.patient_id == x.c.patient_id, e.c.appointment_id == x.c.appointment_id))
        .where(
            x.c.workflow_id == ctx.workflow_id,
            e.c.clinic_id == ctx.compiled.clinic_id,
            e.c.type == "appointment_rescheduled",
            occurred >= careflow_time(conn, start),
            occurred < careflow_time(conn, end),
        )
    )
    query = (
        select(*STEP_COLUMNS, s.c.node_id)
        .join(x, x.c.id == s.c.execution_id)
        .where(
            s.c.workflow_id == ctx.workflow_id,
            s.c.node_id.in_(node_ids),
            s.c.status == "waiting",
            s.c.execution_id.in_(moved),
        )
        .order_by(s.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=s)
    return list(conn.execute(query).mappings().all())


def move_due_times(conn: Connection, moves: Sequence[dict[str, Any]]) -> None:
    """Set the due time of waiting steps: dicts with id and due_at (one bulk update)."""
    if moves:
        bulk_update(conn, s, "id", moves, {"due_at": "due_at"})


def finish_steps(conn: Connection, ctx: RunContext, updates: list[dict[str, Any]]) -> None:
    """Write step outcomes: dicts with id, status, error, output, due_at (one bulk update)."""
    if not updates:
        return
    rows = [
        {
            "id": u["id"],
            "status": u["status"],
            "error": u.get("error"),
            "output": u.get("output"),
            "due_at": u.get("due_at"),
            "finished_at": ctx.now if u["status"] not in OPEN_STATES else None,
        }
        for u in updates
    ]
    bulk_update(
        conn,
        s,
        "id",
        rows,
        {name: name for name in ("status", "error", "output", "due_at", "finished_at")},
        {"version": ctx.compiled.version, "run_id": ctx.run_id, "started_at": ctx.now},
        {"started_at": "coalesce({started_at}, {value})", "attempts": "{attempts} + 1"},
    )


def create_steps(conn: Connection, ctx: RunContext, arrivals: Iterable[tuple[str, str, datetime]]) -> int:
    """Create a pending step for each (execution id, node id, arrival time); an existing one is kept."""
    rows = [
        {"execution_id": execution_id, "node_id": node_id, "arrived_at": arrived_at}
        for execution_id, node_id, arrived_at in arrivals
    ]
    insert_ignore(
        conn,
        s,
        rows,
        ["execution_id", "node_id"],
        constants={
            "workflow_id": ctx.workflow_id,
            "status": "pending",
            "attempts": 0,
            "version": ctx.compiled.version,
            "run_id": ctx.run_id,
        },
    )
    return len(rows)


def settle_executions(conn: Connection, ctx: RunContext, execution_ids: Iterable[str]) -> int:
    """Recompute the status of executions from their steps: one query plus one update per status.

    An execution with a step still pending is running, else with one waiting it is waiting; once
    nothing is open it has ended: failed when a step failed, exited when a branch stopped with a
    recorded reason (:func:`exit_executions`), completed otherwise. A branch that stops never
    ends the execution while another branch is still on its way. Returns the number of
    statements it ran. The ended ones are counted (``executions_completed``) once the caller's
    :func:`batch_transaction` commits.
    """
    ids = sorted(set(execution_ids))
    if not ids:
        return 0
    # Only the states that decide: an execution none of whose steps is in one of them has ended.
    states: dict[str, set[str]] = defaultdict(set)
    for execution_id, status in conn.execute(
        select(s.c.execution_id, s.c.status)
        .where(among(conn, s.c.execution_id, ids), s.c.status.in_(("pending", "waiting", "failed")))
        .distinct()
    ):
        states[execution_id].add(status)
    by_status: dict[str, list[str]] = defaultdict(list)
    for execution_id in ids:
        found = states.get(execution_id, ())
        if "pending" in found:
            by_status["running"].append(execution_id)
        elif "waiting" in found:
            by_status["waiting"].append(execution_id)
        elif "failed" in found:
            by_status["failed"].append(execution_id)
        else:
            by_status["ended"].append(execution_id)
    for status, members in by_status.items():
        query = update(x).where(among(conn, x.c.id, members))
        if status in ("running", "waiting"):
            conn.execute(query.values(status=status, updated_at=ctx.now))
            continue
        # An execution ends once: its finish time and the metric are kept.
        if status == "failed":
            final: Any = status
            query = query.where(x.c.status != "failed")
        else:
            final = case((x.c.exit_reason.is_(None), "completed"), else_="exited")
            query = query.where(x.c.status.notin_(("completed", "exited")))
        ended = Counter(
            conn.execute(
                query.values(status=final, updated_at=ctx.now, finished_at=ctx.now).returning(x.c.status)
            ).scalars()
        )
        for final_status, count in sorted(ended.items()):
            ctx.event("executions_completed", status=final_status, count=count)
    return 1 + len(by_status)


def exit_executions(conn: Connection, ctx: RunContext, reasons: dict[str, str]) -> int:
    """Record why a branch of each execution stopped (its first such reason is kept).

    The execution itself exits when nothing else of it is open: the caller settles it
    (:func:`settle_executions`). Returns the number of statements it ran.
    """
    grouped: dict[str, list[str]] = defaultdict(list)
    for execution_id, reason in reasons.items():
        grouped[reason].append(execution_id)
    for reason, ids in grouped.items():
        conn.execute(
            update(x)
            .where(among(conn, x.c.id, ids), x.c.exit_reason.is_(None))
            .values(exit_reason=reason[:200], updated_at=ctx.now)
        )
    return len(grouped)


def next_due(
    conn: Connection,
    ctx: RunContext,
    node_ids: Sequence[str] | None = None,
    *,
    overdue_since: datetime | None = None,
) -> datetime | None:
    """The earliest due time among waiting steps of this workflow after now (or after ``overdue_since``)."""
    query = select(func.min(s.c.due_at)).where(s.c.workflow_id == ctx.workflow_id, s.c.status == "waiting")
    query = query.where(s.c.due_at > (ctx.now if overdue_since is None else min(overdue_since, ctx.now)))
    if node_ids is not None:
        query = query.where(s.c.node_id.in_(list(node_ids)))
    value = conn.execute(query).scalar()
    return tables.UTCDateTime().process_result_value(value, conn.dialect) if value is not None else None


def among(conn: Connection, column: Any, values: Iterable[Any]) -> Any:
    """``column IN (values)``; on Postgres as ``column = ANY(<one array parameter>)``.

    The statement is then the same whatever the number of values: compiled once, parsed
    quickly, where an IN list renders and binds a placeholder per value.

    Ids (text and whole numbers, the usual case) go as one string in Postgres' array syntax
    (``'{"a","b"}'``), which the server reads as an array of the column's type: the driver would
    otherwise write ``ARRAY['a', 'b', …]``, an expression of a thousand constants that the
    server parses one by one, after adapting each value itself (a statement of a thousand ids
    took about 0.8 ms longer that way, an update 1.5 ms). Left untyped, as the driver's
    ``ARRAY[…]`` is, so that a clinic's integer ids compare too.
    """
    values = list(values)
    if conn.dialect.name == "postgresql":
        written = array_text(values)
        if written is not None:
            return column == any_(bindparam(None, written, type_=sqltypes.NullType()))
        # Text, not the column's VARCHAR(n): a cast to varchar(n)[] cuts longer values silently,
        # and a clinic's id longer than careflow's column declares would then match nothing.
        item = sqltypes.Text() if isinstance(column.type, sqltypes.String) else column.type
        return column == any_(bindparam(None, values, type_=ARRAY(item)))
    return column.in_(values)


def array_text(values: Sequence[Any]) -> str | None:
    """``values`` in Postgres' text form of an array, each one quoted; None if one is not a ``str`` or an ``int``.

    Exact types only: a ``bool`` is an ``int`` that would be written ``True``, and a subclass of
    ``str`` may print otherwise.
    """
    kinds = set(map(type, values))
    if kinds <= {str}:
        joined = '","'.join(values)
        if "\\" in joined or '"' in joined:  # escaped one by one only when one needs it
            joined = '","'.join(value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
        return '{"' + joined + '"}' if values else "{}"
    if kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    return None


def clinic_time(conn: Connection | Engine, column: Any) -> Any:
    """A time column of the clinic's tables, to compare with :func:`careflow_time` of a value.

    On Postgres the column itself (its indexes serve the comparison). SQLite keeps the text the
    clinic's system wrote ('2025-03-04 06:00:00', '…T06:00:00.000Z', '…+09:00'), which compares
    as text, not as the instant it denotes: both sides are compared as ``julianday()``, the
    instant to the millisecond (an offset such as +09:00 is taken off).
    """
    if conn.dialect.name == "postgresql":
        return column
    return func.julianday(_colon_offset(type_coerce(column, sqltypes.Text())), type_=sqltypes.Float())


def careflow_time(conn: Connection | Engine, value: datetime) -> Any:
    """``value`` as :func:`clinic_time` compares it (unchanged on Postgres)."""
    if conn.dialect.name == "postgresql":
        return value
    return func.julianday(literal(value, tables.UTCDateTime()), type_=sqltypes.Float())


def _colon_offset(stored: Any) -> Any:
    """``stored`` with an offset written +HHMM (strftime's %z) as +HH:MM, the form SQLite reads.

    Python reads both; SQLite's date functions give NULL for the first.
    """
    tail = func.substr(stored, -5)
    return case(
        (
            tail.op("GLOB")("[+-][0-9][0-9][0-9][0-9]"),
            func.substr(stored, 1, func.length(stored) - 2).concat(":").concat(func.substr(stored, -2)),
        ),
        else_=stored,
    )


def _records_by_id(result: Any) -> dict[str, dict[str, Any]]:
    """Rows as plain dicts by their ``id`` column as text (names zipped with each row's values).

    As text: a clinic's view may hand out integer ids (outside the contract), which careflow
    looks up by the text it stored.
    """
    names = tuple(result.keys())
    at = names.index("id")
    return {str(row[at]): dict(zip(names, row, strict=True)) for row in result.all()}


def load_facts(
    conn: Connection, ctx: RunContext, rows: Sequence[RowMapping], report: NodeReport
) -> dict[str, Any]:
    """Facts per execution id, read now (four queries for the whole batch).

    The clinic's rows are read as the database driver returns them (``BatchFacts`` normalises
    every value), so that a value careflow cannot read is that execution's problem, not the
    batch's: its facts are an :class:`UnreadableFacts` naming the row and the column, None when
    its patient or appointment is gone.
    """
    from careflow.engine.facts_builder import BatchFacts, UnreadableFacts, known_timezone

    p, a, c = tables.patients, tables.appointments, tables.clinics
    patient_ids = sorted({r["patient_id"] for r in rows})
    appointment_ids = sorted({r["appointment_id"] for r in rows})
    patients = _records_by_id(conn.execute(_rows_of(conn, p, patient_ids)))
    appointments = _records_by_id(conn.execute(_rows_of(conn, a, appointment_ids)))
    clinic_row = (
        conn.execute(select(*_as_stored(conn, c)).where(c.c.id == ctx.compiled.clinic_id)).mappings().first()
    )
    clinic = (
        dict(clinic_row) if clinic_row else {"id": ctx.compiled.clinic_id, "timezone": ctx.compiled.timezone}
    )
    if known_timezone(clinic.get("timezone")) is None:
        # Unset, or a name careflow does not know (`KST`): the workflow's, as the enrollment's age
        # filter reads it (:func:`careflow.workflow.timezones.zone_or`), not UTC's calendar.
        clinic["timezone"] = ctx.compiled.timezone
    upcoming: dict[str, int] = {
        str(patient_id): count
        for patient_id, count in conn.execute(
            select(a.c.patient_id, func.count())
            .where(
                among(conn, a.c.patient_id, patient_ids),
                a.c.status == "scheduled",
                clinic_time(conn, a.c.scheduled_at) > careflow_time(conn, ctx.now),
            )
            .group_by(a.c.patient_id)
        ).all()
    }
    report.queries += 4
    facts: dict[str, Any] = {}
    unreadable: list[str] = []
    event_type = ctx.compiled.trigger.config.event
    batch = BatchFacts(clinic=clinic, now=ctx.now)
    for r in rows:
        patient = patients.get(r["patient_id"])
        appointment = appointments.get(r["appointment_id"])
        if patient is None or appointment is None:
            facts[r["execution_id"]] = None
            continue
        try:
            facts[r["execution_id"]] = batch.build(
                patient=patient,
                appointment=appointment,
                event={"type": event_type, "occurred_at": r["event_at"]},
                upcoming_count=int(upcoming.get(r["patient_id"], 0)),
            )
        except (ValueError, OverflowError) as exc:
            facts[r["execution_id"]] = UnreadableFacts(str(exc))
            unreadable.append(str(exc))
    if unreadable:
        shown = sorted(set(unreadable))
        log.warning(
            "careflow: workflow %s: %d executions have clinic rows careflow cannot read, recorded "
            "as %s: %s%s",
            ctx.workflow_id,
            len(unreadable),
            UnreadableFacts.REASON,
            "; ".join(shown[:10]),
            f" (and {len(shown) - 10} more)" if len(shown) > 10 else "",
        )
    return facts


def _rows_of(conn: Connection, table: Any, ids: Sequence[str]) -> Any:
    """Every column (:func:`_as_stored`) of the clinic's rows of ``table`` whose ``id`` is one of ``ids`` (no repeats).

    On Postgres, text ids are each looked up on their own through the table's primary key, in a
    ``LATERAL`` subquery over ``unnest`` of their array, however many a batch holds (a workflow's
    ``batch_size`` goes up to 10,000) and whatever the planner's statistics say. Written
    ``id = ANY(…)``, a batch's thousand ids out of a clinic of 110,000 patients made Postgres read
    the whole table (at its default ``random_page_cost``, a thousand index probes cost more than
    1,447 pages read in order): 8.5 ms a query against 3.2, ids spread over the table. Joined to
    the ``unnest``, 2,000 ids out of 110,000 appointments still made it hash the whole table:
    29.7 ms against 3.1 (``EXPLAIN ANALYZE``).
    """
    query = select(*_as_stored(conn, table))
    if conn.dialect.name != "postgresql" or not ids or set(map(type, ids)) != {str}:
        return query.where(among(conn, table.c.id, ids))
    written = array_text(ids)
    wanted = (
        func.unnest(cast(bindparam(None, written, type_=sqltypes.NullType()), ARRAY(sqltypes.Text())))
        .table_valued("id")
        .render_derived(name="wanted")
    )
    # LIMIT 1 (the id is the key: one row at most) keeps the lookup a subquery run once an id,
    # which Postgres cannot turn into a join over the whole table.
    found = query.where(table.c.id == wanted.c.id).limit(1).lateral("found")
    return select(*found.c).select_from(wanted).join(found, true())


def _as_stored(conn: Connection, table: Any) -> list[Any]:
    """Every column of ``table`` as the driver returns it, without SQLAlchemy's conversions.

    A conversion that fails (a date column of a clinic's view holding text that is not a date)
    would fail the whole fetch, and with it every execution of the batch. On Postgres the JSON
    columns come as their text, which the facts read per execution (``as_attributes``), and
    faster than the driver's ``json.loads`` of every value.
    """
    postgres = conn.dialect.name == "postgresql"
    return [
        (
            cast(column, sqltypes.Text())
            if postgres and isinstance(column.type, sqltypes.JSON)
            else type_coerce(column, sqltypes.NullType())
        ).label(column.name)
        for column in table.c
    ]
