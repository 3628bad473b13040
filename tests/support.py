"""Helpers shared by the tests (importable as ``support``; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "include" / "workflows"


def airflow_env(home: Path, workflows: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow subprocess over ``home`` and a workflows dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(workflows),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


def copy_examples(target: Path) -> list[Path]:
    """Copy the examples into ``target`` (returns the copies)."""
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, target / p.name)) for p in sorted(EXAMPLES.glob("*.json"))]
