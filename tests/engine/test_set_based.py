"""Set-based processing (a fixed number of queries per batch) and no patient data in reports."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import event

from careflow.engine.recipients import normalize_phone
from careflow.store import tables

from .harness import Clinic, action, chain, cohort, kst, rows

T = kst(2025, 3, 5)


def test_queries_per_batch_are_fixed_not_per_patient(engine, journey, fake):
    c = Clinic()
    cohort(c, 1000, kst(2025, 3, 4, 15))
    c.load(engine)
    doc = chain(
        "bulk",
        ("c", "condition", {"all": [{"field": "patient.consent_messages", "op": "eq", "value": True}]}),
        ("w", "timeWindow", {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "00:00", "end": "23:59"}),
        ("a", "action", action()),
        settings={"batch_size": 500},
        edges=[("t", "c", None), ("c", "w", "true"), ("w", "a", None)],
    )
    j = journey(doc)
    statements: dict[str, int] = {}
    current = {"node": ""}

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            statements[current["node"]] = statements.get(current["node"], 0) + 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        ctx = j.context(T)
        from careflow.engine.nodes import process_node

        reports = {}
        for node_id in j.compiled.order:
            current["node"] = node_id
            reports[node_id] = process_node(ctx, node_id)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert reports["t"].enrolled == 1000
    assert reports["a"].sent == 1000
    for node_id, report in reports.items():
        # An action's first batches are smaller (FIRST_BATCH, then doubling): 100, 200, 400, 300.
        expected = 4 if j.compiled.nodes[node_id].type == "action" else 2
        assert report.batches == expected, (node_id, report.batches)
        assert report.queries * 20 <= 1000, (node_id, report.queries, statements)
        # The report is honest: the database saw about as many statements as it counts.
        assert statements[node_id] <= report.queries + 2, (node_id, statements[node_id], report.queries)
        assert statements[node_id] * 20 <= 1000, (node_id, statements[node_id])
    assert fake.stats()["accepted"] == 1000


def test_no_patient_data_in_reports_or_recorded_errors(engine, journey, fake):
    c = Clinic()
    cohort(c, 6, kst(2025, 3, 4, 15), attributes={"nickname": "별명"})
    c.completed("tmpl", kst(2025, 3, 4, 15))  # no nickname: a template failure
    c.load(engine)
    with engine.connect() as conn:
        people = [dict(r) for r in conn.execute(tables.patients.select()).mappings()]
    names = [p["name"] for p in people]
    phones = [p["phone"] for p in people] + [normalize_phone(p["phone"]) for p in people]
    template = "{{ patient.attributes.nickname | default(patient.name) }}님, 비밀 안내 {{ patient.phone }}"
    doc = chain(
        "privacy",
        ("a", "action", action(template)),
        ("b", "action", action("{{ patient.attributes.nickname }}님 추가 안내")),
        edges=[("t", "a", None), ("t", "b", None)],
    )
    j = journey(doc)

    def recorded() -> str:
        return json.dumps(
            [[r["last_error"], r["reason"]] for r in rows(engine, tables.messages)]
            + [[s["error"], s["output"]] for s in rows(engine, tables.steps)]
            + [[e["exit_reason"]] for e in rows(engine, tables.executions)],
            ensure_ascii=False,
            default=str,
        )

    fake.configure(error_rate=1.0)  # transient errors first
    j.run_at(T)
    after_transient = recorded()
    assert "transient HTTP 503" in after_transient
    fake.configure(error_rate=0.0, permanent_fail_recipients=[normalize_phone(people[0]["phone"])])
    j.run_at(T + timedelta(minutes=30))
    after_permanent = recorded()
    assert "permanent HTTP 422" in after_permanent and "TEMPLATE_UNKNOWN_VARIABLE" in after_permanent
    bodies = [m["body"] for m in fake.messages()]
    assert len(bodies) == 6 + 5  # the refused recipient gets neither; "tmpl" only the first

    secrets = [*names, *[p for p in phones if p], "비밀 안내", "추가 안내", *bodies]
    xcoms = json.dumps([r.to_xcom() for _, r in j.reports], ensure_ascii=False)
    for secret in secrets:
        assert secret not in xcoms, secret
        assert secret not in after_transient, secret
        assert secret not in after_permanent, secret
