"""Fixtures of the cache tests: the standard caches on the test Redis (own key prefix), or on a dead one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from careflow.resilience.cache import forget_caches
from careflow.resilience.redis_link import forget_links

REDIS_URL = os.environ.get("CAREFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS_URL = "redis://127.0.0.1:6390/0"  # nothing listens there


def _fresh() -> None:
    forget_caches()
    forget_links()


@pytest.fixture
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"the cache tests need Redis at {REDIS_URL}")
    return client


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[str]:
    """The standard caches on Redis under a prefix of this test's own; yields the prefix."""
    prefix = f"cftest:{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CAREFLOW_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    _fresh()
    yield prefix
    _fresh()
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Redis configured on a port where nothing listens."""
    monkeypatch.setenv("CAREFLOW_REDIS_URL", DEAD_REDIS_URL)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", f"cftest:{uuid.uuid4().hex[:12]}")
    _fresh()
    yield
    _fresh()


def another_process() -> None:
    """Forget every cache and Redis link, as a new worker would start."""
    _fresh()
