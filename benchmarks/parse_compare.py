"""careflow's DAG factory against dag-factory and hand-written DAG files, on the same workflows.

The same N generated 10-node workflows (``benchmarks.parse_workflows``' generator) are published
as snapshots, then turned into the same DAGs three ways, each in a fresh interpreter that has
already imported Airflow and careflow's operators (so only the building is timed):

- ``careflow``: ``build_dags(workflows_dir)``, what careflow's DAG file runs;
- ``dag_factory``: one YAML file per workflow (DAG arguments, timetable, default args,
  tasks with careflow's operator classes, dependencies, docs), loaded by ``dagfactory.load_yaml_dags``;
- ``handwritten``: one Python file per workflow that builds the DAG with literal arguments, the
  way a person would write it (the floor), executed as Airflow's DagBag executes DAG files.

The YAML and Python files are written beforehand from the compiled workflows (not timed); the
operators they use fetch the compiled workflow from the snapshot, as careflow's factory does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO
from benchmarks.parse_workflows import generate

WAKE_DISPLAY = "다음 대기 (next wait)"


def _dag_spec(compiled: Any, snap: Any) -> dict[str, Any]:
    """What careflow's factory passes to DAG() and to each operator, as plain data."""
    from careflow.airflow.factory import DAG_START_DATE, WAKE_TASK_ID, doc_md, node_doc
    from careflow.compiler.schedule import cron_of

    s = compiled.settings
    tasks = []
    for node_id in compiled.order:
        node = compiled.node(node_id)
        upstream = [n for n in compiled.order if node_id in compiled.node(n).targets()]
        tasks.append(
            {
                "task_id": node_id,
                "class": node.type,
                "display": node.display_name,
                "doc_md": node_doc(compiled, node_id),
                "upstream": upstream,
            }
        )
    leaves = [n for n in compiled.order if not compiled.node(n).successors]
    return {
        "dag_id": compiled.dag_id,
        "workflow_id": compiled.workflow_id,
        "display": f"{compiled.name} ({compiled.workflow_id})",
        "description": f"careflow workflow {compiled.workflow_id} v{compiled.version}",
        "cron": cron_of(compiled.schedule),
        "timezone": compiled.timezone,
        "start_date": DAG_START_DATE.isoformat(),
        "max_active_tasks": s.max_concurrency,
        "owner": s.owner,
        "retries": s.retries,
        "retry_delay_s": s.retry_delay_seconds,
        "execution_timeout_s": s.task_timeout_seconds,
        "doc_md": doc_md(compiled, snap),
        "tags": ["careflow", f"clinic:{compiled.clinic_id}"],
        "tasks": tasks,
        "wake": {"task_id": WAKE_TASK_ID, "upstream": leaves},
    }


