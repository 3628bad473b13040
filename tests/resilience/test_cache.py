"""Caches: TTLs, invalidation, shared hit/miss counts, and the in-process store."""

from __future__ import annotations

import time

import pytest

from careflow.resilience import cache as cache_module
from careflow.resilience.cache import (
    SENT_KEYS,
    SENT_KEYS_TTL,
    STANDARD_CACHES,
    Cache,
    LocalStore,
    cache_stats,
    forget_caches,
    get_cache,
    invalidate_workflow,
    workflow_key,
)
from careflow.resilience.redis_link import RedisLink, forget_links

from .conftest import REDIS_URL

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "local"])
def make_cache(request, prefix):
    def make(name: str = "validation", ttl: float = 60.0) -> Cache:
        link = RedisLink(REDIS_URL) if request.param == "redis" else None
        return Cache(name, ttl, link=link, prefix=prefix)

    make.kind = request.param
    return make


def test_values_come_back_with_their_type(make_cache):
    cache = make_cache()
    cache.set("text", "héllo")
    cache.set("blob", b"\x00\xffs")
    assert cache.get("text") == "héllo"
    assert cache.get("blob") == b"\x00\xffs"
    assert cache.get("missing") is None
    with pytest.raises(TypeError, match="str or bytes"):
        cache.set("bad", 42)


def test_entries_expire_after_the_cache_ttl_or_their_own(make_cache):
    cache = make_cache(ttl=0.3)
    cache.set("short", "a")
    cache.set("long", "b", ttl=5)
    assert cache.get("short") == "a"
    time.sleep(0.4)
    assert cache.get("short") is None
    assert cache.get("long") == "b"


def test_get_many_set_many_and_invalidate(make_cache):
    cache = make_cache()
    cache.set_many({"a": "1", "b": "2", "c": "3"})
    assert cache.get_many(["a", "c", "zz"]) == {"a": "1", "c": "3"}
    cache.invalidate("a")
    assert cache.get_many(["a", "b"]) == {"b": "2"}


def test_invalidate_prefix_removes_only_that_prefix(make_cache):
    cache = make_cache()
    cache.set_many({"wf-1:v1": "x", "wf-1:v2": "y", "wf-10:v1": "z", "wf-2:v1": "w", "odd*[k]": "q"})
    assert cache.invalidate_prefix("wf-1:") == 2
    assert cache.get_many(["wf-1:v1", "wf-1:v2", "wf-10:v1", "wf-2:v1"]) == {"wf-10:v1": "z", "wf-2:v1": "w"}
    assert cache.invalidate_prefix("odd*") == 1  # glob characters are taken literally
    assert cache.get("wf-2:v1") == "w"


def test_stats_count_hits_and_misses(make_cache):
    cache = make_cache()
    cache.set("k", "v")
    cache.get("k")
    cache.get("k")
    cache.get_many(["k", "nope", "nada"])
    stats = cache.stats()
    assert (stats["name"], stats["hits"], stats["misses"]) == ("validation", 3, 2)
    assert stats["backend"] == make_cache.kind


def test_hit_counts_are_shared_between_workers_on_redis(prefix):
    worker_a = Cache("templates", 60, link=RedisLink(REDIS_URL), prefix=prefix)
    worker_b = Cache("templates", 60, link=RedisLink(REDIS_URL), prefix=prefix)
    worker_a.set("t", "compiled")
    assert worker_b.get("t") == "compiled"  # one worker's entry serves the other
    worker_a.get("t")
    worker_b.get("absent")
    assert worker_a.stats()["hits"] == 2 and worker_a.stats()["misses"] == 1
    worker_b.invalidate("t")
    assert worker_a.get("t") is None


def test_namespaces_do_not_mix(prefix):
    link = RedisLink(REDIS_URL)
    a = Cache("validation", 60, link=link, prefix=prefix)
    b = Cache("templates", 60, link=link, prefix=prefix)
    a.set("k", "from validation")
    assert b.get("k") is None
    b.invalidate_prefix("")
    assert a.get("k") == "from validation"


def test_local_store_evicts_the_least_recently_used():
    store = LocalStore(max_entries=2)
    store.set("a", "1", 60)
    store.set("b", "2", 60)
    assert store.get("a") == "1"  # a is now the most recent
    store.set("c", "3", 60)
    assert (store.get("a"), store.get("b"), store.get("c")) == ("1", None, "3")


