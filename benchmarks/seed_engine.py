"""The seed's engine, ported to Python as the baseline: the loop its notes describe.

The original (``seeds/``: "순차적 실행", "매번 실행 계획 재계산", "N+1 쿼리") ran, for each patient and
appointment, ``calculateExecutionPlan(nodes, edges, patient, appointment, context)`` from scratch,
then for each of today's actions one duplicate-check query, an awaited send and one insert::

    for (const action of todaysActions) {
      await executeNode(action); // 하나씩 기다림
    }

This port keeps that shape and nothing more: the same Postgres database and clinic data as
careflow, the same fake provider over HTTP (one request at a time on one keep-alive session), a
log table of its own with an index on the duplicate-check columns, autocommit statements. It is
generous to the seed where it can be (raw psycopg2, a prepared index, no ORM).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

SEED_LOG_DDL = """
CREATE TABLE IF NOT EXISTS seed_message_log (
    id BIGSERIAL PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    appointment_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    provider_id TEXT,
    sent_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_seed_message_log_dup
    ON seed_message_log (workflow_id, patient_id, appointment_id, node_id);
"""

_UNITS = {"minutes": 1 / 1440, "hours": 1 / 24, "days": 1, "weeks": 7}
_VARIABLE = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")
_OPS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "exists": lambda a, b: (a is not None) == bool(b),
    "contains": lambda a, b: a is not None and b in a,
}


@dataclass
class PlannedAction:
    """An action the plan says is due today."""

    node_id: str
    channel: str
    template: str


def _lookup(facts: dict[str, Any], path: str) -> Any:
    value: Any = facts
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _rules_hold(group: dict[str, Any], facts: dict[str, Any]) -> bool:
    def one(rule: dict[str, Any]) -> bool:
        if "all" in rule or "any" in rule:
            return _rules_hold(rule, facts)
        return bool(_OPS[rule["op"]](_lookup(facts, rule["field"]), rule.get("value")))

    if "all" in group:
        return all(one(r) for r in group["all"])
    return any(one(r) for r in group.get("any", []))


def calculate_execution_plan(
    nodes: list[dict[str, Any]], edges: list[dict[str, Any]], facts: dict[str, Any], days_passed: int
) -> list[PlannedAction]:
    """The seed's ``calculateExecutionPlan``: rebuilt from the raw graph for every patient.

    Walks the graph from the trigger in topological order, adds up the delays on the way, follows
    the branch each condition takes for this patient, and returns the actions whose accumulated
    delay falls on ``days_passed`` (the seed's "today's actions").
    """
    by_id = {n["id"]: n for n in nodes}
    outgoing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    indegree = {n["id"]: 0 for n in nodes}
    for edge in edges:
        outgoing[edge["source"]].append(edge)
        indegree[edge["target"]] += 1
    queue = deque(n for n, d in indegree.items() if d == 0)
    order: list[str] = []
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for edge in outgoing[node_id]:
            indegree[edge["target"]] -= 1
            if indegree[edge["target"]] == 0:
                queue.append(edge["target"])
    reached: dict[str, float] = {n["id"]: 0.0 for n in nodes if n["type"] == "trigger"}
    plan: list[PlannedAction] = []
    for node_id in order:
        if node_id not in reached:
            continue
        node, offset = by_id[node_id], reached[node_id]
        data = node.get("data", {})
        handle = None
        if node["type"] == "delay" and "amount" in data:
            offset += data["amount"] * _UNITS[data["unit"]]
        elif node["type"] == "condition":
            handle = "true" if _rules_hold(data, facts) else "false"
        elif node["type"] == "action" and int(offset) == days_passed:
            plan.append(PlannedAction(node_id, data["channel"], data["template"]))
        for edge in outgoing[node_id]:
            if handle is None or edge.get("sourceHandle", "true") == handle:
                reached[edge["target"]] = max(reached.get(edge["target"], 0.0), offset)
    return plan


def render(template: str, facts: dict[str, Any]) -> str:
    """The seed's variable substitution (``{{ patient.name }}``)."""
    return _VARIABLE.sub(lambda m: str(_lookup(facts, m.group(1)) or ""), template)


@dataclass
class SeedResult:
    """What one run of the seed's loop did."""

    messages: int
    seconds: float
    round_trips: int
    patients: int
    #: CPU seconds the loop took in this process (every thread: aiohttp resolves names in one)
    cpu_s: float = 0.0
    #: CPU seconds its Postgres backend took meanwhile (None: a server on another machine)
    database_cpu_s: float | None = None
    #: CPU seconds the provider's process took meanwhile (None: not given, or not on this machine)
    provider_cpu_s: float | None = None

    @property
    def msgs_per_s(self) -> float:
        """Messages sent per second."""
        return self.messages / self.seconds if self.seconds else 0.0


async def _run(
    dsn: str,
    workflow: dict[str, Any],
    base_url: str,
    token: str,
    now: datetime,
    limit: int,
    provider_pid: int | None,
) -> SeedResult:
    import aiohttp
    import psycopg2

    from benchmarks.run_task import cpu_spent, postgres_process_cpu_s, process_cpu_s
    from careflow.store.db import POSTGRES_CLIENT_ENCODING

    def provider_cpu_s() -> float | None:
        return None if provider_pid is None else process_cpu_s(provider_pid)

    # UTF-8 on the wire as careflow's sessions (careflow.store.db): a cluster whose default
    # encoding is SQL_ASCII would otherwise have psycopg2 encode the patients' names as ASCII.
    conn = psycopg2.connect(dsn, client_encoding=POSTGRES_CLIENT_ENCODING)
    conn.autocommit = True
    backend = conn.get_backend_pid()
    cur = conn.cursor()
    cur.execute(SEED_LOG_DDL)
    round_trips = 0
    database_before, provider_before = postgres_process_cpu_s(backend), provider_cpu_s()
    cpu_before = time.process_time()
    started = time.perf_counter()
    # The patients and appointments of the clinic whose appointment completed in the last day.
    cur.execute(
        "SELECT p.id, p.name, p.phone, a.id, a.type, a.status, a.scheduled_at, a.completed_at, c.name, c.phone "
        "FROM appointment_events e JOIN appointments a ON a.id = e.appointment_id "
        "JOIN patients p ON p.id = e.patient_id JOIN clinics c ON c.id = e.clinic_id "
        "WHERE e.clinic_id = %s AND e.type = 'appointment_completed' AND e.occurred_at >= %s "
        "AND e.occurred_at < %s ORDER BY e.occurred_at, e.id LIMIT %s",
        (workflow["clinic_id"], now - timedelta(days=1), now, limit),
    )
    pairs = cur.fetchall()
    round_trips += 1
    sent = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for pid, name, phone, aid, atype, astatus, scheduled, completed, clinic_name, clinic_phone in pairs:
            facts = {
                "patient": {"id": pid, "name": name, "phone": phone},
                "appointment": {"id": aid, "type": atype, "status": astatus, "scheduled_at": scheduled},
                "clinic": {"name": clinic_name, "phone": clinic_phone},
            }
            days_passed = (now - completed).days
            plan = calculate_execution_plan(workflow["nodes"], workflow["edges"], facts, days_passed)
            for action in plan:
                cur.execute(
                    "SELECT 1 FROM seed_message_log WHERE workflow_id = %s AND patient_id = %s "
                    "AND appointment_id = %s AND node_id = %s LIMIT 1",
                    (workflow["id"], pid, aid, action.node_id),
                )
                round_trips += 1
                if cur.fetchone():
                    continue
                key = f"seed-{workflow['id']}-{aid}-{action.node_id}"
                payload = {
                    "channel": action.channel,
                    "to": phone,
                    "body": render(action.template, facts),
                    "idempotency_key": key,
                    "metadata": {
                        "workflow_id": workflow["id"],
                        "node_id": action.node_id,
                        "execution_id": aid,
                    },
                }
                async with session.post(
                    f"{base_url}/v1/messages", data=json.dumps(payload), headers={"Idempotency-Key": key}
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status >= 300:
                        raise RuntimeError(f"the provider refused a seed message: HTTP {response.status}")
                cur.execute(
                    "INSERT INTO seed_message_log (workflow_id, patient_id, appointment_id, node_id, channel, "
                    "provider_id, sent_at) VALUES (%s, %s, %s, %s, %s, %s, now())",
                    (workflow["id"], pid, aid, action.node_id, action.channel, answer.get("id")),
                )
                round_trips += 1
                sent += 1
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    database_after, provider_after = postgres_process_cpu_s(backend), provider_cpu_s()
    cur.execute("TRUNCATE seed_message_log")
    conn.close()
    return SeedResult(
        messages=sent,
        seconds=seconds,
        round_trips=round_trips,
        patients=len(pairs),
        cpu_s=cpu_s,
        database_cpu_s=cpu_spent(database_before, database_after),
        provider_cpu_s=cpu_spent(provider_before, provider_after),
    )


def run_seed(
    dsn: str,
    workflow: dict[str, Any],
    base_url: str,
    token: str,
    now: datetime,
    limit: int,
    provider_pid: int | None = None,
) -> SeedResult:
    """Run the seed's loop over at most ``limit`` patients of the workflow's clinic; its log is emptied after.

    ``provider_pid``: the provider's process on this machine, whose CPU over the loop is measured
    as the loop's own and its backend's are.
    """
    return asyncio.run(_run(dsn, workflow, base_url, token, now, limit, provider_pid))


def libpq_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg2://user@host:port/db`` as a libpq URI."""
    return sqlalchemy_url.replace("postgresql+psycopg2://", "postgresql://", 1)
