"""careflow_redis over TLS (``rediss://``): a private CA trusted through ``SSL_CERT_FILE``, and a
certificate nobody trusts told apart from an outage."""

from __future__ import annotations

import logging

import pytest

from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.cache import Cache

from .conftest import opened_by_one_worker_for_the_other

pytestmark = pytest.mark.redis


@pytest.fixture
def no_ca(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_breakers_and_caches_are_shared_over_tls_once_the_ca_is_trusted(
    redis_tls_url, certificate, redis_backend, no_ca
):
    no_ca.setenv("SSL_CERT_FILE", str(certificate[0]))  # as an operator trusts a private CA
    backends = [redis_backend(url=redis_tls_url) for _ in range(2)]
    observer = opened_by_one_worker_for_the_other("tls:sms", backends)
    assert observer.snapshot().backend == "redis" and observer.fallback_events == 0
    cache = Cache("sent_keys", 60.0, link=redis_backend(url=redis_tls_url).link, prefix="cftest-tls")
    cache.set_many({"k1": "accepted"})
    assert cache.get_many(["k1", "k2"]) == {"k1": "accepted"} and cache.backend == "redis"


def test_a_certificate_nobody_trusts_falls_back_and_says_what_to_trust(
    redis_tls_url, redis_backend, emitted, caplog, no_ca
):
    caplog.set_level(logging.WARNING, logger="careflow.resilience")
    breaker = CircuitBreaker("tls-untrusted:sms", BreakerConfig(), backend=redis_backend(url=redis_tls_url))
    assert breaker.acquire().backend == "local-fallback"  # sending goes on, on the machine's breaker file

    [(name, fields)] = [(n, f) for n, f in emitted if n.startswith("breaker_redis")]
    assert name == "breaker_redis_fallback" and fields["url"] == redis_tls_url
    assert fields["error"].startswith("ConnectionError: its TLS certificate was refused (")
    assert "self-signed certificate" in fields["error"] and "SSL_CERT_FILE" in fields["error"]
    [warning] = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert "its TLS certificate was refused" in warning
