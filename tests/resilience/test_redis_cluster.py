"""careflow_redis pointing at a Redis Cluster: breakers and caches shared through it, slots followed;
and telling a cluster from a single server as a user that may not run ``@dangerous`` commands."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from careflow.exceptions import ConfigurationError
from careflow.resilience.backends.redis_backend import RedisBackend
from careflow.resilience.cache import Cache
from careflow.resilience.redis_link import RedisLink

from .conftest import REDIS_URL, breaker_seen_from_a_fork, opened_by_one_worker_for_the_other

pytestmark = pytest.mark.redis


def on_the_first_node(url: str, key: str) -> bool:
    """Whether ``key``'s slot is held by the cluster's first node (the one the URL names)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    slot = key_slot(key.encode())
    client = redis.Redis.from_url(url)
    try:
        for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1]) == port
    finally:
        client.close()
    raise AssertionError(f"no node holds slot {slot}")


def test_a_cluster_node_is_spoken_to_through_a_cluster_client(redis_cluster_url):
    cluster, single = RedisLink(redis_cluster_url), RedisLink(REDIS_URL)
    assert cluster.run(lambda client: client.ping()) and single.run(lambda client: client.ping())
    assert isinstance(cluster.cluster, redis.RedisCluster)
    assert single.cluster is None


def test_a_breaker_shared_through_a_cluster_opens_for_every_worker_and_is_listed(redis_cluster_url):
    prefix = "cftest-cluster-breaker"
    backends = [RedisBackend(RedisLink(redis_cluster_url), prefix=prefix) for _ in range(2)]
    # its keys live on a node other than the one the URL names: the client follows the slot there
    assert not on_the_first_node(redis_cluster_url, backends[0].state_key("x"))
    observer = opened_by_one_worker_for_the_other("cluster:sms", backends)
    assert observer.snapshot().state == "open" and observer.snapshot().backend == "redis"
    assert backends[1].names() == ["cluster:sms"]
    assert [t["to"] for t in backends[1].transitions("cluster:sms")] == ["open"]
    assert all(b.link.fallback_events == 0 and not b.link.down for b in backends)


def test_a_forked_send_process_keeps_using_the_cluster(redis_cluster_url):
    """An action task forks its send process after its breaker has reached the cluster."""
    backend = RedisBackend(RedisLink(redis_cluster_url), prefix="cftest-cluster-fork")
    assert breaker_seen_from_a_fork(backend) == "open"
    assert not backend.link.down


def test_the_sent_keys_cache_through_a_cluster(redis_cluster_url):
    cache = Cache("sent_keys", 60.0, link=RedisLink(redis_cluster_url), prefix="cftest-cluster-cache")
    cache.warm()
    keys = [f"wf:a1:ex{n}" for n in range(1000)]
    cache.set_many({k: "accepted" for k in keys[::2]})
    assert cache.get_many(keys) == {k: "accepted" for k in keys[::2]}
    assert cache.backend == "redis"
    assert not on_the_first_node(redis_cluster_url, cache._key("x"))
    assert cache.stats()["hits"] == 500 and cache.stats()["misses"] == 500
    assert cache.invalidate_prefix("wf:a1:ex1") == 55  # the even ones set: ex10…ex18, ex100…ex198
    assert len(cache.get_many(keys)) == 445


def test_a_cluster_with_a_database_other_than_0_is_refused_by_name(redis_cluster_url):
    link = RedisLink(redis_cluster_url.rsplit("/", 1)[0] + "/2")
    with pytest.raises(ConfigurationError, match=r"careflow_redis: .* Redis Cluster.* database 2"):
        link.run(lambda client: client.ping())


def test_a_user_denied_dangerous_commands_shares_breakers_and_caches_through_a_single_redis(acl_user, prefix):
    """A hardened ACL user (``+@all -@dangerous``, its own keys only) is refused ``INFO``: careflow
    asks the server's kind another way, and every key it touches is under its prefix."""
    # and only careflow's own keys, those under its prefix
    url = acl_user([f"{prefix}*"], ["+@all", "-@dangerous"])
    backends = [RedisBackend(RedisLink(url), prefix=prefix) for _ in range(2)]
    with pytest.raises(redis.exceptions.NoPermissionError):
        backends[0].link.client.info("cluster")
    observer = opened_by_one_worker_for_the_other("acl:sms", backends)
    assert observer.snapshot().backend == "redis"
    assert all(b.link.cluster is None and b.link.fallback_events == 0 for b in backends)
    cache = Cache("sent_keys", 60.0, link=RedisLink(url), prefix=prefix)
    cache.set_many({"k1": "accepted"})
    assert cache.get_many(["k1", "k2"]) == {"k1": "accepted"} and cache.backend == "redis"
