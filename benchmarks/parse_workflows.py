"""How long the DAG factory takes to parse many published workflows.

Generates N random valid 10-node workflows (a trigger and a mix of delays, conditions, time windows
and actions) as snapshots in a temporary workflows dir, then, in a fresh interpreter:

- ``cold_s``: importing the factory (Airflow included) and the first ``build_dags(dir)``: what
  Airflow's DAG processor pays for the file;
- ``warm_s``: a second ``build_dags(dir)`` in the same process (compiled workflows cached);
- ``per_dag_ms``: the first ``build_dags`` divided by the number of DAGs (import excluded).

Run on purpose, not in the tests::

    python -m benchmarks.parse_workflows [--workflows N] [--seed S] [--json] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NODES_PER_WORKFLOW = 10

_RULES: list[dict[str, Any]] = [
    {"field": "patient.has_upcoming_appointment", "op": "eq", "value": False},
    {"field": "patient.age", "op": "gte", "value": 20},
    {"field": "appointment.type", "op": "in", "value": ["implant_surgery", "scaling"]},
    {"field": "patient.consent_marketing", "op": "eq", "value": True},
    {"field": "appointment.status", "op": "eq", "value": "completed"},
]
_TEMPLATES = [
    "{{ patient.name }}님, {{ clinic.name }}입니다. 내원해 주셔서 감사합니다.",
    "{{ patient.name }}님, {{ appointment.scheduled_at | date('%m월 %d일') }} 예약을 잊지 마세요."
    "{% if clinic.phone %} 문의: {{ clinic.phone }}{% endif %}",
    "{{ clinic.name }}: 치료 후 불편한 점이 있으시면 연락 주세요.",
]


def _node(rng: random.Random, index: int, kind: str) -> dict[str, Any]:
    node_id = f"n{index}"
    data: dict[str, Any]
    if kind == "delay":
        if rng.random() < 0.3:
            data = {
                "label": f"예약 하루 전 {index}",
                "until": "appointment.scheduled_at",
                "offset": {"amount": -1, "unit": "days"},
                "at": "10:00",
            }
        else:
            data = {
                "label": f"대기 {index}",
                "amount": rng.randint(1, 14),
                "unit": rng.choice(["hours", "days"]),
            }
    elif kind == "condition":
        data = {"label": f"조건 {index}", rng.choice(["all", "any"]): rng.sample(_RULES, rng.randint(1, 3))}
    elif kind == "timeWindow":
        start = rng.randint(7, 11)
        data = {
            "label": f"근무시간 {index}",
            "days": sorted(rng.sample(["mon", "tue", "wed", "thu", "fri", "sat"], rng.randint(3, 6))),
            "start": f"{start:02d}:00",
            "end": f"{start + rng.randint(4, 9):02d}:30",
        }
    else:
        channel = rng.choice(["kakao", "lms", "email"])
        data = {"label": f"알림 {index}", "channel": channel, "template": rng.choice(_TEMPLATES)}
        if channel == "email":
            data["subject"] = "{{ clinic.name }} 안내"
    return {"id": node_id, "type": kind, "data": data, "position": {"x": index * 120, "y": 0}}


def random_workflow(rng: random.Random, number: int) -> dict[str, Any]:
    """A valid workflow: a trigger, then nine nodes each hanging off an earlier non-action node."""
    kinds = ["delay", "condition", "timeWindow", "action"]
    nodes = [
        {
            "id": "n0",
            "type": "trigger",
            "data": {
                "label": "트리거",
                "event": rng.choice(["appointment_completed", "appointment_created", "appointment_no_show"]),
                "schedule": rng.choice(["@hourly", "@daily", "0 9 * * 1-5", "30 */2 * * *"]),
            },
        }
    ]
    edges: list[dict[str, Any]] = []
    for index in range(1, NODES_PER_WORKFLOW):
        # the last node is always an action, so that every workflow sends something
        kind = "action" if index == NODES_PER_WORKFLOW - 1 else rng.choice(kinds)
        nodes.append(_node(rng, index, kind))
        parents = [n for n in nodes[:-1] if n["type"] != "action"]
        parent = rng.choice(parents)
        edge: dict[str, Any] = {"id": f"e{index}", "source": parent["id"], "target": f"n{index}"}
        if parent["type"] == "condition":
            used = {e.get("sourceHandle") for e in edges if e["source"] == parent["id"]}
            edge["sourceHandle"] = "false" if "true" in used and "false" not in used else "true"
        edges.append(edge)
    return {
        "schema_version": "1.0",
        "id": f"bench-{number:05d}",
        "name": f"벤치마크 워크플로 {number}",
        "clinic_id": f"clinic-{number % 17:02d}",
        "status": "active",
        "timezone": "Asia/Seoul",
        "nodes": nodes,
        "edges": edges,
        "viewport": {"x": 0, "y": 0, "zoom": 1},
    }


def generate(workflows_dir: Path, count: int, seed: int, check: int = 5) -> None:
    """Write ``count`` snapshots into ``workflows_dir`` (the first ``check`` go through full validation)."""
    from careflow.compiler.hashing import canonical_document, content_hash
    from careflow.snapshots import Snapshot, snapshot_path, write_snapshot
    from careflow.workflow.models import Workflow
    from careflow.workflow.validation import validate_workflow

    rng = random.Random(seed)
    published = "2026-01-01T00:00:00+00:00"
    for number in range(count):
        doc = random_workflow(rng, number)
        if number < check:
            report = validate_workflow(doc, f"bench-{number}")
            if not report.ok:
                raise SystemExit(f"generated an invalid workflow: {[d.to_dict() for d in report.errors]}")
        workflow = Workflow.model_validate(doc)
        write_snapshot(
            workflows_dir,
            Snapshot(
                workflow_id=workflow.id,
                version=1,
                content_hash=content_hash(workflow),
                published_at=published,
                start_date=published,
                document=canonical_document(workflow),
                path=snapshot_path(workflows_dir, workflow.id),
            ),
        )


def measure(workflows_dir: Path, profile: str | None = None) -> dict[str, float]:
    """Import the factory, build every DAG twice; the timings (run in a fresh interpreter)."""
    started = time.perf_counter()
    from careflow.airflow.factory import build_dags

    imported = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    dags, problems = build_dags(workflows_dir)
    first = time.perf_counter()
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    dags_again, _ = build_dags(workflows_dir)
    second = time.perf_counter()
    if problems or len(dags_again) != len(dags):
        raise SystemExit(f"{len(problems)} snapshot(s) did not load: {problems[:3]}")
    return {
        "dags": len(dags),
        "import_s": imported - started,
        "first_build_s": first - imported,
        "warm_s": second - first,
    }


def run(count: int, seed: int, profile: str | None) -> dict[str, Any]:
    """Generate, measure in a subprocess, and summarise."""
    with tempfile.TemporaryDirectory(prefix="careflow-bench-") as tmp:
        workflows_dir = Path(tmp) / "workflows"
        started = time.perf_counter()
        generate(workflows_dir, count, seed)
        generated = time.perf_counter() - started
        cmd = [sys.executable, "-m", "benchmarks.parse_workflows", "--measure", str(workflows_dir)]
        if profile:
            cmd += ["--profile", profile]
        env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
        env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"measurement failed:\n{result.stderr[-3000:]}")
        timings = json.loads(result.stdout.strip().splitlines()[-1])
    if timings["dags"] != count:
        raise SystemExit(f"expected {count} DAGs, the factory built {timings['dags']}")
    return {
        "workflows": count,
        "cold_s": round(timings["import_s"] + timings["first_build_s"], 3),
        "warm_s": round(timings["warm_s"], 3),
        "per_dag_ms": round(timings["first_build_s"] / count * 1000, 3),
        "_import_s": timings["import_s"],
        "_first_build_s": timings["first_build_s"],
        "_generate_s": generated,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parse_workflows", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workflows", type=int, default=1000, help="how many workflows (default 1000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the first build_dags into FILE")
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.profile)))
        return 0
    figures = run(args.workflows, args.seed, args.profile)
    if args.json:
        print(json.dumps({k: v for k, v in figures.items() if not k.startswith("_")}))
        return 0
    rows = [
        ("workflows (10 nodes each)", f"{figures['workflows']:,}"),
        ("cold: import + first build_dags", f"{figures['cold_s']:.2f} s"),
        ("  of which importing the factory", f"{figures['_import_s']:.2f} s"),
        ("  of which building the DAGs", f"{figures['_first_build_s']:.2f} s"),
        ("warm: second build_dags", f"{figures['warm_s']:.2f} s"),
        ("per DAG (cold build)", f"{figures['per_dag_ms']:.2f} ms"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