def _yaml(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.yaml_operators import BY_NODE_TYPE

    ops = "benchmarks.yaml_operators"
    tasks = [
        {
            "task_id": t["task_id"],
            "operator": f"{ops}.{BY_NODE_TYPE[t['class']]}",
            "task_display_name": t["display"],
            "workflow_id": spec["workflow_id"],
            "node_id": t["task_id"],
            "doc_md": t["doc_md"],
            **({"dependencies": t["upstream"]} if t["upstream"] else {}),
        }
        for t in spec["tasks"]
    ]
    tasks.append(
        {
            "task_id": spec["wake"]["task_id"],
            "operator": f"{ops}.Wake",
            "task_display_name": WAKE_DISPLAY,
            "workflow_id": spec["workflow_id"],
            "dependencies": spec["wake"]["upstream"],
        }
    )

    def delta(seconds: int) -> dict[str, Any]:
        return {"__type__": "datetime.timedelta", "seconds": seconds}

    return {
        spec["dag_id"]: {
            "dag_display_name": spec["display"],
            "description": spec["description"],
            "schedule": {
                "__type__": "airflow.sdk.definitions.timetables.interval.CronDataIntervalTimetable",
                "expression": spec["cron"],
                "timezone": spec["timezone"],
            },
            "start_date": spec["start_date"],
            "catchup": False,
            "max_active_runs": 1,
            "max_active_tasks": spec["max_active_tasks"],
            "default_args": {
                "owner": spec["owner"],
                "retries": spec["retries"],
                "retry_delay": delta(spec["retry_delay_s"]),
                "retry_exponential_backoff": 2.0,
                "max_retry_delay": delta(1800),
                "execution_timeout": delta(spec["execution_timeout_s"]),
                "on_failure_callback": f"{ops}.on_task_failure",
                "on_success_callback": f"{ops}.on_task_success",
            },
            "on_failure_callback": "careflow.airflow.alerts.DAG_RUN_FAILED",
            "doc_md": spec["doc_md"],
            "tags": spec["tags"],
            "render_template_as_native_obj": False,
            "is_paused_upon_creation": False,
            "tasks": tasks,
        }
    }


def _python(spec: dict[str, Any]) -> str:
    from benchmarks.yaml_operators import BY_NODE_TYPE

    r = repr
    lines = [
        "from datetime import datetime, timedelta",
        "from airflow.sdk import DAG",
        "from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable",
        "from careflow.airflow import alerts",
        "from benchmarks.yaml_operators import Action, Condition, Delay, TimeWindow, Trigger, Wake",
        "",
        "with DAG(",
        f"    dag_id={r(spec['dag_id'])},",
        f"    dag_display_name={r(spec['display'])},",
        f"    description={r(spec['description'])},",
        f"    schedule=CronDataIntervalTimetable({r(spec['cron'])}, timezone={r(spec['timezone'])}),",
        f"    start_date=datetime.fromisoformat({r(spec['start_date'])}),",
        "    catchup=False,",
        "    max_active_runs=1,",
        f"    max_active_tasks={spec['max_active_tasks']},",
        "    default_args={",
        f"        'owner': {r(spec['owner'])}, 'retries': {spec['retries']},",
        f"        'retry_delay': timedelta(seconds={spec['retry_delay_s']}), 'retry_exponential_backoff': 2.0,",
        "        'max_retry_delay': timedelta(minutes=30),",
        f"        'execution_timeout': timedelta(seconds={spec['execution_timeout_s']}),",
        "        **alerts.task_callbacks(),",
        "    },",
        f"    doc_md={r(spec['doc_md'])},",
        f"    tags={r(spec['tags'])},",
        "    render_template_as_native_obj=False,",
        "    is_paused_upon_creation=False,",
        "    on_failure_callback=alerts.DAG_RUN_FAILED,",
        ") as dag:",
    ]
    wid = r(spec["workflow_id"])
    for t in spec["tasks"]:
        lines.append(
            f"    {t['task_id']} = {BY_NODE_TYPE[t['class']]}(task_id={r(t['task_id'])}, "
            f"task_display_name={r(t['display'])}, workflow_id={wid}, node_id={r(t['task_id'])}, "
            f"doc_md={r(t['doc_md'])})"
        )
    for t in spec["tasks"]:
        for up in t["upstream"]:
            lines.append(f"    {up} >> {t['task_id']}")
    wake = spec["wake"]
    lines.append(
        f"    wake = Wake(task_id={r(wake['task_id'])}, task_display_name={r(WAKE_DISPLAY)}, workflow_id={wid})"
    )
    lines.append(f"    [{', '.join(wake['upstream'])}] >> wake")
    return "\n".join(lines) + "\n"


def write_sources(workflows_dir: Path, yaml_dir: Path, python_dir: Path) -> None:
    """One YAML and one Python DAG file per published workflow (from the compiled snapshots)."""
    import yaml

    from careflow.snapshots import load_all

    pairs, problems = load_all(workflows_dir)
    if problems:
        raise SystemExit(f"{len(problems)} snapshot(s) did not load: {problems[:3]}")
    yaml_dir.mkdir(parents=True)
    python_dir.mkdir(parents=True)
    for snap, compiled in pairs:
        spec = _dag_spec(compiled, snap)
        name = compiled.workflow_id.replace("-", "_")
        (yaml_dir / f"{name}.yaml").write_text(
            yaml.safe_dump(_yaml(spec), allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        (python_dir / f"{name}.py").write_text(_python(spec), encoding="utf-8")


# ---------------------------------------------------------------- measuring (in a fresh interpreter)


def _measure(kind: str, workflows_dir: Path, sources: Path) -> dict[str, Any]:
    # Imported before the clock starts: the three ways share Airflow and careflow's operators.
    import airflow.sdk  # noqa: F401

    import benchmarks.yaml_operators  # noqa: F401
    from careflow.airflow.factory import build_dags

    if kind == "dag_factory":
        import dagfactory

    started = time.perf_counter()
    if kind == "careflow":
        dags, problems = build_dags(workflows_dir)
        if problems:
            raise SystemExit(f"careflow: {problems[:3]}")
        count = len(dags)
    elif kind == "dag_factory":
        found: dict[str, Any] = {}
        dagfactory.load_yaml_dags(globals_dict=found, dags_folder=str(sources))
        count = sum(1 for v in found.values() if type(v).__name__ == "DAG")
    else:
        count = 0
        for path in sorted(sources.glob("*.py")):
            # What Airflow's DagBag does with a DAG file: a module from the path, executed.
            spec = importlib.util.spec_from_file_location(f"careflow_handwritten_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            count += 1
    return {"kind": kind, "dags": count, "seconds": time.perf_counter() - started}


def _measure_in_child(kind: str, workflows_dir: Path, sources: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        {
            "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(workflows_dir),
            "AIRFLOW__CORE__DAGS_FOLDER": str(sources),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
            "DO_NOT_TRACK": "1",
            "SCARF_NO_ANALYTICS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        }
    )
    env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.parse_compare",
        "--measure",
        kind,
        str(workflows_dir),
        str(sources),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"parse benchmark ({kind}) failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def compare(count: int, seed: int = 7) -> dict[str, Any]:
    """Build the same ``count`` DAGs three ways; seconds for each and careflow / dag-factory."""
    with tempfile.TemporaryDirectory(prefix="careflow-bench-parse-") as tmp:
        root = Path(tmp)
        workflows_dir, yaml_dir, python_dir = root / "workflows", root / "yaml", root / "python"
        generate(workflows_dir, count, seed)
        write_sources(workflows_dir, yaml_dir, python_dir)
        runs = {
            "careflow": _measure_in_child("careflow", workflows_dir, root / "empty"),
            "dag_factory": _measure_in_child("dag_factory", workflows_dir, yaml_dir),
            "handwritten": _measure_in_child("handwritten", workflows_dir, python_dir),
        }
    for kind, run in runs.items():
        if run["dags"] != count:
            raise SystemExit(f"{kind} built {run['dags']} DAGs, expected {count}")
    careflow_s = runs["careflow"]["seconds"]
    return {
        "workflows": count,
        "careflow_s": round(careflow_s, 3),
        "dag_factory_s": round(runs["dag_factory"]["seconds"], 3),
        "handwritten_s": round(runs["handwritten"]["seconds"], 3),
        "ratio": round(careflow_s / runs["dag_factory"]["seconds"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.parse_compare [--workflows N]``: print the comparison as JSON."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parse_compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--measure", nargs=3, metavar=("KIND", "WORKFLOWS_DIR", "SOURCES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.measure:
        kind, workflows_dir, sources = args.measure
        print(json.dumps(_measure(kind, Path(workflows_dir), Path(sources))))
        return 0
    print(json.dumps(compare(args.workflows, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
