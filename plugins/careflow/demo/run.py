"""``careflow demo``: the whole product on the embedded default, in one command.

1. an Airflow home on SQLite (LocalExecutor) with careflow's pool, careflow's tables in SQLite, no Redis;
2. demo clinic data (a few hundred patients, a month of appointments and events);
3. the example workflows published;
4. the fake provider started;
5. two weeks simulated through the real DAGs, then a readable summary, and the shell lines that
   open the same setup in the Airflow UI.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import careflow

REPO = Path(careflow.__file__).resolve().parents[2]
DEMO_START = date(2026, 3, 2)  # a Monday: the data is generated around it, so the demo is reproducible
DEMO_TOKEN = "demo-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_env(home: Path, port: int) -> dict[str, str]:
    """The environment of the embedded default for this demo home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_CAREFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(home / "workflows"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "AIRFLOW_CONN_CAREFLOW_DB": json.dumps(
                {"conn_type": "sqlite", "host": str(home / "careflow.db")}
            ),
            "AIRFLOW_CONN_CAREFLOW_MESSAGING": messaging_connection(port),
            "CAREFLOW_DB_URL": f"sqlite:///{home / 'careflow.db'}",
            "CAREFLOW_REDIS_URL": "",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    env.update(_utf8_mode())
    return env


def _utf8_mode() -> dict[str, str]:
    """``PYTHONUTF8=1`` where the locale is not UTF-8 (``ko_KR.EUC-KR``), which Airflow cannot start
    under; nothing otherwise. The demo's processes then write UTF-8, which it reads as such."""
    from careflow.cli import non_utf8_locale

    return {"PYTHONUTF8": "1"} if non_utf8_locale() is not None else {}


def messaging_connection(port: int) -> str:
    """The ``careflow_messaging`` connection (JSON) to the demo's fake provider on ``port``."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": f"http://127.0.0.1:{port}",
            "password": DEMO_TOKEN,
            "extra": {"max_concurrency": 20, "timeout": 5},
        }
    )


def fake_provider_options(port: int) -> list[str]:
    """The fake provider's options in the demo: its token, a little latency, 3 % transient errors."""
    return [
        "--port",
        str(port),
        "--token",
        DEMO_TOKEN,
        "--latency-ms",
        "5",
        "--error-rate",
        "0.03",
        "--seed",
        "11",
    ]


def _step(text: str) -> float:
    print(f"==> {text}", flush=True)
    return time.monotonic()


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from careflow.cli import stopping_on_sigterm

    with stopping_on_sigterm("careflow demo"):
        return _run_demo(args)


#: The most demo patients: every row is generated in one process and loaded in one transaction.
MAX_DEMO_PATIENTS = 100_000


def _run_demo(args: argparse.Namespace) -> int:
    from careflow.exceptions import ConfigurationError
    from careflow.simulation import check_days

    # Before anything is set up: the simulated days are what `careflow simulate` takes.
    check_days(args.days)
    if not 1 <= args.patients <= MAX_DEMO_PATIENTS:
        raise ConfigurationError(
            f"--patients must be between 1 and {MAX_DEMO_PATIENTS:,}, got {args.patients}"
        )
    home = Path(args.home or Path.cwd() / ".careflow" / "demo").resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = demo_env(home, port)
    careflow_bin = [sys.executable, "-m", "careflow"]
    began = time.monotonic()

    _step(f"embedded default in {home} (Airflow on SQLite, LocalExecutor, no Redis)")
    migrated = home / ".airflow-db-migrated"  # written once the migration finished, not when it was cut short
    if not migrated.exists():
        _run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env, "airflow db migrate")
        migrated.touch()
    (home / "careflow.db").unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (home / f"careflow.db{suffix}").unlink(missing_ok=True)
    _run([*careflow_bin, "db", "upgrade"], env, "careflow db upgrade")
    # Every action task runs in the careflow_messaging pool: without it, Airflow's scheduler in the
    # UI setup printed at the end would never queue a send.
    _run([*careflow_bin, "setup"], env, "careflow setup")

    _step("loading demo clinic data")
    _run(
        [sys.executable, "-c", _LOAD_DATA.format(start=DEMO_START.isoformat(), patients=args.patients)],
        env,
        "load data",
    )

    _step("publishing the example workflows")
    for old in (home / "workflows").glob("*.json"):
        old.unlink()
    examples = sorted(str(p) for p in (REPO / "include" / "workflows").glob("*.json"))
    _run([*careflow_bin, "workflows", "publish", *examples], env, "publish", show=True)

    _step(f"starting the fake provider on 127.0.0.1:{port}")
    provider = subprocess.Popen(
        [sys.executable, "-m", "careflow.providers.fake_server", *fake_provider_options(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        _step(f"simulating {args.days} days from {DEMO_START} through the real DAGs")
        sim = subprocess.run(
            [
                *careflow_bin,
                "simulate",
                "--workflow",
                "all",
                "--start",
                DEMO_START.isoformat(),
                "--days",
                str(args.days),
                "--json",
            ],
            env=env,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
        )
        messages, summary = _parse_simulation(sim.stdout)
        if summary is None:
            print(sim.stderr[-3000:], file=sys.stderr)
            print("careflow demo: the simulation did not finish; see the error above", file=sys.stderr)
            return 1
        stats = _provider_stats(port)
    finally:
        provider.terminate()
        provider.wait(timeout=10)

    from careflow.simulation import print_summary

    print(f"\n== first messages (of {len(messages)}; times UTC, ids only) ==")
    for item in messages[:12]:
        reason = f" ({item['reason']})" if item.get("reason") else ""
        print(
            f"  {item['time'][:16]}  {item['workflow_id']:<24} {item['node_id']:<14} patient {item['patient_id']:<6} "
            f"{item['channel']:<6} {item['outcome']}{reason}"
        )
    print_summary(summary)
    if stats:
        print(
            f"\n== the fake provider received {stats.get('received')} request(s): accepted {stats.get('accepted')}, "
            f"transient errors {stats.get('errors')}, duplicates answered 409 {stats.get('duplicates')}, "
            f"accepted twice {stats.get('accepted_twice')} =="
        )
    paused = _pause_dags(home / "airflow.db")
    print(
        f"\nThe demo's {paused} DAG(s) are left paused in Airflow: their data is from a simulated "
        f"{DEMO_START:%B %Y}, and a run at today's time would delete what ended longer ago than each "
        "workflow's retention (180 days by default). Unpause one in the UI to run it at today's time."
    )
    print(f"\ndone in {time.monotonic() - began:.0f} s. Open the same setup in the Airflow UI:")
    for line in ui_commands(home, port):
        print(f"  {line}")
    return 0 if not summary.get("failed_runs") else 1


def _pause_dags(airflow_db: Path) -> int:
    """Pause careflow's DAGs in the demo's Airflow database (careflow's factory creates them
    unpaused, as a published workflow runs from its publish on); how many there are."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(airflow_db)) as db, db:
        return db.execute("UPDATE dag SET is_paused = 1 WHERE substr(dag_id, 1, 10) = 'careflow__'").rowcount


def ui_commands(home: Path, port: int) -> list[str]:
    """Shell lines that run the demo's setup in the Airflow UI: its environment (with the
    ``careflow_messaging`` connection), the fake provider that connection points at, in the
    background, and ``airflow standalone``."""
    bin_dir = Path(sys.executable).parent
    path = f"PATH={shlex.quote(str(bin_dir))}:$PATH"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(home / "workflows"),
        "CAREFLOW_DB_URL": f"sqlite:///{home / 'careflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_CAREFLOW_MESSAGING": messaging_connection(port),
        **_utf8_mode(),
    }
    provider = shlex.join(["careflow", "fake-provider", *fake_provider_options(port)])
    log = shlex.quote(str(home / "fake-provider.log"))
    return [
        "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()),
        f"{path} {provider} > {log} 2>&1 &   # the fake provider, in the background",
        f"{path} airflow standalone   # then http://localhost:8080",
    ]


_LOAD_DATA = """
from datetime import date
from careflow.demo.data import generate, load
from careflow.store.db import get_engine
counts = load(get_engine(), generate(date.fromisoformat("{start}"), patients={patients}))
print("   " + ", ".join(f"{{k}}: {{v}}" for k, v in counts.items()))
"""


def _run(cmd: list[str], env: dict[str, str], what: str, show: bool = True) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace")
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"careflow demo: {what} failed (exit {result.returncode})")
    if show and result.stdout.strip():
        for line in result.stdout.strip().splitlines()[-12:]:
            print(f"   {line}")


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"careflow demo: the fake provider did not start on port {port}")


def _parse_simulation(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    messages: list[dict[str, Any]] = []
    summary = None
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        if item.get("type") == "message":
            messages.append(item)
        elif item.get("type") == "summary":
            summary = item
    return messages, summary


def _provider_stats(port: int) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/stats?brief=1", headers={"Authorization": f"Bearer {DEMO_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except Exception:
        return {}
