"""A provider outage under 600 due messages: the breaker stops the sends, the task waits in the
triggerer instead of spending its retries, and after recovery every message goes out once.

On each breaker backend: Redis shared by every worker (a server, a Cluster, a master that
Sentinels name), Redis configured but unreachable (the fallback to the breaker file of the
machine) and no Redis at all (the embedded SQLite file).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from sqlalchemy.engine import Engine

from careflow.engine.actions import idempotency_key
from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend
from careflow.store import tables

from .harness import (
    ACTION,
    FAST_BREAKER,
    TaskRun,
    breaker_for,
    enroll,
    ledger_counts,
    pending_workflow,
    run_action_task,
    step_counts,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PATIENTS = 600
#: What the provider may see fail: the calls that open the breaker (at most a batch's worth in
#: flight, max_concurrency=10) plus two probes per half-open. Without the breaker: thousands.
MAX_FAILED_CALLS = 60


def ride_out(
    engine: Engine, fake: FakeProviderServer, client_name: str, workflow_id: str, outage: float
) -> TaskRun:
    """600 due messages, an outage of ``outage`` seconds from the first send, the task to its end."""
    compiled = pending_workflow(workflow_id)
    enroll(engine, compiled, PATIENTS, datetime.now(timezone.utc))
    fake.configure(outage_seconds=outage)
    run = run_action_task(compiled, engine, fake, client_name=client_name, cap_seconds=outage + 30)
    stats = fake.stats(brief=True)
    print(
        f"\n{workflow_id}: backend={breaker_for(client_name).snapshot().backend} outage={outage}s "
        f"provider_errors={stats['errors']} failed_calls={run.failed_requests} received={stats['received']} "
        f"tries={run.tries} deferrals={run.deferrals} retries={run.retries} "
        f"recovered_after={run.recovered_after:.1f}s total={run.seconds:.1f}s "
        f"slowest_try={max(run.try_seconds):.1f}s"
    )
    return run


def assert_ridden_out(
    run: TaskRun, engine: Engine, fake: FakeProviderServer, client_name: str, workflow_id: str, outage: float
) -> None:
    compiled_retries = pending_workflow(workflow_id).settings.retries
    assert run.outcome == "success", (run.outcome, run.reports[-3:])
    # No manual intervention and no retry spent: every wait was a deferral until the breaker's probe.
    assert run.retries == 0 <= compiled_retries, run.reports
    assert run.deferrals >= 2

    stats = fake.stats()
    seen = {k: v for k, v in stats.items() if k not in ("accepts_by_key", "attempts_by_key")}
    context = (seen, dict(run.requests), run.reports[-2:])
    # Every message delivered exactly once, and the ledger agrees.
    assert ledger_counts(engine, workflow_id) == {"sent": PATIENTS}, context
    assert step_counts(engine, workflow_id) == {"done": PATIENTS}, context
    assert stats["accepted"] == PATIENTS and stats["accepted_twice"] == 0, context
    assert stats["duplicates"] == 0, context
    executions = _execution_ids(engine, workflow_id)
    assert set(stats["accepts_by_key"]) == {idempotency_key(e, ACTION) for e in executions}
    # The provider saw a few dozen failures at most, lookups included (the client counts them).
    assert 5 <= stats["errors"] <= MAX_FAILED_CALLS, context
    assert run.failed_requests == stats["errors"], context
    assert stats["lookups"] == 0, context  # nothing was in doubt: no message is looked up

    # The breaker opened during the outage and closed once its probes succeeded.
    breaker = breaker_for(client_name)
    snap = breaker.snapshot()
    # A long outage outlasts several waits: the probes failed and the breaker opened again.
    assert snap.state == "closed" and snap.opens >= (2 if outage >= 10 else 1)
    moves = [(t["from"], t["to"]) for t in reversed(breaker.transitions(100))]
    assert moves[0] == ("closed", "open") and moves[-1] == ("half_open", "closed"), moves
    # Recovered within one breaker wait (plus two tries' work) of the provider's return, not before.
    slack = 2 * max(run.try_seconds) + 2
    assert outage - 0.5 <= run.recovered_after <= outage + FAST_BREAKER.max_open_seconds + slack


def _execution_ids(engine: Engine, workflow_id: str) -> list[str]:
    x = tables.executions
    with engine.connect() as conn:
        return list(
            conn.execute(x.select().with_only_columns(x.c.id).where(x.c.workflow_id == workflow_id)).scalars()
        )


def test_a_20_second_outage_with_breakers_in_redis(pg_engine, fake, shared_redis, client_name):
    run = ride_out(pg_engine, fake, client_name, "outage-redis", 20)
    assert breaker_for(client_name).snapshot().backend == "redis"
    assert_ridden_out(run, pg_engine, fake, client_name, "outage-redis", 20)


def test_an_outage_with_breakers_in_a_redis_cluster(pg_engine, fake, cluster_redis, client_name):
    run = ride_out(pg_engine, fake, client_name, "outage-cluster", 6)
    breaker = breaker_for(client_name)
    assert breaker.snapshot().backend == "redis"
    assert breaker.fallback_events == 0
    assert_ridden_out(run, pg_engine, fake, client_name, "outage-cluster", 6)


def test_an_outage_with_breakers_behind_redis_sentinels(pg_engine, fake, sentinel_redis, client_name):
    run = ride_out(pg_engine, fake, client_name, "outage-sentinel", 6)
    breaker = breaker_for(client_name)
    assert breaker.snapshot().backend == "redis"
    assert breaker.fallback_events == 0
    with sentinel_redis.server(sentinel_redis.master_port) as master:  # the state is the master's
        assert master.keys("cftest-sentinel*")
    assert_ridden_out(run, pg_engine, fake, client_name, "outage-sentinel", 6)


def test_an_outage_with_redis_unreachable_uses_the_breaker_file(pg_engine, fake, dead_redis, client_name):
    run = ride_out(pg_engine, fake, client_name, "outage-fallback", 6)
    breaker = breaker_for(client_name)
    assert breaker.snapshot().backend == "local-fallback"
    assert breaker.fallback_events >= 1
    assert EmbeddedBackend(dead_redis).names() == [breaker.name]
    assert_ridden_out(run, pg_engine, fake, client_name, "outage-fallback", 6)


def test_an_outage_with_the_embedded_breaker(sqlite_engine, fake, embedded_breakers, client_name):
    run = ride_out(sqlite_engine, fake, client_name, "outage-embedded", 6)
    assert breaker_for(client_name).snapshot().backend == "embedded"
    assert os.path.getsize(embedded_breakers) > 0
    assert_ridden_out(run, sqlite_engine, fake, client_name, "outage-embedded", 6)


def test_a_small_cohort_that_opens_the_fallback_breaker_defers_instead_of_retrying(
    pg_engine, fake, dead_redis, client_name, monkeypatch
):
    # As many messages as the failures that open the breaker, all on the wire at once: every one
    # fails, none is held back. With Redis out of reach the send process's breaker opens in the
    # breaker file; the task waits for its probe instead of spending one of its retries.
    monkeypatch.setenv("AIRFLOW__CAREFLOW__SEND_PROCESS", "true")  # as in production
    compiled = pending_workflow("outage-small-fallback")
    patients = FAST_BREAKER.consecutive_failures
    enroll(pg_engine, compiled, patients, datetime.now(timezone.utc))
    fake.configure(outage_seconds=1.0)
    run = run_action_task(
        compiled, pg_engine, fake, client_name=client_name, max_concurrency=patients, cap_seconds=30
    )
    first = run.reports[0]
    assert (first["pending"], first["reasons"]["transient"]) == (patients, patients), first
    assert "breaker_open" not in first["reasons"], first
    assert (run.outcome, run.retries) == ("success", 0), (run.outcome, run.reports)
    # once while open; maybe once more (1 s) if the resumed sends find the half-open probes out
    assert 1 <= run.deferrals <= 2
    # the task process reads what its send process left in the breaker file
    snap = breaker_for(client_name).snapshot()
    assert (snap.state, snap.opens, snap.backend) == ("closed", 1, "local-fallback")
    assert ledger_counts(pg_engine, "outage-small-fallback") == {"sent": patients}
    assert fake.stats()["accepted_twice"] == 0