def test_standard_caches_and_registry(monkeypatch, prefix):
    monkeypatch.setenv("CAREFLOW_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    forget_caches()
    forget_links()
    try:
        sent = get_cache(SENT_KEYS, SENT_KEYS_TTL)
        assert get_cache(SENT_KEYS, SENT_KEYS_TTL) is sent
        with pytest.raises(ValueError, match="already exists"):
            get_cache(SENT_KEYS, 1)
        sent.get("idem-1")
        stats = {s["name"]: s for s in cache_stats()}
        assert set(STANDARD_CACHES) <= set(stats)
        assert stats[SENT_KEYS]["misses"] == 1 and stats[SENT_KEYS]["backend"] == "redis"
        assert cache_module.VALIDATION_TTL == 600
        assert cache_module.TEMPLATES_TTL == 3600 and SENT_KEYS_TTL == 300
    finally:
        forget_caches()
        forget_links()


def test_publishing_a_workflow_drops_its_cached_entries(monkeypatch, prefix):
    monkeypatch.setenv("CAREFLOW_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    forget_caches()
    forget_links()
    try:
        validation = get_cache(cache_module.VALIDATION, cache_module.VALIDATION_TTL)
        validation.set(workflow_key("wf-1", "aaa"), "ok")
        validation.set(workflow_key("wf-1", "bbb"), "ok")
        validation.set(workflow_key("wf-10", "bbb"), "other workflow")
        assert invalidate_workflow("wf-1", "ccc") == 2
        assert validation.get(workflow_key("wf-1", "aaa")) is None
        assert validation.get(workflow_key("wf-1", "bbb")) is None
        assert validation.get(workflow_key("wf-10", "bbb")) == "other workflow"
    finally:
        forget_caches()
        forget_links()


def test_no_redis_configured_means_local_caches(monkeypatch):
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    forget_caches()
    try:
        cache = get_cache("validation", 600)
        cache.set("sha256:ab", b"{}")
        assert cache.get("sha256:ab") == b"{}"
        assert cache.stats()["backend"] == "local"
    finally:
        forget_caches()


def test_redis_replies_are_read_by_hiredis(prefix):
    """A batch's sent-keys lookup reads a thousand replies: in C, not in redis-py's Python parser."""
    link = RedisLink(REDIS_URL)
    cache = Cache("sent_keys", 60, link=link, prefix=prefix)
    keys = [f"wf:a1:ex{n}" for n in range(1000)]
    cache.set_many({k: "accepted" for k in keys[::2]})
    assert cache.get_many(keys) == {k: "accepted" for k in keys[::2]}
    connection = link.client.connection_pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_HiredisParser"
    finally:
        link.client.connection_pool.release(connection)


def test_a_warmed_cache_reads_in_one_round_trip(prefix, monkeypatch):
    """``warm`` registers the cache and loads its scripts ahead (the action does it while it prepares
    its first batch): the first read is then one command instead of four."""
    import redis

    url = REDIS_URL
    admin = redis.Redis.from_url(url)
    admin.script_flush()  # as after a Redis restart: no script loaded yet
    cold, warmed = (Cache("sent_keys", 60.0, link=RedisLink(url), prefix=prefix) for _ in range(2))
    warmed.warm()
    commands: list[str] = []

    for cache in (cold, warmed):
        real = cache.link.client.execute_command
        monkeypatch.setattr(
            cache.link.client,
            "execute_command",
            lambda *args, real=real, **kw: commands.append(str(args[0])) or real(*args, **kw),
        )
    assert admin.script_exists(warmed._get_script.sha, warmed._set_script.sha) == [True, True]
    assert warmed.get_many(["k1", "k2"]) == {}
    assert commands == ["EVALSHA"]
    commands.clear()
    admin.script_flush()
    assert cold.get_many(["k1", "k2"]) == {}
    # the server's kind asked (a single server or a cluster), registered, the script refused, loaded, run
    assert commands == ["CLUSTER INFO", "SADD", "EVALSHA", "SCRIPT LOAD", "EVALSHA"]


def test_warming_a_cache_without_redis_or_with_redis_down_does_nothing(prefix):
    Cache("sent_keys", 60.0, link=None, prefix=prefix).warm()
    down = Cache("sent_keys", 60.0, link=RedisLink("redis://127.0.0.1:1/0", retry_seconds=60), prefix=prefix)
    down.warm()
    assert down.backend == "local-fallback"
    down.set("k", "v")  # the fallback keeps working
    assert down.get("k") == "v"
