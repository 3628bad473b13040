"""CI's share of the chaos runner: two rounds of every engine fault, and nothing duplicated or lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("redis-server") is None,
    reason="needs Postgres' initdb and redis-server binaries for private instances",
)
def test_two_rounds_of_faults_leave_no_duplicate_no_loss_and_nothing_unresolved(tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "run.py"),
            "--rounds",
            "2",
            "--kills",
            "3",
            "--patients",
            "30",
            "--table",
            str(table),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"rounds": 2, "duplicates": 0, "lost": 0, "unknown_unresolved": 0}, result.stderr[
        -3000:
    ]
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in table.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| fault")
    }
    faults = {
        "worker_kill",
        "postgres_restart",
        "redis_stop",
        "provider_down",
        "provider_slow",
        "provider_throttle",
    }
    assert faults <= set(rows)
    for fault in faults:
        scenarios, injected, sent = (int(rows[fault][i]) for i in range(3))
        assert scenarios == 2 and injected >= 1, (fault, rows[fault])
        assert sent == 2 * 30, (
            fault,
            rows[fault],
        )  # every due message delivered (2 more recorded as skipped)
