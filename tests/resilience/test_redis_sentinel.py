"""careflow_redis naming a Redis through its Sentinels: breakers and caches reach the master the
Sentinels name, follow it through a failover, and fall back while no master can be found."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from careflow.exceptions import BreakerOpen, ConfigurationError
from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.cache import Cache
from careflow.resilience.redis_link import DOWN, RedisLink
from careflow.settings import ConnectionInfo, redis_url
from support import RedisSentinel, free_port, redis_sentinel, refusing_port, wait_for

from .conftest import breaker_seen_from_a_fork, opened_by_one_worker_for_the_other

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A master, its replica and a Sentinel of this module's own. A failover swaps the two
    servers: each test asks the Sentinel which one is the master now."""
    with redis_sentinel(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


def test_a_breaker_shared_through_the_sentinels_master_opens_for_every_worker(sentinel):
    prefix = "cftest-sentinel-breaker"
    backends = [RedisBackend(RedisLink(sentinel.url), prefix=prefix) for _ in range(2)]
    observer = opened_by_one_worker_for_the_other("sentinel:sms", backends)
    assert observer.snapshot().backend == "redis"
    with sentinel.server(sentinel.master_port_now()) as master:
        assert master.exists(backends[0].state_key("sentinel:sms"))
    assert all(b.link.fallback_events == 0 and b.link.cluster is None for b in backends)


def test_breakers_and_caches_follow_the_master_through_a_failover(sentinel):
    old_port = sentinel.master_port_now()
    new_port = sentinel.replica_port if old_port == sentinel.master_port else sentinel.master_port
    link = RedisLink(sentinel.url, retry_seconds=0.1)
    backend = RedisBackend(link, prefix="cftest-sentinel-failover")
    config = BreakerConfig(open_seconds=120, max_open_seconds=120)  # still open after the failover
    breaker = CircuitBreaker("failover:sms", config, backend=backend)
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(breaker.acquire(), "transient")
    cache = Cache("sent_keys", 600.0, link=link, prefix="cftest-sentinel-failover")
    cache.set_many({"wf:a1:ex1": "accepted"})
    with sentinel.server(old_port) as master:
        wait_for("the replica to hold what the master holds", lambda: master.wait(1, 1000) == 1, 10, 0.1)

    with sentinel.sentinel() as client:
        client.execute_command("SENTINEL", "failover", sentinel.service)
    wait_for(
        "the Sentinel to name the replica as the master",
        lambda: sentinel.master_port_now() == new_port,
        30,
        0.1,
    )

    # Until the Sentinel has made the old master a replica, that server still takes writes (and
    # loses them when it follows the new one): Redis' failover is asynchronous.
    def demoted() -> bool:
        with sentinel.server(old_port) as old:
            return old.info("replication")["role"] == "slave"

    wait_for("the old master to follow the new one", demoted, 30, 0.1)

    # The same link, as a running worker holds it: its connections to the old master are dropped
    # (a replica now, it refuses writes) and the next ones go where the Sentinel points.
    def written() -> bool:
        return link.run(lambda client: client.set("cftest-sentinel-failover:after", "1")) is not DOWN

    wait_for("a write through the link after the failover", written, 30, 0.2)
    with sentinel.server(new_port) as new_master:
        assert new_master.get("cftest-sentinel-failover:after") == "1"
        assert new_master.info("replication")["role"] == "master"
    with pytest.raises(BreakerOpen):  # the breaker's state came along with the data
        CircuitBreaker("failover:sms", config, backend=backend).acquire()
    assert cache.get_many(["wf:a1:ex1", "wf:a1:ex2"]) == {"wf:a1:ex1": "accepted"}
    assert not link.down


def test_a_forked_send_process_keeps_using_the_sentinels_master(sentinel):
    """An action task forks its send process after its breaker has reached the master."""
    backend = RedisBackend(RedisLink(sentinel.url), prefix="cftest-sentinel-fork")
    assert breaker_seen_from_a_fork(backend) == "open"
    assert not backend.link.down and backend.link.run(lambda client: client.ping())


def test_sentinels_that_do_not_answer_are_an_outage_not_an_error(emitted):
    """Two Sentinels that refuse: each is asked once (redis-py's own retries, with backoff, held
    each attempt about 3 s a Sentinel), and the link falls back."""
    with refusing_port() as first, refusing_port() as second:
        started = time.monotonic()
        link = RedisLink(f"redis+sentinel://127.0.0.1:{first},127.0.0.1:{second}/my%20master/0")
        assert link.run(lambda client: client.ping()) is DOWN
        took = time.monotonic() - started
    assert link.down and link.fallback_events == 1
    assert took < 2, f"{took:.1f} s to find that two Sentinels refuse"
    (event,) = [fields for name, fields in emitted if name == "breaker_redis_fallback"]
    assert event["error"] == (
        "MasterNotFoundError: no Sentinel named a master for 'my master'; check that the Sentinels run, "
        "that sentinel_password is theirs where they ask for one, and that this is the name they monitor "
        "the master by"
    )


def test_a_service_the_sentinels_do_not_monitor_is_named(sentinel, emitted):
    link = RedisLink(sentinel.url.replace(f"/{sentinel.service}/", "/nosuchmaster/"))
    assert link.run(lambda client: client.ping()) is DOWN
    (event,) = [fields for name, fields in emitted if name == "breaker_redis_fallback"]
    assert "no Sentinel named a master for 'nosuchmaster'" in event["error"]
    assert sentinel.sentinel_password not in str(event) and sentinel.password not in str(event)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://:secret@s1:26379", "the path must be /service or /service/database"),
        ("redis+sentinel://:secret@s1:26379/mymaster/one", "the database 'one' is not a number"),
        (
            "redis+sentinel://:secret@s1:263x9,s2/mymaster",
            "the port '263x9' of the server 's1:263x9' is not a number",
        ),
        ("redis+sentinel://:secret@s1/mymaster?ssl=true", "unknown parameter 'ssl'"),
        ("redis+sentinel://:secret@s1,/mymaster", "a Sentinel's host is empty"),
        ("sentinel://:secret@s1:26379", "must specify one of the following schemes"),
    ],
)
def test_a_sentinel_url_careflow_cannot_use_is_refused_by_name(url, why):
    with pytest.raises(ConfigurationError) as refused:
        RedisLink(url + ("&" if "?" in url else "?") + "sentinel_password=hidden")
    message = str(refused.value)
    assert message.startswith("careflow_redis: ") and why in message
    assert "secret" not in message and "hidden" not in message
    assert "redis+sentinel://[[user]:password@]sentinel[:port]" in message


