"""CI's share of the chaos runner: two rounds of every engine fault, and nothing duplicated or lost."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from support import GroupedProcess

HERE = Path(__file__).resolve().parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUN_TIMEOUT_S = 420
#: How long the runner has to stop what it started once told to (seconds here; up to 25 s with ``--airflow``).
STOP_GRACE_S = 60

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _wait(chaos: GroupedProcess, timeout_s: float, err: IO[bytes]) -> int:
    assert chaos.process is not None
    try:
        return chaos.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
        pytest.fail(f"the chaos runner ran more than {timeout_s:.0f} s; its stderr ends:\n{tail}")


@pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("redis-server") is None,
    reason="needs Postgres' initdb and redis-server binaries for private instances",
)
def test_two_rounds_of_faults_leave_no_duplicate_no_loss_and_nothing_unresolved(tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    chaos = GroupedProcess(
        "chaos runner",
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
    )
    with (tmp_path / "stdout").open("w+b") as out, (tmp_path / "stderr").open("w+b") as err:
        # Its own group, so that it is stopped here and only here, and given the time to stop.
        chaos.launch(out, errors=err, parent_death_signal=signal.SIGTERM)
        try:
            returncode = _wait(chaos, RUN_TIMEOUT_S, err)
        finally:
            # Interrupted or out of time: its SIGTERM handler stops the private Postgres, Redis and
            # fake provider it started, which a SIGKILL would leave running.
            chaos.signal(signal.SIGTERM)
            chaos.finish(STOP_GRACE_S)
        out.seek(0)
        err.seek(0)
        stdout, stderr = (stream.read().decode(errors="replace") for stream in (out, err))
    assert returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"rounds": 2, "duplicates": 0, "lost": 0, "unknown_unresolved": 0}, stderr[-3000:]
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
