"""The breaker as the provider client's send gate, against the fake provider over real HTTP."""

from __future__ import annotations

import pytest

from careflow.exceptions import BreakerOpen
from careflow.providers.client import Message, Outcome, ProviderClient
from careflow.providers.fake_server import FakeProviderServer
from careflow.resilience import CircuitBreaker

pytestmark = pytest.mark.redis


def message(i: int) -> Message:
    return Message(f"wf1:a1:ex{i}", "sms", "+821055501234", "Your check-up is tomorrow", None, {})


@pytest.fixture
def fake():
    with FakeProviderServer(token="t") as server:
        yield server


def test_an_outage_opens_the_breaker_and_stops_the_batch_for_every_worker(fake, redis_backend):
    fake.provider.configure(outage_seconds=30)
    breaker = CircuitBreaker("default:sms", backend=redis_backend())
    client = ProviderClient(fake.url, fake.token, max_concurrency=4, timeout=2)

    results = client.send_batch([message(i) for i in range(60)], gate=breaker.gate())

    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.TRANSIENT) < 15  # stopped soon after the fifth failure in a row
    assert outcomes.count(Outcome.NOT_SENT) > 40
    assert {r.error_code for r in results if r.outcome is Outcome.NOT_SENT} == {"breaker_open"}
    other_worker = CircuitBreaker("default:sms", backend=redis_backend())
    with pytest.raises(BreakerOpen):
        other_worker.acquire()


def test_a_healthy_provider_keeps_the_breaker_closed(fake, redis_backend):
    breaker = CircuitBreaker("default:sms", backend=redis_backend())
    client = ProviderClient(fake.url, fake.token, max_concurrency=8, timeout=2)
    results = client.send_batch([message(i) for i in range(100)], gate=breaker.gate())
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.failure_rate) == ("closed", 100, 0.0)