def _connection(extra: dict[str, object], conn_type: str = "redis", password: str = "") -> ConnectionInfo:
    return ConnectionInfo("careflow_redis", conn_type, password=password, extra=extra)


def test_a_connection_names_its_sentinels_and_service(monkeypatch, sentinel):
    import careflow.settings

    nobody = free_port()  # a Sentinel that is down: the next one is asked
    extra = {
        "sentinels": [f"127.0.0.1:{nobody}", f"127.0.0.1:{sentinel.sentinel_port}"],
        "service": sentinel.service,
        "sentinel_password": sentinel.sentinel_password,
        "db": 2,
    }
    conn = _connection(extra, password=sentinel.password)
    monkeypatch.delenv("CAREFLOW_REDIS_URL", raising=False)
    monkeypatch.setattr(careflow.settings, "get_connection", lambda conn_id: conn)
    url = redis_url()
    assert url == (
        f"redis+sentinel://:{sentinel.password}@127.0.0.1:{nobody},127.0.0.1:{sentinel.sentinel_port}"
        f"/mymaster/2?sentinel_password={sentinel.sentinel_password}"
    )
    assert RedisLink(url).run(lambda client: client.set("cftest-sentinel-connection", "1"))
    with sentinel.server(sentinel.master_port_now()) as master:
        master.execute_command("SELECT", 2)
        assert master.get("cftest-sentinel-connection") == "1"


@pytest.mark.parametrize(
    ("extra", "conn_type", "why"),
    [
        ({"sentinels": ["s1:26379"]}, "redis", "extra.sentinels needs extra.service"),
        ({"sentinels": 26379, "service": "m"}, "redis", "extra.sentinels must be a list of host:port"),
    ],
)
def test_a_connection_whose_sentinels_careflow_cannot_use_is_refused_by_name(
    monkeypatch, extra, conn_type, why
):
    import careflow.settings

    monkeypatch.delenv("CAREFLOW_REDIS_URL", raising=False)
    monkeypatch.setattr(careflow.settings, "get_connection", lambda conn_id: _connection(extra, conn_type))
    with pytest.raises(ConfigurationError, match=why):
        redis_url()


@pytest.fixture(scope="module")
def sentinel_tls(tmp_path_factory: pytest.TempPathFactory, certificate) -> Iterator[RedisSentinel]:
    """The same three servers speaking TLS only, with a certificate that is its own CA."""
    with redis_sentinel(tmp_path_factory.mktemp("sentinel-tls"), certificate) as setup:
        yield setup


def test_sentinels_and_their_master_over_tls_once_the_ca_is_trusted(sentinel_tls, certificate, monkeypatch):
    import careflow.settings

    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # as an operator trusts a private CA
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("CAREFLOW_REDIS_URL", raising=False)
    extra = {
        "sentinels": [f"127.0.0.1:{sentinel_tls.sentinel_port}"],
        "service": sentinel_tls.service,
        "sentinel_password": sentinel_tls.sentinel_password,
    }
    conn = _connection(extra, "rediss", password=sentinel_tls.password)
    monkeypatch.setattr(careflow.settings, "get_connection", lambda conn_id: conn)
    url = redis_url()
    assert url is not None and url.startswith("rediss+sentinel://") and url == sentinel_tls.url
    backends = [RedisBackend(RedisLink(url), prefix="cftest-sentinel-tls") for _ in range(2)]
    observer = opened_by_one_worker_for_the_other("sentinel-tls:sms", backends)
    assert observer.snapshot().backend == "redis" and observer.fallback_events == 0
    with sentinel_tls.server(sentinel_tls.master_port_now()) as master:
        assert master.exists(backends[0].state_key("sentinel-tls:sms"))


def test_sentinels_whose_certificate_nobody_trusts_are_an_outage_that_says_what_to_trust(
    sentinel_tls, monkeypatch, emitted
):
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    link = RedisLink(sentinel_tls.url)
    assert link.run(lambda client: client.ping()) is DOWN
    (event,) = [fields for name, fields in emitted if name == "breaker_redis_fallback"]
    assert "their TLS certificate is trusted (SSL_CERT_FILE or SSL_CERT_DIR)" in event["error"]
    assert sentinel_tls.password not in str(event) and sentinel_tls.sentinel_password not in str(event)


def test_sentinels_asked_without_their_password_are_an_outage_that_says_to_give_it(sentinel, emitted):
    link = RedisLink(sentinel.url.split("?")[0])  # the master's password, not the Sentinels'
    assert link.run(lambda client: client.ping()) is DOWN
    (event,) = [fields for name, fields in emitted if name == "breaker_redis_fallback"]
    assert "that sentinel_password is theirs where they ask for one" in event["error"]
