"""``careflow demo``: what it prints to open the same setup in the Airflow UI works as printed.

Every action task runs in the ``careflow_messaging`` pool and sends through the ``careflow_messaging``
connection: the demo's Airflow DB must hold the pool, and the printed lines must set the connection
to the fake provider they start.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from careflow.airflow.operators.action import PROVIDER_POOL
from support import GroupedProcess, euc_kr_locale

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A short demo in a home whose path holds a space; its home and the lines printed for the UI."""
    home = tmp_path_factory.mktemp("demo") / "demo home"
    result = subprocess.run(
        [sys.executable, "-m", "careflow", "demo", "--home", str(home), "--days", "1", "--patients", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    _, ui = result.stdout.split("Open the same setup in the Airflow UI:\n", 1)
    return home, [line.strip() for line in ui.splitlines() if line.strip()]


@contextmanager
def _shell(*lines: str) -> Iterator[None]:
    """Run ``lines`` as a shell script (what pasting them into a terminal does) until the block ends."""
    shell = GroupedProcess("shell", ["bash", "-c", "\n".join([*lines, "wait"])])
    with open(os.devnull, "wb") as devnull:
        shell.launch(devnull)
    try:
        yield
    finally:
        shell.signal(signal.SIGTERM)
        shell.finish(10)


def _stats(base_url: str, token: str, timeout: float = 30) -> dict[str, int]:
    request = urllib.request.Request(
        f"{base_url}/v1/stats?brief=1", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError:
            raise
        except OSError:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_demo_airflow_db_has_the_pool_action_tasks_run_in(demo: tuple[Path, list[str]]) -> None:
    home, _ = demo
    with closing(sqlite3.connect(home / "airflow.db")) as db:
        rows = db.execute("select slots from slot_pool where pool = ?", (PROVIDER_POOL,)).fetchall()
    assert rows and rows[0][0] >= 1


def test_the_demo_leaves_its_dags_paused_so_todays_runs_keep_its_data(demo: tuple[Path, list[str]]) -> None:
    """The demo's data is from a simulated March: a scheduled run at today's time (which `airflow
    standalone` starts at once) deleted every execution that ended over 180 days before it, and
    with them every message the demo had sent."""
    home, _ = demo
    with closing(sqlite3.connect(home / "airflow.db")) as db:
        dags = db.execute("select dag_id, is_paused from dag").fetchall()
    assert dags and all(dag_id.startswith("careflow__") and paused for dag_id, paused in dags), dags


def test_the_printed_messaging_connection_reaches_the_printed_fake_provider(
    demo: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, lines = demo
    exports = [line for line in lines if line.startswith("export ")]
    providers = [line for line in lines if "fake-provider" in line]
    assert len(exports) == 1 and len(providers) == 1, lines
    assert lines[-1].split("#")[0].split()[-2:] == ["airflow", "standalone"]
    exported = dict(word.split("=", 1) for word in shlex.split(exports[0])[1:])
    assert exported["AIRFLOW_HOME"] == str(home)
    assert "AIRFLOW_CONN_CAREFLOW_MESSAGING" in exported, exports[0]

    from careflow import settings

    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", exported["AIRFLOW_CONN_CAREFLOW_MESSAGING"])
    messaging = settings.messaging_config()
    with _shell(exports[0], providers[0]):
        stats = _stats(messaging.base_url, messaging.token)
    assert stats["received"] == 0


def test_a_sigterm_stops_the_demo_and_the_fake_provider_it_started(tmp_path: Path) -> None:
    """Stopped while it simulates, the demo stops the fake provider it started on its port."""
    group = GroupedProcess(
        "demo", [sys.executable, "-m", "careflow", "demo", "--home", str(tmp_path / "home"), "--days", "3"]
    )
    group.launch(subprocess.PIPE, errors=subprocess.PIPE)
    demo = group.process
    assert demo is not None and demo.stdout is not None and demo.stderr is not None
    try:
        port = None
        for line in map(bytes.decode, demo.stdout):
            if line.startswith("==> starting the fake provider on 127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
            if line.startswith("==> simulating"):
                break
        assert port is not None, demo.stderr.read().decode()
        demo.send_signal(signal.SIGTERM)  # to the demo alone, as a supervisor stopping it would
        _, errors = demo.communicate(timeout=60)
        stderr = errors.decode()
        assert demo.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        assert "careflow demo: stopped (SIGTERM)" in stderr
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/stats", timeout=5)
    finally:
        group.finish(grace_s=0)  # a demo or fake provider a failure left behind: killed with the group


def test_the_demo_runs_under_a_locale_that_is_not_utf8(tmp_path: Path) -> None:
    """Airflow cannot start under ``ko_KR.EUC-KR`` (it reads its own files in the locale's
    encoding): the demo runs its processes in Python's UTF-8 mode there, and its lines for the UI
    say to."""
    env = euc_kr_locale(tmp_path)
    home = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "careflow", "demo", "--home", str(home), "--days", "1", "--patients", "20"],
        capture_output=True,
        env=env,
        timeout=300,
    )
    out, err = result.stdout.decode("euc-kr"), result.stderr.decode("euc-kr", "replace")
    assert result.returncode == 0, out[-2000:] + err[-3000:]
    assert "accepted twice 0" in out
    _, ui = out.split("Open the same setup in the Airflow UI:\n", 1)
    assert "PYTHONUTF8=1" in ui.splitlines()[0]


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--patients", "-5", "--patients must be between 1 and 100,000, got -5"),
        ("--patients", "0", "--patients must be between 1 and 100,000, got 0"),
        ("--days", "0", "--days must be between 1 and 366, got 0"),
        ("--days", "400", "--days must be between 1 and 366, got 400"),
    ],
)
def test_a_demo_size_it_cannot_run_is_refused_before_anything_is_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, said: str
) -> None:
    """Zero or fewer patients ran a demo that sent nothing and said nothing was wrong; zero days
    set everything up before the simulation refused."""
    from careflow.cli import main

    home = tmp_path / "demo"
    assert main(["demo", "--home", str(home), option, value]) == 2
    assert capsys.readouterr().err == f"careflow: {said}\n"
    assert not home.exists()
