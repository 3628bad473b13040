"""careflow_redis with the wrong password, or an ACL user refused what careflow runs: the sends go on,
on the machine's breaker file and per-process caches, and the log and the alert say what to mend."""

from __future__ import annotations

import logging

import pytest
import redis

from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.cache import Cache
from careflow.resilience.redis_link import RedisLink, _why_unusable

pytestmark = pytest.mark.redis


def _fallback_error(emitted: list[tuple[str, dict]]) -> str:
    [(name, fields)] = [(n, f) for n, f in emitted if n.startswith("breaker_redis")]
    assert name == "breaker_redis_fallback"
    return str(fields["error"])


def test_a_wrong_password_falls_back_and_says_to_set_it(acl_user, redis_backend, emitted, caplog):
    caplog.set_level(logging.WARNING, logger="careflow.resilience")
    url = acl_user(["cftest*"], ["+@all", "-@dangerous"]).replace(":pw@", ":not-the-password@")
    breaker = CircuitBreaker("auth:sms", BreakerConfig(), backend=redis_backend(url=url))
    assert breaker.acquire().backend == "local-fallback"  # sending goes on

    error = _fallback_error(emitted)
    assert error.startswith("AuthenticationError: it refused careflow_redis's user and password (")
    assert error.endswith("set the connection's login and password")
    [warning] = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert "refused careflow_redis's user and password" in warning
    assert "not-the-password" not in warning + error  # the URL is told with its password masked


@pytest.mark.parametrize(
    ("keys", "commands", "refused"),
    [
        # a user without scripts: the breakers' EVALSHA and the caches' SADD are refused
        (["{prefix}*"], ["+@all", "-@dangerous", "-@scripting", "-sadd"], "'evalsha' command"),
        # a user whose keys are another application's
        (["other-app*"], ["+@all", "-@dangerous"], "access one of the keys"),
    ],
    ids=["command", "key"],
)
def test_an_acl_user_refused_what_careflow_runs_falls_back_and_says_what_to_grant(
    keys, commands, refused, acl_user, prefix, redis_backend, emitted, caplog, monkeypatch
):
    monkeypatch.setenv("CAREFLOW_REDIS_PREFIX", prefix)
    caplog.set_level(logging.WARNING, logger="careflow.resilience")
    url = acl_user([k.format(prefix=prefix) for k in keys], commands)
    breaker = CircuitBreaker("acl-refused:sms", BreakerConfig(), backend=redis_backend(url=url))
    permit = breaker.acquire()
    assert permit.backend == "local-fallback"
    breaker.record(permit, "accepted")

    error = _fallback_error(emitted)
    assert error.startswith("NoPermissionError: ") and refused in error
    assert error.endswith(
        f"grant careflow_redis's user the commands the README lists, on the keys under {prefix!r}"
    )
    assert any("NoPermissionError" in r.getMessage() for r in caplog.records)

    cache = Cache("sent_keys", 60.0, link=RedisLink(url), prefix=prefix)
    cache.set_many({"k1": "accepted"})  # kept by the process meanwhile
    assert cache.get_many(["k1", "k2"]) == {"k1": "accepted"} and cache.backend != "redis"


def test_a_server_asking_for_a_password_that_the_connection_lacks_is_told_so():
    refused = redis.exceptions.AuthenticationError("Authentication required.")
    assert _why_unusable(refused, "redis://redis.internal:6379/0") == (
        "AuthenticationError: it asks for a password and careflow_redis gives none; set its password"
    )
    assert "refused careflow_redis's user and password" in _why_unusable(
        refused, "redis://:secret@redis.internal:6379/0"
    )
