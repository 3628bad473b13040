"""The cache gauges and /api/cache count the compiled-workflow cache the process really uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from careflow.airflow import observability
from careflow.publishing import publish_paths
from careflow.resilience.cache import forget_caches
from careflow.snapshots import compile_cache_info, load_one
from careflow.store.db import get_engine
from careflow.store.migrations import upgrade
from support import EXAMPLES


class GaugeRecorder:
    """A statsd client that keeps the last value of each gauge."""

    def __init__(self) -> None:
        self.gauges: dict[str, float] = {}

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value


def test_compiled_workflow_hits_and_misses_are_those_of_the_process_compile_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.airflow.api import cache as cache_route

    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    forget_caches()
    engine = get_engine(f"sqlite:///{tmp_path / 'careflow.db'}")
    upgrade(engine)
    workflows_dir = tmp_path / "workflows"
    workflows_dir.mkdir()
    publish_paths([EXAMPLES / "implant-aftercare.json"], engine=engine, workflows_dir=workflows_dir)
    for _ in range(3):
        load_one(workflows_dir, "implant-aftercare")
    recorder = GaugeRecorder()
    monkeypatch.setattr(observability, "stats", lambda: recorder)
    try:
        observability.report_caches()
        body: dict[str, Any] = cache_route()
    finally:
        forget_caches()

    info = compile_cache_info()
    assert info["hits"] >= 2
    assert recorder.gauges["careflow.cache.hits.compiled_workflows"] == info["hits"]
    assert recorder.gauges["careflow.cache.misses.compiled_workflows"] == info["misses"]
    assert body["compiled_workflows"] == info
    assert "compiled_workflows" not in {c["name"] for c in body["caches"]}
