"""Airflow itself parses dags/careflow_workflows.py: every good DAG registered, no import error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import airflow_env

from .sample_workflows import CORRUPT, INVALID, sources_by_id

#: Airflow's own CLI commands, run in one interpreter (each fresh `airflow` process costs ~6 s).
AIRFLOW_COMMANDS = """
import sys
from airflow.cli import cli_parser

parser = cli_parser.get_parser()
for argv in (["dags", "reserialize"], ["dags", "list", "-o", "json"], ["dags", "list-import-errors", "-o", "json"]):
    print("=== " + " ".join(argv), flush=True)
    args = parser.parse_args(argv)
    args.func(args)
    print(flush=True)
"""


def _json_after(stdout: str, marker: str) -> list[dict]:
    block = stdout.split(f"=== {marker}\n", 1)[1].split("\n=== ", 1)[0]
    start = block.index("[")
    return json.loads(block[start : block.rindex("]") + 1])


@pytest.mark.airflow
@pytest.mark.slow
def test_airflow_registers_every_good_dag_without_import_errors(
    fresh_airflow_home: Path, published_dir: Path
) -> None:
    assert (published_dir / f"{CORRUPT}.json").exists() and (published_dir / f"{INVALID}.json").exists()
    result = subprocess.run(
        [sys.executable, "-c", AIRFLOW_COMMANDS],
        env=airflow_env(fresh_airflow_home, published_dir),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    listed = _json_after(result.stdout, "dags list -o json")
    errors = _json_after(result.stdout, "dags list-import-errors -o json")
    active = sorted(
        f"careflow__{wid}" for wid, doc in sources_by_id().items() if doc.get("status", "active") == "active"
    )
    assert sorted(d["dag_id"] for d in listed) == active
    assert all(d["fileloc"].endswith("dags/careflow_workflows.py") for d in listed)
    assert errors == []
    # the broken snapshots are reported in the DAG processor's log, naming the file
    assert f"{CORRUPT}.json" in result.stdout + result.stderr
