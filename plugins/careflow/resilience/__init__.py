"""Resilience shared by every worker: the provider circuit breaker and the caches.

- :mod:`~careflow.resilience.breaker`: ``get_breaker(name)`` -> :class:`CircuitBreaker`
  (``acquire`` / ``record`` / ``snapshot`` / ``reset`` / ``transitions`` / ``gate``).
- :mod:`~careflow.resilience.state_machine`: the breaker's rules as one pure function
  (mirrored in ``lua/breaker.lua`` for Redis).
- :mod:`~careflow.resilience.backends`: where breaker state lives (Redis, SQLite, memory).
- :mod:`~careflow.resilience.cache`: ``get_cache(name, ttl_seconds)`` and the standard caches.
- :mod:`~careflow.resilience.events`: hook for metrics and alerts (``subscribe``, ``emit``).

No Airflow import anywhere in this package.
"""

from careflow.resilience.breaker import (
    BreakerGate,
    BreakerSnapshot,
    CircuitBreaker,
    Permit,
    get_breaker,
    list_breakers,
)
from careflow.resilience.cache import (
    SENT_KEYS,
    SENT_KEYS_TTL,
    STANDARD_CACHES,
    TEMPLATES,
    TEMPLATES_TTL,
    VALIDATION,
    VALIDATION_TTL,
    Cache,
    cache_stats,
    get_cache,
)
from careflow.resilience.state_machine import BreakerConfig

__all__ = [
    "SENT_KEYS",
    "SENT_KEYS_TTL",
    "STANDARD_CACHES",
    "TEMPLATES",
    "TEMPLATES_TTL",
    "VALIDATION",
    "VALIDATION_TTL",
    "BreakerConfig",
    "BreakerGate",
    "BreakerSnapshot",
    "Cache",
    "CircuitBreaker",
    "Permit",
    "cache_stats",
    "get_breaker",
    "get_cache",
    "list_breakers",
]
