"""Run the whole test suite as two pytest processes at once: the Airflow tier beside the rest.

The Airflow tier (``tests/e2e``, ``tests/chaos``, ``tests/airflow_runs``) spends most of its time
waiting: on a scheduler, a triggerer and an API server starting, on 20-second provider and Redis
outages. The rest is mostly CPU. On a 2-core VM the whole suite took 1,105 s in one process and
744 to 765 s as these two (the Airflow tier's time: the rest ended first). They share nothing that
could make one see the other: each pytest process has its own Airflow home, its own Postgres
database (``careflow_test_<random>``) and its own Redis key prefixes, and the Airflow tier's
clusters and chaos rounds use databases (random names) and Redis servers (free ports) of their own.

    python tests/suite.py [PYTEST_ARGS...]

Each process's output is printed whole when it ends (the first to end first); the exit status is
0 only when both passed. Each process leads a process group of its own. Ctrl+C or a SIGTERM to
the runner reaches both groups once as a SIGINT, as Ctrl+C reaches one pytest in a terminal: each
stops and its fixtures stop the Airflow processes and servers they started. A process still
running two minutes later is killed with its group. Should the runner itself be killed, each
pytest process gets a SIGINT (Linux's parent-death signal) and stops as above.
``make test`` runs this; ``make test-serial`` runs one pytest process.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from support import GroupedProcess

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_TIER = ("tests/e2e", "tests/chaos", "tests/airflow_runs")
#: How long an interrupted pytest process has to tear its fixtures down before its group is killed.
STOP_GRACE_S = 120.0


@dataclass
class Tier(GroupedProcess):
    """One pytest process, its output in a temporary file."""

    output: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile())  # noqa: SIM115
    started: float = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        # A SIGINT when the runner ends, however it ends: it stops as on Ctrl+C.
        self.launch(self.output, cwd=ROOT, parent_death_signal=signal.SIGINT)

    def report(self, status: int) -> None:
        """Print what the process printed, framed by its name, status and time."""
        elapsed = time.monotonic() - self.started
        verdict = "passed" if status == 0 else f"FAILED (pytest exit status {status})"
        command = " ".join(self.argv[2:])  # pytest and its arguments, after `python -m`
        sys.stdout.write(f"\n===== {self.name}: {command} =====\n")
        sys.stdout.flush()
        self.output.seek(0)
        while chunk := self.output.read(1 << 16):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        sys.stdout.write(f"===== {self.name} {verdict} in {elapsed:.0f} s =====\n")
        sys.stdout.flush()


def tiers(extra: list[str]) -> list[Tier]:
    """The Airflow tier and everything else under tests/ (the Airflow tier's paths ignored).

    ``extra`` (pytest's own arguments) goes to both.
    """
    pytest = [sys.executable, "-m", "pytest"]
    rest = ["tests", *(f"--ignore={path}" for path in AIRFLOW_TIER)]
    return [
        Tier("Airflow tier", [*pytest, *AIRFLOW_TIER, *extra]),
        Tier("the rest", [*pytest, *rest, *extra]),
    ]


class _Terminated(Exception):
    """SIGTERM reached the runner."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def run(extra: list[str]) -> int:
    # Handlers of the runner's own: the pytest processes then start with SIGINT's default (Python's
    # KeyboardInterrupt) even where the runner was started with SIGINT ignored (in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    running = tiers(extra)
    for tier in running:
        tier.start()
    names = " and ".join(tier.name for tier in running)
    print(f"running {names} side by side; each one's output follows when it ends", flush=True)
    finished: list[tuple[Tier, int]] = []  # each tier that ended, with its exit status
    pending = list(running)
    try:
        while pending:
            for tier in list(pending):
                assert tier.process is not None
                status = tier.process.poll()
                if status is not None:
                    pending.remove(tier)
                    finished.append((tier, status))
                    tier.report(status)
            time.sleep(0.5)
    except (KeyboardInterrupt, _Terminated) as stopped:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the teardown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("interrupted: stopping both pytest processes", flush=True)
        for tier in running:
            tier.signal(signal.SIGINT)
        for tier in running:
            tier.finish(STOP_GRACE_S)
        for tier in running:
            if tier in pending and tier.process is not None:
                tier.report(tier.process.returncode)
        return 128 + (signal.SIGINT if isinstance(stopped, KeyboardInterrupt) else signal.SIGTERM)
    failed = [(tier.name, status) for tier, status in finished if status != 0]
    if failed:
        print(f"===== FAILED: {' and '.join(name for name, _ in failed)} (output above) =====", flush=True)
    return failed[0][1] if failed else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
