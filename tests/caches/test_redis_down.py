"""Redis unreachable: validation falls back to the process, quickly; a DAG parse never asks Redis."""

from __future__ import annotations

import time

import pytest

from careflow.resilience.cache import TEMPLATES, VALIDATION, cache_stats
from careflow.snapshots import load_all
from careflow.workflow.validation import validate_workflow
from support import EXAMPLES, refuse_connections

from .conftest import another_process

RAW = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.json"))]


def _by_name() -> dict[str, dict]:
    return {s["name"]: s for s in cache_stats()}


def _validate_all(salt: str) -> float:
    started = time.perf_counter()
    for raw in RAW:  # a salt makes every input new: every call misses and stores
        assert validate_workflow(raw + salt.encode()).ok
    return time.perf_counter() - started


def test_validation_falls_back_to_the_process_cache(dead_redis):
    raw = RAW[0]
    first = validate_workflow(raw)
    second = validate_workflow(raw)
    assert first.to_dict() == second.to_dict() and second.workflow == first.workflow
    stats = _by_name()
    assert stats[VALIDATION]["backend"] == "local-fallback"
    assert (stats[VALIDATION]["hits"], stats[VALIDATION]["misses"]) == (1, 1)
    assert stats[TEMPLATES]["backend"] == "local-fallback"


def test_an_unreachable_redis_costs_a_few_milliseconds(dead_redis, monkeypatch):
    _validate_all(" ")  # warm the validator's imports and the template compile cache
    best_dead = min(_validate_all(f"{' ' * (i + 2)}") for i in range(3))
    monkeypatch.delenv("CAREFLOW_REDIS_URL")
    another_process()
    best_local = min(_validate_all(f"{' ' * (i + 10)}") for i in range(3))
    # Six validations, each a miss then a store in two caches: a refused connection is noticed
    # at once and Redis is not asked again for a few seconds.
    assert best_dead - best_local < 0.05, (best_dead, best_local)


def test_a_dag_parse_never_asks_redis(dead_redis, engine, workflows_dir, monkeypatch, tmp_path):
    from careflow.publishing import publish_paths

    sources = []
    for raw, path in zip(RAW, sorted(EXAMPLES.glob("*.json")), strict=True):
        sources.append(tmp_path / path.name)
        sources[-1].write_bytes(raw)
    publish_paths(sources, engine=engine, workflows_dir=workflows_dir)
    another_process()

    attempts = refuse_connections(monkeypatch)
    good, problems = load_all(workflows_dir)
    assert len(good) == len(RAW) and problems == []
    assert attempts == [], "loading snapshots opened a network connection"


@pytest.mark.parametrize("configured", [False, True])
def test_the_validate_command_does_not_load_airflow_to_find_redis(configured, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAREFLOW_REDIS", "AIRFLOW_CONN_"))}
    if configured:
        env["CAREFLOW_REDIS_URL"] = "redis://127.0.0.1:6390/0"
    code = (
        "import sys; from careflow.workflow.validation import validate_path; "
        f"r = validate_path({str(EXAMPLES / 'implant-aftercare.json')!r}); "
        "print(r.ok, 'airflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr
