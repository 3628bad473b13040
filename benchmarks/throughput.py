"""Messages per second through careflow's real DAG, against Postgres and the fake provider.

One DAG run of a two-node workflow (appointment completed → KakaoTalk message) whose clinic has N
patients, each with one appointment completed two hours before the run: the trigger task enrolls
N executions, the action task sends N messages, the wake task looks for the next wait. Each task
runs in its own process (``benchmarks.run_task``), like an Airflow worker runs it; the fake
provider runs in another. The action task's wall time is the send throughput; its peak RSS is
read from the kernel's accounting of that one child (``os.wait4``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import REPO, RUN_AT, CareflowEnv, FakeProviderProcess, redis_server_pid
from benchmarks.run_task import cpu_spent, process_cpu_s


@dataclass
class TaskRun:
    """One task process: what it reported and what the kernel saw."""

    task: str
    seconds: float
    round_trips: int
    result: dict[str, Any]
    peak_rss_mb: float
    #: the send process the action task forks (0 for the other tasks)
    send_process_peak_rss_mb: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


def run_task(env: dict[str, str], workflow_id: str, task_id: str) -> TaskRun:
    """Run one task of the DAG in a child process; its peak RSS comes from ``wait4``."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_task",
        "--workflow",
        workflow_id,
        "--task",
        task_id,
        "--at",
        RUN_AT.isoformat(),
    ]
    process = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate()
    except BaseException:  # stopped (Ctrl+C, SIGTERM): the task must not run on against what is torn down
        process.kill()
        process.wait()
        raise
    # communicate() has reaped the child: RUSAGE_CHILDREN would mix every child of this process, so
    # the child reports its own ru_maxrss as well; both are the kernel's high-water mark.
    if process.returncode != 0:
        raise SystemExit(
            f"task {task_id} of {workflow_id} failed (exit {process.returncode}):\n{err[-4000:]}"
        )
    data = json.loads(out.strip().splitlines()[-1])
    return TaskRun(
        task=task_id,
        seconds=float(data["seconds"]),
        round_trips=int(data["round_trips"]),
        result=data["result"] or {},
        peak_rss_mb=int(data["peak_rss_kb"]) / 1024,
        send_process_peak_rss_mb=int(data.get("send_process_peak_rss_kb", 0)) / 1024,
        detail=data,
    )


@dataclass
class DagRun:
    """One DAG run, task by task."""

    messages: int
    tasks: list[TaskRun]
    #: CPU seconds the fake provider's process took while the action task ran (None: unreadable)
    provider_cpu_s: float | None = None
    #: CPU seconds the Redis server took meanwhile (the breaker's state, the sent-keys cache;
    #: None: a server on another machine)
    redis_cpu_s: float | None = None
    #: seconds from the action task's start to the provider's first accepted message, and from its
    #: last accepted message to the task's end (None when nothing was accepted)
    first_accepted_after_s: float | None = None
    ended_after_last_s: float | None = None
    #: seconds between the provider's first and last accepted message
    accepting_s: float | None = None

    @property
    def action(self) -> TaskRun:
        """The action task."""
        return next(t for t in self.tasks if t.task == "a1")

    @property
    def round_trips(self) -> int:
        """Database round trips of the whole run."""
        return sum(t.round_trips for t in self.tasks)


def run_dag(
    env: CareflowEnv, provider: FakeProviderProcess, workflow_id: str, concurrency: int, expected: int
) -> DagRun:
    """Trigger, action and wake tasks of one run, in order, each in its own process."""
    variables = env.variables(provider, concurrency)
    tasks = [run_task(variables, workflow_id, "t1")]
    redis_pid = redis_server_pid()

    def cpu_s() -> tuple[float | None, float | None]:
        return process_cpu_s(provider.process.pid), process_cpu_s(redis_pid) if redis_pid else None

    before = cpu_s()
    tasks.append(run_task(variables, workflow_id, "a1"))
    after = cpu_s()
    tasks.append(run_task(variables, workflow_id, "careflow_wake"))
    report = tasks[1].result
    provider_cpu, redis_cpu = (cpu_spent(a, b) for a, b in zip(before, after, strict=True))
    run = DagRun(
        messages=int(report.get("sent", 0)), tasks=tasks, provider_cpu_s=provider_cpu, redis_cpu_s=redis_cpu
    )
    if int(report.get("processed", 0)) != expected or report.get("pending"):
        raise SystemExit(f"expected {expected} due messages, the action task reports {report}")
    if run.messages != expected:
        # Counted as it is, not hidden: a message that failed (e.g. a render over its time budget on
        # a loaded machine) is recorded per patient by careflow and left out of the rate.
        print(
            f"warning: {expected - run.messages} of {expected} messages were not sent: {report['reasons']}",
            file=sys.stderr,
        )
    stats = provider.stats()
    accepted = stats["accepted"]
    first, last = stats.get("first_accepted_at"), stats.get("last_accepted_at")
    if first is not None and last is not None:
        action = run.action.detail
        run.first_accepted_after_s = first - float(action["execute_started_at"])
        run.ended_after_last_s = float(action["execute_ended_at"]) - last
        run.accepting_s = last - first
    if accepted != run.messages:
        raise SystemExit(
            f"the provider accepted {accepted} messages, the action task reports {run.messages} sent"
        )
    return run
