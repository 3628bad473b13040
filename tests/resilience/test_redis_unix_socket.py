"""careflow_redis on the same machine's Unix socket: a connection whose host is the socket's
path, or a ``unix://`` URL; breakers shared through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from careflow.exceptions import ConfigurationError
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.redis_link import RedisLink
from careflow.settings import ConnectionInfo, redis_url
from support import redis_unix_socket

from .conftest import opened_by_one_worker_for_the_other

pytestmark = pytest.mark.redis

PASSWORD = "socket-secret"


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with redis_unix_socket(tmp_path_factory.mktemp("redis-unix"), PASSWORD) as path:
        yield path


def test_a_connection_whose_host_is_the_socket_shares_breakers_through_it(socket_path, monkeypatch):
    import careflow.settings

    conn = ConnectionInfo("careflow_redis", "redis", host=str(socket_path), password=PASSWORD, schema="2")
    monkeypatch.delenv("CAREFLOW_REDIS_URL", raising=False)
    monkeypatch.setattr(careflow.settings, "get_connection", lambda conn_id: conn)
    url = redis_url()
    assert url == f"unix://:{PASSWORD}@{socket_path}?db=2"
    backends = [RedisBackend(RedisLink(url), prefix="cftest-unix") for _ in range(2)]
    observer = opened_by_one_worker_for_the_other("unix:sms", backends)
    assert observer.snapshot().backend == "redis" and observer.fallback_events == 0
    server = redis.Redis(unix_socket_path=str(socket_path), password=PASSWORD, db=2)
    try:
        assert server.exists(backends[0].state_key("unix:sms"))
    finally:
        server.close()


def test_a_unix_url_whose_database_is_not_a_number_is_refused_by_name(socket_path):
    with pytest.raises(ConfigurationError, match="the database 'two' is not a number") as refused:
        RedisLink(f"unix://:{PASSWORD}@{socket_path}?db=two")
    assert PASSWORD not in str(refused.value)
