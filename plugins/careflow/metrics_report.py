"""``careflow metrics``: runs, success and error rates, durations and messages per workflow and node.

Pure SQL over careflow's tables, plus Airflow's ``dag_run`` and ``task_instance`` tables when
Airflow's metadata database is reachable. Two kinds of duration, never mixed:

- ``task_s``: how long a node's Airflow task ran (``task_instance.duration``, seconds); the run
  duration per workflow comes from ``dag_run``. Only with Airflow's database.
- ``dwell_s``: how long executions stayed at a node, from arriving to finishing there
  (``careflow_steps``): a delay's wait, a time window's closed hours, a send's retries.

Percentiles are nearest-rank, computed in SQL with window functions (Postgres and SQLite alike).
Counts and ids only: no patient data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    case,
    cast,
    create_engine,
    distinct,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement, Select

from careflow.exceptions import first_line
from careflow.store import tables
from careflow.workflow.validation import WAKE_TASK_ID  # a task of every DAG, not a node

log = logging.getLogger(__name__)

DAG_PREFIX = "careflow__"
_STEP_STATES = ("done", "failed", "skipped", "waiting", "pending")
#: The ledger's outcomes of a message that will not be sent, whose reasons the report gives.
NOT_SENT = ("failed", "expired", "skipped")

#: Hints are read on a node's messages or steps, or a workflow's runs, only from this many on.
HINT_MIN_COUNT = 20
#: The share of a node's messages failed, or of its steps failed, that makes a hint.
HINT_FAILED_SHARE = 0.05
#: The share of a node's messages skipped that makes a hint.
HINT_SKIPPED_SHARE = 0.5


def _seconds(conn: Connection, start: Any, end: Any) -> ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def distribution(
    conn: Connection, keyed: Select[Any], keys: list[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """count, mean, median, p95, min and max of ``value`` per ``keys`` of the subquery ``keyed``.

    Median and P95 are nearest-rank: the value at rank ceil(p * n) of the sorted values.
    """
    sub = keyed.subquery()
    key_cols = [sub.c[k] for k in keys]
    value = cast(sub.c.value, Float)
    ranked = select(
        *key_cols,
        value.label("value"),
        func.row_number().over(partition_by=key_cols, order_by=value).label("rn"),
        func.count().over(partition_by=key_cols).label("n"),
    ).subquery()
    rk = [ranked.c[k] for k in keys]
    # ceil(p * n) in integer arithmetic, the same on Postgres and SQLite
    median_rank = (ranked.c.n * 50 + 99) // 100
    p95_rank = (ranked.c.n * 95 + 99) // 100
    query = select(
        *rk,
        func.count().label("count"),
        func.avg(ranked.c.value).label("mean"),
        func.max(case((ranked.c.rn == median_rank, ranked.c.value))).label("median"),
        func.max(case((ranked.c.rn == p95_rank, ranked.c.value))).label("p95"),
        func.min(ranked.c.value).label("min"),
        func.max(ranked.c.value).label("max"),
    ).group_by(*rk)
    out = {}
    for row in conn.execute(query).mappings():
        out[tuple(row[k] for k in keys)] = {
            stat: (round(float(row[stat]), 3) if row[stat] is not None else None)
            for stat in ("mean", "median", "p95", "min", "max")
        } | {"count": int(row["count"])}
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def careflow_metrics(
    engine: Engine, workflow_id: str | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """Per workflow and node, from careflow's tables: runs, step outcomes, dwell times, messages."""
    from careflow.publishing import tables_required

    s, x, m = tables.steps, tables.executions, tables.messages
    workflows: dict[str, dict[str, Any]] = {}

    def wf(wid: str) -> dict[str, Any]:
        return workflows.setdefault(
            wid,
            {
                "workflow_id": wid,
                "runs": 0,
                "executions": {},
                "messages": {},
                "nodes": {},
            },
        )

    def node(wid: str, nid: str) -> dict[str, Any]:
        return wf(wid)["nodes"].setdefault(
            nid, {"node_id": nid, "runs": 0, "steps": dict.fromkeys(_STEP_STATES, 0), "messages": {}}
        )

    def scope(table: Any, moment: Any) -> list[Any]:
        where = []
        if workflow_id:
            where.append(table.c.workflow_id == workflow_id)
        if since is not None:
            where.append(moment >= since)
        return where

    with tables_required(engine), engine.connect() as conn:
        step_where = scope(s, s.c.arrived_at)
        for row in conn.execute(
            select(s.c.workflow_id, s.c.node_id, s.c.status, func.count())
            .where(*step_where)
            .group_by(s.c.workflow_id, s.c.node_id, s.c.status)
        ):
            node(row[0], row[1])["steps"][row[2]] = int(row[3])
        for row in conn.execute(
            select(s.c.workflow_id, s.c.node_id, func.count(distinct(s.c.run_id)))
            .where(*step_where, s.c.finished_at.is_not(None))
            .group_by(s.c.workflow_id, s.c.node_id)
        ):
            node(row[0], row[1])["runs"] = int(row[2])
        for row in conn.execute(
            select(s.c.workflow_id, func.count(distinct(s.c.run_id)))
            .where(*step_where)
            .group_by(s.c.workflow_id)
        ):
            wf(row[0])["runs"] = int(row[1])
        # The branches conditions took (each step of a condition that decided keeps its branch).
        branch = s.c.output["branch"].as_string()
        for row in conn.execute(
            select(s.c.workflow_id, s.c.node_id, branch, func.count())
            .where(*step_where, s.c.status == "done", branch.is_not(None))
            .group_by(s.c.workflow_id, s.c.node_id, branch)
        ):
            node(row[0], row[1]).setdefault("branches", {})[row[2]] = int(row[3])
        dwell = select(
            s.c.workflow_id, s.c.node_id, _seconds(conn, s.c.arrived_at, s.c.finished_at).label("value")
        ).where(*step_where, s.c.finished_at.is_not(None))
        for (wid, nid), dist in distribution(conn, dwell, ["workflow_id", "node_id"]).items():
            node(wid, nid)["dwell_s"] = dist
        for row in conn.execute(
            select(x.c.workflow_id, x.c.status, func.count())
            .where(*scope(x, x.c.enrolled_at))
            .group_by(x.c.workflow_id, x.c.status)
        ):
            wf(row[0])["executions"][row[1]] = int(row[2])
        msg_where = scope(m, m.c.due_at)
        for row in conn.execute(
            select(m.c.workflow_id, m.c.node_id, m.c.status, func.count())
            .where(*msg_where)
            .group_by(m.c.workflow_id, m.c.node_id, m.c.status)
        ):
            node(row[0], row[1])["messages"][row[2]] = int(row[3])
            totals = wf(row[0])["messages"]
            totals[row[2]] = totals.get(row[2], 0) + int(row[3])
        # Why the messages not sent were not, by node (a late message's minutes left out of its reason).
        reason = case((m.c.reason.like("late_by_%"), "late"), else_=func.coalesce(m.c.reason, "-"))
        for row in conn.execute(
            select(m.c.workflow_id, m.c.node_id, m.c.status, reason, func.count())
            .where(*msg_where, m.c.status.in_(NOT_SENT))
            .group_by(m.c.workflow_id, m.c.node_id, m.c.status, reason)
        ):
            node(row[0], row[1]).setdefault("not_sent", {}).setdefault(row[2], {})[row[3]] = int(row[4])
        latency = select(m.c.workflow_id, m.c.node_id, m.c.latency_ms.label("value")).where(
            *msg_where, m.c.status == "sent", m.c.latency_ms.is_not(None)
        )
        for (wid, nid), dist in distribution(conn, latency, ["workflow_id", "node_id"]).items():
            node(wid, nid)["send_latency_ms"] = dist
    for item in workflows.values():
        for n in item["nodes"].values():
            steps = n["steps"]
            finished = steps["done"] + steps["failed"] + steps["skipped"]
            n["success_rate"] = _rate(steps["done"] + steps["skipped"], finished)
            n["error_rate"] = _rate(steps["failed"], finished)
    return {"workflows": workflows}


