"""``python -m benchmarks [--quick] [--out FILE]``: every careflow benchmark, one table, one JSON.

- provider-bound: N due messages through the real DAG (trigger → action → wake tasks, each in its
  own process, against Postgres) with the fake provider answering in 20 ms, at provider
  concurrency C = 50 and the seed's 5; against the seed's engine on the same data and provider;
- engine overhead: the same with a provider that answers at once;
- parse: 1,000 generated 10-node workflows through careflow's factory, dag-factory and
  hand-written DAG files;
- memory: peak RSS of the action task at 10,000 and 100,000 due messages;
- queries per message: database round trips of the whole DAG run divided by messages sent.

Every figure is measured when the command runs. Needs Postgres and Redis on localhost
(``CAREFLOW_BENCH_PG``, ``CAREFLOW_BENCH_REDIS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

LATENCY_MS = 20.0


@dataclass(frozen=True)
class Plan:
    """How big each measurement is."""

    messages: int
    seed_messages_bound: int
    seed_messages_overhead: int
    memory_large: int
    memory_latency_ms: float
    workflows: int
    #: rounds of the compared measurements (careflow, the seed, the provider alone), taken in turn;
    #: each figure is the median round's
    rounds: int = 3


FULL = Plan(10_000, 1_000, 2_000, 100_000, LATENCY_MS, 1_000)
QUICK = Plan(10_000, 300, 1_000, 100_000, 0.0, 1_000)
#: The smallest configuration, for the smoke test: proves the pipeline runs, measures nothing useful.
SMOKE = Plan(200, 20, 50, 1_000, 0.0, 10, rounds=1)

T = TypeVar("T")


def median_of(runs: list[T], rate: Callable[[T], float]) -> T:
    """The run whose rate is the median of ``runs`` (the lower of the two middle ones for an even count).

    One run on a shared two-core machine can be a tenth faster or slower than the next, for
    careflow and the seed alike; the median of runs taken in turn is the figure a second reader
    of the same machine gets.
    """
    if not runs:
        raise ValueError("no runs to take the median of")
    return sorted(runs, key=rate)[(len(runs) - 1) // 2]


def log(message: str) -> None:
    """Progress on stderr (the table and the JSON go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "unknown",
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    mem_kb = (
        next(
            (
                int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            0,
        )
        if Path("/proc/meminfo").exists()
        else 0
    )
    from sqlalchemy import create_engine, text

    from benchmarks.harness import PG_SERVER

    engine = create_engine(f"{PG_SERVER}/postgres")
    with engine.connect() as conn:
        postgres = conn.execute(text("show server_version")).scalar()
    engine.dispose()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgres": postgres,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def send_benchmarks(plan: Plan) -> dict[str, Any]:
    """Provider-bound, engine overhead, memory and queries per message (one database, fresh state each)."""
    from benchmarks import harness, provider_ceiling, seed_engine, throughput
    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    figures: dict[str, Any] = {}
    with harness.bench_database() as db, harness.careflow_env(db.url) as env:
        engine = get_engine(db.url)
        upgrade(engine)
        for size in (plan.messages, plan.memory_large):
            seconds = harness.load_clinic(engine, size)
            harness.publish(env, size)
            log(f"loaded {size:,} patients, appointments and events in {seconds:.1f} s")
        small = harness.workflow_id_for(plan.messages)
        dsn = seed_engine.libpq_dsn(db.url)
        document = harness.workflow_document(plan.messages)

        def careflow_run(latency: float, concurrency: int, size: int) -> throughput.DagRun:
            harness.reset_careflow_state(engine, env.redis_prefix)
            with harness.fake_provider(latency) as fake:
                log(f"careflow: {size:,} messages, latency {latency:g} ms, concurrency {concurrency}")
                run = throughput.run_dag(env, fake, harness.workflow_id_for(size), concurrency, size)
            log(f"  action task {run.action.seconds:.2f} s: {size / run.action.seconds:,.0f} msg/s")
            return run

        def seed_run(latency: float, limit: int) -> seed_engine.SeedResult:
            with harness.fake_provider(latency) as fake:
                log(f"seed engine: {limit:,} messages, latency {latency:g} ms")
                result = seed_engine.run_seed(
                    dsn, document, fake.url, fake.token, harness.RUN_AT, limit, provider_pid=fake.process.pid
                )
            if result.messages != limit:
                raise SystemExit(f"the seed engine sent {result.messages} messages, expected {limit}")
            log(f"  {result.seconds:.2f} s: {result.msgs_per_s:,.1f} msg/s")
            return result

        def ceiling_run(latency: float) -> dict[str, Any]:
            with harness.fake_provider(latency) as fake:
                log(f"the provider alone: {plan.messages:,} messages, latency {latency:g} ms, concurrency 50")
                figures = provider_ceiling.measure(fake, plan.messages, 50)
            log(f"  {figures['msgs_per_s']:,.0f} msg/s (latency p50 {figures['latency_p50_ms']} ms)")
            return figures

        # The compared figures are taken in rounds, each round measuring every one of them in turn,
        # so that a slow minute of the machine falls on one round of each rather than on one side.
        rounds: dict[str, list[Any]] = {
            name: []
            for name in (
                "ceiling_bound",
                "bound_50",
                "seed_bound",
                "ceiling_overhead",
                "overhead",
                "seed_overhead",
            )
        }
        for number in range(1, plan.rounds + 1):
            if plan.rounds > 1:
                log(f"round {number} of {plan.rounds}")
            rounds["ceiling_bound"].append(ceiling_run(LATENCY_MS))
            rounds["bound_50"].append(careflow_run(LATENCY_MS, 50, plan.messages))
            rounds["seed_bound"].append(seed_run(LATENCY_MS, plan.seed_messages_bound))
            rounds["ceiling_overhead"].append(ceiling_run(0.0))
            rounds["overhead"].append(careflow_run(0.0, 50, plan.messages))
            rounds["seed_overhead"].append(seed_run(0.0, plan.seed_messages_overhead))
        for name in ("ceiling_bound", "ceiling_overhead"):
            figures[name] = median_of(rounds[name], lambda f: f["msgs_per_s"])
        for name in ("bound_50", "overhead"):
            figures[name] = median_of(rounds[name], lambda r: r.messages / r.action.seconds)
        for name in ("seed_bound", "seed_overhead"):
            figures[name] = median_of(rounds[name], lambda r: r.msgs_per_s)
        figures["rounds"] = rounds
        figures["bound_5"] = careflow_run(LATENCY_MS, 5, plan.messages)
        figures["memory_small"] = (
            figures["bound_50"] if plan.memory_latency_ms == LATENCY_MS else figures["overhead"]
        )
        figures["memory_large"] = careflow_run(plan.memory_latency_ms, 50, plan.memory_large)
        figures["workflow"] = small
    return figures


def parse_benchmark(plan: Plan) -> dict[str, Any]:
    """careflow / dag-factory / hand-written on the same generated workflows."""
    from benchmarks.parse_compare import compare

    log(f"parse: {plan.workflows:,} generated 10-node workflows, three ways")
    result = compare(plan.workflows)
    log(
        f"  careflow {result['careflow_s']:.2f} s, dag-factory {result['dag_factory_s']:.2f} s, "
        f"hand-written {result['handwritten_s']:.2f} s"
    )
    return result


def cpu_per_message(run: Any) -> dict[str, float | None]:
    """CPU milliseconds a message while the action task ran, process by process, and their total.

    ``task``: the action task's process (preparing, recording, every thread); ``send_process``:
    the process it forks for the provider client; ``database``: Postgres' backends; ``redis``: the
    Redis server (the breaker's state, the sent-keys cache); ``provider``: the fake provider.
    None where this machine could not tell (a remote database or Redis server).
    """
    detail = run.action.detail
    return _per_message(
        {
            "task": detail.get("cpu_s"),
            "send_process": detail.get("send_process_cpu_s"),
            "database": detail.get("database_cpu_s"),
            "redis": run.redis_cpu_s,
            "provider": run.provider_cpu_s,
        },
        run.messages,
    )


def seed_cpu_per_message(result: Any) -> dict[str, float | None]:
    """The seed loop's CPU milliseconds a message, process by process, and their total.

    ``seed_process``: the process running the loop; ``database``: its Postgres backend;
    ``provider``: the fake provider. They take turns (one request, one statement at a time), so
    their total over the loop's time a message is the share of one core the seed keeps busy.
    None where this machine could not tell (a remote database).
    """
    return _per_message(
        {"seed_process": result.cpu_s, "database": result.database_cpu_s, "provider": result.provider_cpu_s},
        result.messages,
    )


def _per_message(seconds: dict[str, float | None], messages: int) -> dict[str, float | None]:
    """Each process's CPU seconds as milliseconds a message, and their total when every one is known."""
    parts = {
        name: None if value is None else round(1000 * value / messages, 4) for name, value in seconds.items()
    }
    known = [value for value in parts.values() if value is not None]
    return {**parts, "total": round(sum(known), 4) if len(known) == len(parts) else None}


def cores_busy(msgs_per_s: float, cpu: dict[str, float | None]) -> float | None:
    """How many cores careflow's (or the seed's) processes kept busy on average: the rate times the CPU a message.

    Below the machine's cores, part of them waited (the task's thread and its statements take
    turns; the seed's processes wait for one another); None where the total CPU a message is
    unknown.
    """
    total = cpu.get("total")
    return None if total is None else round(msgs_per_s * total / 1000, 2)


def accepting_span(run: Any) -> dict[str, float | None]:
    """Where the action task's time went around its sending, from the provider's side.

    ``first_accepted_after_ms``: from the task's start to the first message the provider accepted
    (preparing the first batch, starting the send process, the provider's latency);
    ``ended_after_last_ms``: from the last accepted message to the task's end (recording what
    was still on the wire, stopping the send process); ``accepting_msgs_per_s``: the rate in
    between. None where the provider accepted nothing.
    """
    if run.accepting_s is None:
        return {"first_accepted_after_ms": None, "ended_after_last_ms": None, "accepting_msgs_per_s": None}
    return {
        "first_accepted_after_ms": round(1000 * run.first_accepted_after_s),
        "ended_after_last_ms": round(1000 * run.ended_after_last_s),
        "accepting_msgs_per_s": round((run.messages - 1) / run.accepting_s, 1)
        if run.accepting_s > 0
        else None,
    }


def round_rates(rounds: dict[str, list[Any]], careflow: str, seed: str, alone: str) -> dict[str, Any]:
    """Every round's rates, in the order they were taken, beside the medians the figures are."""

    def rates(values: list[float]) -> list[float]:
        return [round(value, 1) for value in values]

    return {
        "rounds": len(rounds[careflow]),
        "careflow_rounds_msgs_per_s": rates([r.messages / r.action.seconds for r in rounds[careflow]]),
        "seed_rounds_msgs_per_s": rates([r.msgs_per_s for r in rounds[seed]]),
        "provider_alone_rounds_msgs_per_s": rates([f["msgs_per_s"] for f in rounds[alone]]),
    }


def summarise(plan: Plan, sends: dict[str, Any], parse: dict[str, Any]) -> dict[str, Any]:
    """The JSON document (its keys are the contract of this command)."""
    bound, seed_bound = sends["bound_50"], sends["seed_bound"]
    overhead, seed_overhead = sends["overhead"], sends["seed_overhead"]
    careflow_bound = bound.messages / bound.action.seconds
    careflow_overhead = overhead.messages / overhead.action.seconds
    limit = 50 / (LATENCY_MS / 1000)
    small, large = sends["memory_small"].action.peak_rss_mb, sends["memory_large"].action.peak_rss_mb
    careflow_cpu, seed_cpu = cpu_per_message(overhead), seed_cpu_per_message(seed_overhead)
    return {
        "provider_bound": {
            "messages": bound.messages,
            "latency_ms": LATENCY_MS,
            "concurrency": 50,
            "careflow_msgs_per_s": round(careflow_bound, 1),
            "seed_msgs_per_s": round(seed_bound.msgs_per_s, 1),
            "limit_msgs_per_s": round(limit, 1),
            "limit_fraction": round(careflow_bound / limit, 3),
            "speedup_vs_seed": round(careflow_bound / seed_bound.msgs_per_s, 1),
            "provider_alone_msgs_per_s": sends["ceiling_bound"]["msgs_per_s"],
            "provider_alone_fraction": round(careflow_bound / sends["ceiling_bound"]["msgs_per_s"], 3),
            **round_rates(sends["rounds"], "bound_50", "seed_bound", "ceiling_bound"),
            **accepting_span(bound),
        },
        "engine_overhead": {
            "messages": overhead.messages,
            "careflow_msgs_per_s": round(careflow_overhead, 1),
            "seed_msgs_per_s": round(seed_overhead.msgs_per_s, 1),
            "speedup_vs_seed": round(careflow_overhead / seed_overhead.msgs_per_s, 1),
            "provider_alone_msgs_per_s": sends["ceiling_overhead"]["msgs_per_s"],
            **round_rates(sends["rounds"], "overhead", "seed_overhead", "ceiling_overhead"),
            "cpu_ms_per_message": careflow_cpu,
            "cores_busy": cores_busy(careflow_overhead, careflow_cpu),
            "seed_cpu_ms_per_message": seed_cpu,
            "seed_cores_busy": cores_busy(seed_overhead.msgs_per_s, seed_cpu),
            # what ten times the seed's rate leaves per message on this machine's cores
            "cpu_budget_ms_at_10x": round(1000 * (os.cpu_count() or 1) / (10 * seed_overhead.msgs_per_s), 4),
        },
        "parse": parse,
        "memory": {
            "rss_10k_mb": round(small, 1),
            "rss_100k_mb": round(large, 1),
            "ratio": round(large / small, 3),
            "send_process_10k_mb": round(sends["memory_small"].action.send_process_peak_rss_mb, 1),
            "send_process_100k_mb": round(sends["memory_large"].action.send_process_peak_rss_mb, 1),
        },
        "queries_per_message": round(bound.round_trips / bound.messages, 4),
    }


def table(plan: Plan, doc: dict[str, Any], sends: dict[str, Any], info: dict[str, Any]) -> str:
    """The figures as a readable table, with the details the JSON leaves out."""
    pb, eo, pa, me = doc["provider_bound"], doc["engine_overhead"], doc["parse"], doc["memory"]
    cpu, seed_cpu = eo["cpu_ms_per_message"], eo["seed_cpu_ms_per_message"]
    b5 = sends["bound_5"]
    b5_rate = b5.messages / b5.action.seconds
    b50 = sends["bound_50"]
    whole = sum(t.seconds for t in b50.tasks)
    statements = sum(int(t.detail["round_trip_detail"]["statements"]) for t in b50.tasks)
    rows = [
        ("provider-bound (latency 20 ms)", "", "", ""),
        (
            "  careflow, C = 50 (action task)",
            f"{pb['careflow_msgs_per_s']:,.0f} msg/s",
            f"{pb['limit_fraction']:.0%} of {pb['limit_msgs_per_s']:,.0f}",
            "target ≥ 80 %",
        ),
        (
            "  the provider alone (its client, no careflow work)",
            f"{pb['provider_alone_msgs_per_s']:,.0f} msg/s",
            f"careflow {pb['provider_alone_fraction']:.0%} of it; "
            f"latency p50 {sends['ceiling_bound']['latency_p50_ms']} ms",
            "",
        ),
        (
            "  careflow, from its first accepted message to its last",
            f"{pb['accepting_msgs_per_s'] or 0:,.0f} msg/s",
            f"the first {pb['first_accepted_after_ms']} ms after the task started; "
            f"the task ended {pb['ended_after_last_ms']} ms after the last",
            "",
        ),
        (
            "  careflow, C = 50 (whole DAG run)",
            f"{b50.messages / whole:,.0f} msg/s",
            f"enroll {b50.tasks[0].seconds:.1f} s + send {b50.action.seconds:.1f} s",
            "",
        ),
        (
            "  careflow, C = 5 (action task)",
            f"{b5_rate:,.0f} msg/s",
            f"{b5_rate / (5 / (LATENCY_MS / 1000)):.0%} of {5 / (LATENCY_MS / 1000):,.0f}",
            "",
        ),
        (
            f"  seed engine ({plan.seed_messages_bound:,} messages, sequential)",
            f"{pb['seed_msgs_per_s']:,.1f} msg/s",
            f"careflow ×{pb['speedup_vs_seed']:,.1f}",
            "target ≥ ×40",
        ),
        ("engine overhead (latency 0)", "", "", ""),
        ("  careflow, C = 50 (action task)", f"{eo['careflow_msgs_per_s']:,.0f} msg/s", "", ""),
        (
            "  the provider alone (its client, no careflow work)",
            f"{eo['provider_alone_msgs_per_s']:,.0f} msg/s",
            f"careflow {eo['careflow_msgs_per_s'] / eo['provider_alone_msgs_per_s']:.0%} of it",
            "",
        ),
        (
            f"  seed engine ({plan.seed_messages_overhead:,} messages)",
            f"{eo['seed_msgs_per_s']:,.1f} msg/s",
            f"careflow ×{eo['speedup_vs_seed']:,.1f}",
            "target ≥ ×10",
        ),
        (
            "  the seed's CPU a message (its processes in turn)",
            "?" if seed_cpu["total"] is None else f"{seed_cpu['total']:.3f} ms",
            "its process {seed_process} + Postgres {database} + fake provider {provider}".format(
                **{name: "?" if value is None else f"{value:.3f}" for name, value in seed_cpu.items()}
            )
            + ("" if eo["seed_cores_busy"] is None else f"; {eo['seed_cores_busy']:.2f} cores busy"),
            "",
        ),
        (
            "  careflow's CPU a message (all processes)",
            "?" if cpu["total"] is None else f"{cpu['total']:.3f} ms",
            "task {task} + send process {send_process} + Postgres {database} + Redis {redis} + fake provider {provider}".format(
                **{name: "?" if value is None else f"{value:.3f}" for name, value in cpu.items()}
            ),
            "",
        ),
        (
            "  cores kept busy (rate × CPU a message)",
            "?" if eo["cores_busy"] is None else f"{eo['cores_busy']:.2f}",
            f"of {info['nproc']}",
            "",
        ),
        (
            f"  CPU a message at ×10 the seed on {info['nproc']} cores",
            f"{eo['cpu_budget_ms_at_10x']:.3f} ms",
            ""
            if seed_cpu["total"] is None
            else f"{eo['cpu_budget_ms_at_10x'] / seed_cpu['total']:.2f} × the seed's",
            "",
        ),
        (f"parse ({pa['workflows']:,} workflows × 10 nodes)", "", "", ""),
        (
            "  careflow factory",
            f"{pa['careflow_s']:.2f} s",
            f"{pa['ratio']:.2f} × dag-factory",
            "target ≤ 0.5",
        ),
        ("  dag-factory 1.1.0 (YAML)", f"{pa['dag_factory_s']:.2f} s", "", ""),
        (
            "  hand-written DAG files",
            f"{pa['handwritten_s']:.2f} s",
            f"careflow {pa['careflow_s'] / pa['handwritten_s']:.2f} × hand-written",
            "target ≤ 2",
        ),
        ("memory: action task peak RSS", "", "", ""),
        (
            f"  {plan.messages:,} due messages",
            f"{me['rss_10k_mb']:,.0f} MB",
            f"its send process {me['send_process_10k_mb']:,.0f} MB",
            "",
        ),
        (
            f"  {plan.memory_large:,} due messages",
            f"{me['rss_100k_mb']:,.0f} MB",
            f"× {me['ratio']:.2f}; its send process {me['send_process_100k_mb']:,.0f} MB",
            "target ≤ 1.3",
        ),
        (
            "database round trips per message",
            f"{doc['queries_per_message']:.4f}",
            f"1 per {1 / doc['queries_per_message']:,.0f}" if doc["queries_per_message"] else "",
            "target ≤ 0.05",
        ),
        ("  of which statements (no BEGIN, COMMIT, pre-ping)", f"{statements / b50.messages:.4f}", "", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            f"{cell:<{widths[i]}}" if i != 1 else f"{cell:>{widths[i]}}" for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    ]
    lines.append("")
    lines.append(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GB RAM, Python {info['python']}, "
        f"Postgres {info['postgres']}; load average at start {info['load_average_at_start']}"
    )
    lines.append(
        f"The seed engine is sequential: its rate is measured on {plan.seed_messages_bound:,} (provider-bound) "
        f"and {plan.seed_messages_overhead:,} (overhead) messages and holds for any count."
    )
    if pb["rounds"] > 1:

        def listed(rates: list[float]) -> str:
            return ", ".join(f"{rate:,.0f}" for rate in rates)

        lines.append(
            f"Each compared figure is the median of {pb['rounds']} rounds taken in turn (msg/s, in order): "
            f"latency 20 ms: careflow {listed(pb['careflow_rounds_msgs_per_s'])}; "
            f"seed {listed(pb['seed_rounds_msgs_per_s'])}; "
            f"the provider alone {listed(pb['provider_alone_rounds_msgs_per_s'])}. "
            f"Latency 0: careflow {listed(eo['careflow_rounds_msgs_per_s'])}; "
            f"seed {listed(eo['seed_rounds_msgs_per_s'])}; "
            f"the provider alone {listed(eo['provider_alone_rounds_msgs_per_s'])}."
        )
    return "\n".join(lines)


def compile_project() -> None:
    """Write the bytecode of careflow's own modules (``__pycache__``), as installing a package does.

    Every task runs in a fresh process. Where ``PYTHONDONTWRITEBYTECODE`` is set (some CI images
    and developer shells), no process ever writes it, and each task would compile careflow's
    modules from source again, some of them on the clock (those the action imports on its first
    batch): a cost of that setting, not of careflow. Installed packages have theirs already.
    """
    import compileall

    from benchmarks.harness import REPO

    for folder in ("plugins", "dags", "benchmarks"):
        compileall.compile_dir(REPO / folder, quiet=1)


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller seed samples and the 100k memory run at latency 0 (under 15 minutes)",
    )
    parser.add_argument("--out", metavar="FILE", help="write the JSON figures to FILE")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    started = time.perf_counter()
    # A private Airflow home: importing Airflow here (the parse benchmark) must not touch ~/airflow.
    home = tempfile.mkdtemp(prefix="careflow-bench-airflow-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from careflow.cli import stopping_on_sigterm

    # A SIGTERM ends the run as Ctrl+C does: the finally blocks drop its database and stop the fake
    # providers and task processes it started.
    with stopping_on_sigterm("python -m benchmarks"):
        try:
            info = machine()
            mode = "smoke" if args.smoke else "quick" if args.quick else "full"
            log(
                f"careflow benchmarks ({mode}) on {info['nproc']} CPUs, "
                f"load average {info['load_average_at_start']}"
            )
            compile_project()
            sends = send_benchmarks(plan)
            parse = parse_benchmark(plan)
            doc = summarise(plan, sends, parse)
        finally:
            subprocess.run(["rm", "-rf", home], check=False)
    print(table(plan, doc, sends, info))
    log(f"done in {time.perf_counter() - started:.0f} s")
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
