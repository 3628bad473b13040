"""A 429 storm pauses every sender until Retry-After; a refused token stops the task at once."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from careflow.engine.actions import FIRST_BATCH
from careflow.exceptions import ProviderConfigurationError
from careflow.resilience import CircuitBreaker
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.redis_link import RedisLink

from .conftest import REDIS_URL
from .harness import (
    CHANNEL,
    breaker_for,
    enroll,
    ledger_counts,
    pending_workflow,
    run_action_task,
    step_counts,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PATIENTS = 600
MAX_CONCURRENCY = 10


def test_a_429_storm_pauses_every_sender_and_delivers_each_message_once(
    pg_engine, fake, shared_redis, client_name
):
    storm, retry_after = 4.0, 1
    compiled = pending_workflow("throttled")
    enroll(pg_engine, compiled, PATIENTS, datetime.now(timezone.utc))
    # Another worker's view of the same breaker: its own connection to Redis.
    other_worker = CircuitBreaker(
        f"{client_name}:{CHANNEL}", backend=RedisBackend(RedisLink(REDIS_URL), prefix=shared_redis)
    )
    paused_seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            until = other_worker.snapshot().paused_until
            if until:
                paused_seen.append(until)

    def calm_down() -> None:
        fake.configure(throttle_rate=0.0)

    fake.configure(throttle_rate=1.0, retry_after=retry_after)
    watcher = threading.Thread(target=watch, daemon=True)
    storm_over = threading.Timer(storm, calm_down)
    started = time.monotonic()
    watcher.start()
    storm_over.start()
    try:
        run = run_action_task(
            compiled,
            pg_engine,
            fake,
            client_name=client_name,
            max_concurrency=MAX_CONCURRENCY,
            cap_seconds=30,
        )
    finally:
        done.set()
        storm_over.cancel()
        watcher.join(5)
    stats = fake.stats()
    throttled_events = [
        f for name, f in run.events if name == "message_outcome" and f["outcome"] == "throttled"
    ]
    throttled_counted = sum(f["count"] for f in throttled_events)
    print(
        f"\nthrottled: throttled={stats['throttled']} received={stats['received']} tries={run.tries} "
        f"deferrals={run.deferrals} retries={run.retries} recovered_after={run.recovered_after:.1f}s "
        f"pauses_seen_by_another_worker={len(set(paused_seen))}"
    )

    assert run.outcome == "success" and run.retries == 0, run.reports
    assert run.deferrals >= 1  # the task waited out the pause in the triggerer
    # The pause is shared: another worker saw it in Redis while the storm lasted.
    assert paused_seen and len(set(paused_seen)) >= 2
    # Each pause cost at most one round of requests in flight, not a request per message.
    rounds = storm / retry_after + 2
    assert MAX_CONCURRENCY <= stats["throttled"] <= MAX_CONCURRENCY * rounds, stats["throttled"]
    assert stats["errors"] == 0
    # Every throttled answer was recorded (metrics) and counted in the task's report.
    assert throttled_counted == stats["throttled"]
    assert run.reasons()["throttled"] == stats["throttled"]
    # Throttling is not a failure: the breaker never opened.
    assert breaker_for(client_name).snapshot().opens == 0
    assert stats["accepted"] == PATIENTS and stats["accepted_twice"] == 0 and stats["duplicates"] == 0
    assert ledger_counts(pg_engine, "throttled") == {"sent": PATIENTS}
    assert step_counts(pg_engine, "throttled") == {"done": PATIENTS}
    assert storm <= run.recovered_after <= time.monotonic() - started


def test_a_refused_token_stops_the_task_and_leaves_the_messages_pending(
    pg_engine, fake, shared_redis, client_name
):
    compiled = pending_workflow("misconfigured")
    enroll(pg_engine, compiled, PATIENTS, datetime.now(timezone.utc))

    run = run_action_task(
        compiled,
        pg_engine,
        fake,
        client_name=client_name,
        token="not-the-token",
        max_concurrency=MAX_CONCURRENCY,
    )
    stats = fake.stats()
    print(
        f"\nmisconfigured: received={stats['received']} unauthorized={stats['unauthorized']} tries={run.tries}"
    )

    # The first batch raises; the operator turns it into a failure without retries.
    assert run.outcome == "configuration_error" and run.tries == 1 and run.retries == 0
    assert isinstance(run.error, ProviderConfigurationError)
    assert "careflow_messaging" in str(run.error)
    # The provider saw at most the requests already in flight when the first 401 came back.
    assert 1 <= stats["received"] <= MAX_CONCURRENCY
    assert stats["unauthorized"] == stats["received"] and stats["accepted"] == 0
    # Nothing failed: every message is still pending, to be sent once the connection is fixed.
    # The batches handed over before the refusal was recorded are in the ledger, not sent (the
    # client sends nothing after a refusal); the next batches were not claimed at all.
    ledger = ledger_counts(pg_engine, "misconfigured")
    assert list(ledger) == ["pending"] and FIRST_BATCH <= ledger["pending"] < PATIENTS, ledger
    assert step_counts(pg_engine, "misconfigured") == {"pending": PATIENTS}
    # A wrong token says nothing about the provider's health: the breaker stays closed.
    snap = breaker_for(client_name).snapshot()
    assert snap.state == "closed" and snap.opens == 0

    fixed = run_action_task(
        compiled, pg_engine, fake, client_name=client_name, max_concurrency=MAX_CONCURRENCY
    )
    assert fixed.outcome == "success" and fixed.tries == 1
    stats = fake.stats()
    assert stats["accepted"] == PATIENTS and stats["accepted_twice"] == 0
    assert ledger_counts(pg_engine, "misconfigured") == {"sent": PATIENTS}
