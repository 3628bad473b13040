"""Run the whole test suite as two pytest processes at once: the Airflow tier beside the rest.

The Airflow tier (``tests/e2e``, ``tests/chaos``, ``tests/airflow_runs``) spends most of its time
waiting: on a scheduler, a triggerer and an API server starting, on 20-second provider and Redis
outages. The rest is mostly CPU. Run one after the other they take about twice as long as run side
by side. They share nothing that could make one see the other: each pytest process has its own
Airflow home, its own Postgres database (``careflow_test_<random>``), its own Redis key prefixes,
and the Airflow tier starts private Postgres and Redis servers on free ports.

    python tests/suite.py [PYTEST_ARGS...]

Each process's output is printed whole when it ends (the first to end first); the exit status is
0 only when both passed. ``make test`` runs this; ``make test-serial`` runs one pytest process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_TIER = ("tests/e2e", "tests/chaos", "tests/airflow_runs")


@dataclass
class Tier:
    """One pytest process and the file its output goes to."""

    name: str
    paths: list[str]
    output: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile())  # noqa: SIM115
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self, extra: list[str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *self.paths, *extra],
            cwd=ROOT,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )

    def report(self, status: int) -> None:
        """Print what the process printed, framed by its name, status and time."""
        elapsed = time.monotonic() - self.started
        verdict = "passed" if status == 0 else f"FAILED (pytest exit status {status})"
        sys.stdout.write(f"\n===== {self.name}: {' '.join(self.paths)} =====\n")
        sys.stdout.flush()
        self.output.seek(0)
        while chunk := self.output.read(1 << 16):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        sys.stdout.write(f"===== {self.name} {verdict} in {elapsed:.0f} s =====\n")
        sys.stdout.flush()


def tiers() -> list[Tier]:
    """The Airflow tier and everything else under tests/ (the Airflow tier's paths ignored)."""
    rest = ["tests", *(f"--ignore={path}" for path in AIRFLOW_TIER)]
    return [Tier("Airflow tier", list(AIRFLOW_TIER)), Tier("the rest", rest)]


def run(extra: list[str]) -> int:
    running = tiers()
    for tier in running:
        tier.start(extra)
    names = " and ".join(tier.name for tier in running)
    print(f"running {names} side by side; each one's output follows when it ends", flush=True)
    finished: list[Tier] = []
    statuses: list[int] = []
    try:
        pending = list(running)
        while pending:
            for tier in list(pending):
                assert tier.process is not None
                status = tier.process.poll()
                if status is not None:
                    pending.remove(tier)
                    finished.append(tier)
                    statuses.append(status)
                    tier.report(status)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for tier in running:
            if tier.process is not None and tier.process.poll() is None:
                tier.process.send_signal(signal.SIGINT)
        for tier in running:
            if tier.process is not None:
                tier.process.wait()
        return 130
    failed = [tier.name for tier, status in zip(finished, statuses, strict=True) if status != 0]
    if failed:
        print(f"===== FAILED: {' and '.join(failed)} (output above) =====", flush=True)
    return next((status for status in statuses if status != 0), 0)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