def airflow_engine() -> Engine | None:
    """An engine on Airflow's metadata database (``[database] sql_alchemy_conn``), or None."""
    try:
        from airflow.configuration import conf

        url = conf.get("database", "sql_alchemy_conn")
    except Exception:
        return None
    if not url:
        return None
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return None  # connecting would create an empty database file
    return _engine_for(url)


@lru_cache(maxsize=4)
def _engine_for(url: str) -> Engine:
    args = {"connect_timeout": 3} if url.startswith("postgres") else {}
    return create_engine(url, connect_args=args, pool_pre_ping=True, pool_size=2, max_overflow=2)


def airflow_metrics(
    engine: Engine, workflow_id: str | None = None, since: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """Per careflow DAG, from Airflow's ``dag_run`` and ``task_instance``: runs, states, durations."""
    from sqlalchemy import MetaData, Table

    meta = MetaData()
    with engine.connect() as conn:
        dr = Table("dag_run", meta, autoload_with=conn)
        ti = Table("task_instance", meta, autoload_with=conn)
        pattern = f"{DAG_PREFIX}{workflow_id}" if workflow_id else None

        def where(table: Any) -> list[Any]:
            clauses = (
                [table.c.dag_id == pattern]
                if pattern
                else [table.c.dag_id.like("careflow\\_\\_%", escape="\\")]
            )
            if since is not None:  # Airflow keeps naive UTC on SQLite
                moment = since.replace(tzinfo=None) if conn.dialect.name == "sqlite" else since
                clauses.append(table.c.start_date >= moment)
            return clauses

        out: dict[str, dict[str, Any]] = {}

        def wf(dag_id: str) -> dict[str, Any]:
            return out.setdefault(dag_id[len(DAG_PREFIX) :], {"runs": {}, "nodes": {}})

        for row in conn.execute(
            select(dr.c.dag_id, dr.c.state, func.count()).where(*where(dr)).group_by(dr.c.dag_id, dr.c.state)
        ):
            wf(row[0])["runs"][str(row[1])] = int(row[2])
        # A run's duration from its task instances: first start to last end. dag_run.start_date is
        # the logical date for runs made by dag.test(), which would make simulated runs look months long.
        spans = (
            select(
                ti.c.dag_id,
                _seconds(conn, func.min(ti.c.start_date), func.max(ti.c.end_date)).label("value"),
            )
            .where(*where(ti), ti.c.start_date.is_not(None), ti.c.end_date.is_not(None))
            .group_by(ti.c.dag_id, ti.c.run_id)
        )
        run_time = select(spans.subquery())
        for (dag_id,), dist in distribution(conn, run_time, ["dag_id"]).items():
            wf(dag_id)["run_s"] = dist
        for row in conn.execute(
            select(ti.c.dag_id, ti.c.task_id, ti.c.state, func.count())
            .where(*where(ti))
            .group_by(ti.c.dag_id, ti.c.task_id, ti.c.state)
        ):
            nodes = wf(row[0])["nodes"].setdefault(row[1], {"states": {}})
            nodes["states"][str(row[2])] = int(row[3])
        task_time = select(ti.c.dag_id, ti.c.task_id, ti.c.duration.label("value")).where(
            *where(ti), ti.c.duration.is_not(None)
        )
        for (dag_id, task_id), dist in distribution(conn, task_time, ["dag_id", "task_id"]).items():
            wf(dag_id)["nodes"].setdefault(task_id, {"states": {}})["task_s"] = dist
    return out


def build_report(
    workflow_id: str | None = None,
    since: datetime | None = None,
    *,
    engine: Engine | None = None,
    airflow: Engine | None | bool = True,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """The whole report: careflow's figures, with Airflow's merged in when its database answers.

    ``airflow=True`` finds Airflow's database from its configuration, an engine uses that one,
    ``False``/``None`` leaves Airflow's figures out. Why they were left out where that database
    could not be read (naming it, password hidden) goes to ``problems`` when given, else to the log.
    """
    from careflow.store.db import get_engine

    report = careflow_metrics(engine or get_engine(), workflow_id, since)
    workflows = report["workflows"]
    source = "careflow"
    af_engine = airflow_engine() if airflow is True else (airflow or None)
    if af_engine is not None:
        try:
            figures = airflow_metrics(af_engine, workflow_id, since)
            source = "careflow+airflow"
        except Exception as exc:  # Airflow's DB is optional: say which and why, and go on
            problem = (
                f"Airflow's figures are left out: its metadata database "
                f"{af_engine.url.render_as_string(hide_password=True)} could not be read: "
                f"{type(exc).__name__}: {first_line(getattr(exc, 'orig', None) or exc)}"
            )
            if problems is None:
                log.warning("careflow metrics: %s", problem)
            else:
                problems.append(problem)
            figures = {}
        for wid, fig in figures.items():
            item = workflows.setdefault(
                wid, {"workflow_id": wid, "runs": 0, "executions": {}, "messages": {}, "nodes": {}}
            )
            states = fig["runs"]
            item["runs"] = sum(states.values())
            item["run_states"] = states
            ended = states.get("success", 0) + states.get("failed", 0)
            item["run_success_rate"] = _rate(states.get("success", 0), ended)
            item["run_error_rate"] = _rate(states.get("failed", 0), ended)
            if "run_s" in fig:
                item["run_s"] = fig["run_s"]
            for task_id, task in fig["nodes"].items():
                n = item["nodes"].setdefault(
                    task_id,
                    {"node_id": task_id, "runs": 0, "steps": dict.fromkeys(_STEP_STATES, 0), "messages": {}},
                )
                tstates = task["states"]
                tended = tstates.get("success", 0) + tstates.get("failed", 0)
                n["task_states"] = tstates
                n["task_success_rate"] = _rate(tstates.get("success", 0), tended)
                n["task_error_rate"] = _rate(tstates.get("failed", 0), tended)
                if "task_s" in task:
                    n["task_s"] = task["task_s"]
    result = []
    for wid in sorted(workflows):
        item = workflows[wid]
        nodes = [item["nodes"][n] for n in sorted(item["nodes"])]
        item["nodes"] = nodes
        timed = [
            (n, key) for n in nodes if n["node_id"] != WAKE_TASK_ID and (key := _duration_key(n)) is not None
        ]
        if timed:
            item["slowest_node"] = max(timed, key=lambda t: t[1])[0]["node_id"]
            item["fastest_node"] = min(timed, key=lambda t: t[1])[0]["node_id"]
        item["hints"] = hints(item)
        result.append(item)
    return {
        "since": since.isoformat() if since else None,
        "workflow": workflow_id,
        "source": source,
        "workflows": result,
    }


#: A node's messages of a status that make a hint from a share of them on: the status, the share,
#: the hint's code and what it says after "N of node X's M messages".
_SHARE_HINTS = (
    (
        "failed",
        HINT_FAILED_SHARE,
        "MESSAGES_FAILING",
        "failed ({reasons}): the careflow view's failures give each one's reason",
    ),
    (
        "skipped",
        HINT_SKIPPED_SHARE,
        "MOSTLY_SKIPPED",
        "were skipped ({reasons}): a condition on the same facts earlier in the graph would end those "
        "executions at once, rather than carry them through its waits to the send",
    ),
)


def hints(item: dict[str, Any]) -> list[dict[str, Any]]:
    """What a workflow's figures suggest changing, each with the node it concerns (None for the
    workflow) and a stable code: messages that expired unsent, failed or were mostly skipped, a
    condition that always takes one branch, a node whose steps fail, DAG runs that fail. Read only
    where there is enough to go on (:data:`HINT_MIN_COUNT`), but for an expiry: a message lost."""
    found: list[dict[str, Any]] = []

    def hint(node_id: str | None, code: str, text: str) -> None:
        found.append({"node_id": node_id, "code": code, "text": text})

    for n in item["nodes"]:
        nid, total = n["node_id"], sum(n["messages"].values())
        not_sent = n.get("not_sent", {})
        expired = not_sent.get("expired", {})
        if late := expired.get("late", 0):
            hint(
                nid,
                "MESSAGES_EXPIRED",
                f"{late} of node {nid}'s {total} messages expired unsent, reached over max_lateness past "
                "due: runs were missed meanwhile (a paused DAG, a stopped scheduler: `careflow check`) or "
                "the provider was down that long; where a late message is still worth sending, raise "
                "the workflow's max_lateness",
            )
        if quiet := expired.get("quiet_hours_past_max_lateness", 0):
            hint(
                nid,
                "QUIET_HOURS_EXPIRED",
                f"{quiet} of node {nid}'s marketing messages expired in quiet hours (21:00 to 08:00 "
                "without night-time consent) that ended past max_lateness: a time window before it, "
                "within 08:00 to 21:00, sends them by day",
            )
        for status, share, code, said in _SHARE_HINTS:
            counts = not_sent.get(status, {})
            if total >= HINT_MIN_COUNT and (many := sum(counts.values())) >= share * total:
                reasons = _reasons(counts)
                hint(nid, code, f"{many} of node {nid}'s {total} messages {said.format(reasons=reasons)}")
        branches = n.get("branches", {})
        if len(branches) == 1 and (decided := sum(branches.values())) >= HINT_MIN_COUNT:
            (taken,) = branches
            hint(
                nid,
                "CONDITION_ONE_WAY",
                f"condition {nid} took its {taken} branch in all {decided} executions it decided: its "
                "other branch never ran. Check its rules against the clinic's data (a fact every "
                "patient has alike, a value the clinic's system spells otherwise)",
            )
        steps = n["steps"]
        finished = steps["done"] + steps["failed"] + steps["skipped"]
        if (
            not n["messages"]
            and finished >= HINT_MIN_COUNT
            and steps["failed"] >= HINT_FAILED_SHARE * finished
        ):
            hint(
                nid,
                "NODE_FAILING",
                f"node {nid} failed {steps['failed']} of the {finished} steps it finished: the careflow "
                "view's failures and an execution's trace give the reasons",
            )
    states = item.get("run_states", {})
    ended = states.get("success", 0) + states.get("failed", 0)
    if ended >= HINT_MIN_COUNT and states.get("failed", 0) >= HINT_FAILED_SHARE * ended:
        hint(
            None,
            "RUNS_FAILING",
            f"{states['failed']} of the workflow's {ended} ended DAG runs failed: its alerts and the "
            "failed tasks' logs in Airflow say why",
        )
    return found


def _reasons(counts: dict[str, int], shown: int = 3) -> str:
    """The most frequent reasons first, with their counts: ``no_phone 12, no_consent 3 and 2 more``."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    said = ", ".join(f"{reason} {count}" for reason, count in ranked[:shown])
    return said + (f" and {len(ranked) - shown} more" if len(ranked) > shown else "")


def _duration_key(node: dict[str, Any]) -> float | None:
    """Slowest/fastest by the task's P95 when Airflow's figures are there, else the dwell P95."""
    for kind in ("task_s", "dwell_s"):
        if node.get(kind) and node[kind].get("p95") is not None:
            return float(node[kind]["p95"])
    return None


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def print_report(report: dict[str, Any], out: Any = None) -> None:
    """The report as text: a header per workflow, a line per node."""
    w = (out or sys.stdout).write
    w(f"careflow metrics ({report['source']}{', since ' + report['since'] if report['since'] else ''})\n")
    if not report["workflows"]:
        w("  no runs recorded\n")
    for item in report["workflows"]:
        runs = f"runs {item['runs']}"
        if "run_states" in item:
            runs += (
                f"  success {_pct(item.get('run_success_rate'))}  error {_pct(item.get('run_error_rate'))}"
            )
        if item.get("run_s"):
            rs = item["run_s"]
            runs += f"  run mean {_human(rs['mean'])} median {_human(rs['median'])} p95 {_human(rs['p95'])}"
        w(f"\n== {item['workflow_id']} ==  {runs}\n")
        ex = item["executions"]
        if ex:
            w("  executions " + "  ".join(f"{k}={v}" for k, v in sorted(ex.items())) + "\n")
        if item["messages"]:
            w("  messages   " + "  ".join(f"{k}={v}" for k, v in sorted(item["messages"].items())) + "\n")
        if item.get("slowest_node"):
            w(f"  slowest node {item['slowest_node']}  fastest node {item['fastest_node']}\n")
        w(
            f"  {'node':<14}{'runs':>5} {'steps':>6} {'error':>7}  {'dwell mean':>10} {'median':>7} {'p95':>7}"
            f"  {'task mean':>9} {'median':>7} {'p95':>7} {'error':>7}  messages\n"
        )
        for n in item["nodes"]:
            d = n.get("dwell_s") or {}
            t = n.get("task_s") or {}
            steps = sum(n["steps"].values())
            msgs = " ".join(f"{k}={v}" for k, v in sorted(n["messages"].items())) or "-"
            w(
                f"  {n['node_id']:<14}{n['runs']:>5} {steps:>6} {_pct(n.get('error_rate')):>7}  "
                f"{_human(d.get('mean')):>10} {_human(d.get('median')):>7} {_human(d.get('p95')):>7}  "
                f"{_human(t.get('mean')):>9} {_human(t.get('median')):>7} {_human(t.get('p95')):>7} "
                f"{_pct(n.get('task_error_rate')):>7}  {msgs}\n"
            )
        for told in item.get("hints", []):
            w(f"  hint {told['code']}: {told['text']}\n")


def parse_since(value: str | None) -> datetime | None:
    """``--since``: a date or an ISO time (UTC when no offset is given); a ValueError says what is expected."""
    if not value:
        return None
    from careflow.simulation import parse_day_or_time

    return parse_day_or_time(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``careflow metrics``."""
    parser.add_argument("--workflow", metavar="ID", help="one workflow (default: all)")
    parser.add_argument("--since", metavar="DATE", help="only runs from this date or time on")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-airflow", action="store_true", help="careflow's tables only (do not read Airflow's database)"
    )


def run(args: argparse.Namespace) -> int:
    """The ``careflow metrics`` command."""
    from careflow.exceptions import ConfigurationError
    from careflow.publishing import is_published

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        raise ConfigurationError(f"--since {exc}") from None
    problems: list[str] = []
    report = build_report(args.workflow, since, airflow=not args.no_airflow, problems=problems)
    if args.workflow and not report["workflows"] and not is_published(args.workflow):
        raise ConfigurationError(
            f"--workflow {args.workflow}: no such workflow is published; "
            "`careflow workflows list` shows the published ones"
        )
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2), file=args.answer)
    else:
        print_report(report)
    sys.stdout.flush()
    for problem in problems:  # on stderr: the report on stdout stays the report alone
        print(f"careflow metrics: {problem}", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "build_report", "careflow_metrics", "distribution", "print_report", "run"]
