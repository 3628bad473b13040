"""A workflows dir with every example published, extra shapes, and two snapshots that do not load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import EXAMPLES

from .sample_workflows import (
    CORRUPT,
    branching_workflow,
    paused_workflow,
    publish_all,
    write_invalid_snapshot,
)


@pytest.fixture(scope="session")
def published_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every example, ``branching-cron`` and ``paused-copy`` published; plus a corrupt and an invalid snapshot."""
    root = tmp_path_factory.mktemp("factory")
    sources = root / "sources"
    sources.mkdir()
    for path in EXAMPLES.glob("*.json"):
        (sources / path.name).write_bytes(path.read_bytes())
    for doc in (branching_workflow(), paused_workflow()):
        (sources / f"{doc['id']}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    target = root / "workflows"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAREFLOW_REDIS_URL", "")  # embedded caches: publishing invalidates them in-process
        publish_all(target, sources)
    (target / f"{CORRUPT}.json").write_text('{"snapshot_format": 1, "workflow_id": ', encoding="utf-8")
    write_invalid_snapshot(target)
    yield target


@pytest.fixture(scope="module")
def fresh_airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home of its own, migrated: what `dags list` shows is this module's DAGs only."""
    import subprocess
    import sys

    from support import airflow_env

    home = tmp_path_factory.mktemp("fresh_airflow_home")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=airflow_env(home, home / "workflows"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return home
