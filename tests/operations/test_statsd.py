"""A simulated run through Airflow's task runner sends careflow's metrics to a statsd listener over UDP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from careflow.providers.fake_server import FakeProviderServer
from careflow.store.db import get_engine
from careflow.store.migrations import upgrade
from support import careflow_env, publish_for_airflow

from .conftest import WORKFLOW, clinic_data, patient_strings

pytestmark = pytest.mark.airflow


class StatsdListener:
    """A UDP socket that keeps every statsd line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.packets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.packets += 1
            self.lines += packet.decode("utf-8", "replace").splitlines()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        """The lines received once there are ``count`` (or ``timeout`` has passed), and a moment more."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # a line too many would have come by now
        return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_a_simulated_run_sends_careflow_metrics_without_patient_data(
    airflow_home: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'careflow.db'}"
    engine = get_engine(url)
    upgrade(engine)
    data = clinic_data(engine)
    workflows = publish_for_airflow(WORKFLOW, engine, tmp_path)

    listener = StatsdListener()
    try:
        with FakeProviderServer() as provider:
            env = careflow_env(
                airflow_home,
                workflows,
                url,
                tmp_path,
                provider,
                AIRFLOW__METRICS__STATSD_ON="True",
                AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
                AIRFLOW__METRICS__STATSD_PORT=str(listener.port),
                AIRFLOW__METRICS__METRICS_ALLOW_LIST="careflow",
            )
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "careflow",
                    "simulate",
                    "--workflow",
                    WORKFLOW["id"],
                    "--start",
                    "2026-03-04",
                    "--days",
                    "1",
                    "--airflow-runner",
                    "--json",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
            sent = len(provider.messages())
        report = subprocess.run(
            [sys.executable, "-m", "careflow", "metrics", "--workflow", WORKFLOW["id"], "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        listener.close()
    assert run.returncode == 0, run.stderr[-3000:]
    assert sent > 0

    wf = WORKFLOW["id"]
    names = {line.split(":", 1)[0] for line in listener.lines}
    expected = {
        f"airflow.careflow.messages.sent.{wf}.notice.lms",
        f"airflow.careflow.messages.send_latency_ms.{wf}.notice.lms",
        f"airflow.careflow.messages.lateness_ms.{wf}.notice",
        f"airflow.careflow.executions.enrolled.{wf}",
        f"airflow.careflow.executions.completed.{wf}",
        "airflow.careflow.cache.hits.template_compile",
        "airflow.careflow.cache.misses.template_compile",
    }
    assert expected <= names, sorted(names)
    counted = sum(
        int(line.split(":", 1)[1].split("|")[0])
        for line in listener.lines
        if line.startswith(f"airflow.careflow.messages.sent.{wf}.") and line.endswith("|c")
    )
    assert counted == sent
    # the allow list (patterns matched anywhere in a name) keeps careflow's metrics and Airflow's
    # own metrics of careflow's DAGs, and drops the rest
    assert all("careflow" in n for n in names), sorted(n for n in names if "careflow" not in n)
    assert f"airflow.dag.careflow__{wf}.notice.duration" in names
    everything = "\n".join(listener.lines)
    leaks = [s for s in patient_strings(data) if s in everything]
    assert not leaks, f"patient data in metrics: {leaks[:3]}"

    # Airflow's task instances of the same run give the per-node task durations
    assert report.returncode == 0, report.stderr[-2000:]
    (item,) = json.loads(report.stdout)["workflows"]
    nodes = {n["node_id"]: n for n in item["nodes"]}
    assert nodes["notice"]["task_s"]["p95"] > 0
    assert nodes["notice"]["task_states"].get("success", 0) >= 1


def test_the_statsd_settings_in_the_docs_read_as_they_say_when_copied() -> None:
    """docs/metrics.md's `[metrics]` block, read as Airflow reads airflow.cfg (a `#` after a value is
    part of the value): the prefix is `airflow`, and no other value carries a comment either."""
    import configparser
    import re

    from airflow.configuration import AirflowConfigParser

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text(encoding="utf-8")
    block = re.search(r"```ini\n(\[metrics\]\n.*?)```", doc, re.S)
    assert block is not None, "docs/metrics.md has no [metrics] ini block"
    assert issubclass(AirflowConfigParser, configparser.ConfigParser)
    parser = configparser.ConfigParser()  # Airflow's parser keeps ConfigParser's inline-comment rule
    parser.read_string(block.group(1))
    values = dict(parser["metrics"])
    assert values["statsd_prefix"] == "airflow", values
    assert values["statsd_on"] == "True" and values["statsd_port"] == "8125", values
    assert not [k for k, v in values.items() if "#" in v], values


def test_without_metrics_a_batch_works_out_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two timers a message are worked out only where Airflow sends metrics somewhere."""
    from airflow.sdk._shared.observability.metrics import stats as backend
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

    from careflow.airflow import observability

    class Timed:
        def __init__(self) -> None:
            self.timers: list[tuple[str, float]] = []

        def incr(self, *args: object, **kwargs: object) -> None:
            pass

        def timing(self, stat: str, value: float, **kwargs: object) -> None:
            self.timers.append((stat, value))

    class Watched(list):
        read = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Watched.read += 1
            return super().__iter__()

    fields = {
        "workflow_id": "wf",
        "node_id": "a1",
        "channel": "sms",
        "count": 3,
        "latencies_ms": Watched([10.0, 20.0, 30.0]),
        "lateness_s": Watched([1.0, 2.0, 3.0]),
    }
    monkeypatch.setattr(backend, "_backend", NoStatsLogger())
    observability._record(Timed(), "messages_sent", fields)
    assert Watched.read == 0
    sent = Timed()
    monkeypatch.setattr(backend, "_backend", sent)
    observability._record(sent, "messages_sent", fields)
    assert Watched.read == 2
    assert sent.timers == [
        ("careflow.messages.send_latency_ms.wf.a1.sms", 10.0),
        ("careflow.messages.send_latency_ms.wf.a1.sms", 20.0),
        ("careflow.messages.send_latency_ms.wf.a1.sms", 30.0),
        ("careflow.messages.lateness_ms.wf.a1", 1000.0),
        ("careflow.messages.lateness_ms.wf.a1", 2000.0),
        ("careflow.messages.lateness_ms.wf.a1", 3000.0),
    ]


def _airflow_statsd_client(monkeypatch: pytest.MonkeyPatch, port: int, **lists: str) -> None:
    """Airflow's own statsd client, built as Airflow 3.3 builds it, as the metrics backend."""
    from airflow.sdk._shared.observability.metrics import stats as backend
    from airflow.sdk._shared.observability.metrics.statsd_logger import get_statsd_logger
    from statsd import StatsClient

    logger = get_statsd_logger(
        stats_class=StatsClient, host="127.0.0.1", port=port, prefix="airflow", **lists
    )
    monkeypatch.setattr(backend, "_backend", logger)


def _batch_sent(samples: int) -> dict[str, object]:
    return {
        "workflow_id": "wf",
        "node_id": "a1",
        "channel": "sms",
        "count": samples,
        "latencies_ms": [float(10 + i) for i in range(samples)],
        "lateness_s": [i / 1000 for i in range(samples)],
    }


def test_a_batchs_timers_reach_statsd_every_one_several_to_a_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two timers a message, each sample sent, in its order, packed into 512-byte packets rather
    than a packet each (Airflow's client is built with no packet size: a pipeline of it would not
    pack)."""
    from airflow.sdk.observability.stats import Stats

    from careflow.airflow import observability

    listener = StatsdListener()
    try:
        _airflow_statsd_client(monkeypatch, listener.port)
        observability._record(Stats, "messages_sent", _batch_sent(200))
        lines = listener.wait_for(401)
    finally:
        listener.close()
    assert lines[0] == "airflow.careflow.messages.sent.wf.a1.sms:200|c"
    latency = [
        line for line in lines if line.startswith("airflow.careflow.messages.send_latency_ms.wf.a1.sms:")
    ]
    lateness = [line for line in lines if line.startswith("airflow.careflow.messages.lateness_ms.wf.a1:")]
    assert latency == [
        f"airflow.careflow.messages.send_latency_ms.wf.a1.sms:{10 + i:.6f}|ms" for i in range(200)
    ]
    assert lateness == [f"airflow.careflow.messages.lateness_ms.wf.a1:{float(i):.6f}|ms" for i in range(200)]
    assert len(lines) == 401
    # the counter's packet, then about six 60-to-70-character lines to a packet of at most 512 bytes
    assert listener.packets <= 1 + 400 // 5, listener.packets


def test_a_batchs_timers_keep_to_airflows_allow_and_block_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent several to a packet, the timers still go through ``metrics_allow_list`` and
    ``metrics_block_list`` as Airflow's client would send them one by one."""
    from airflow.sdk.observability.stats import Stats

    from careflow.airflow import observability

    for lists, kept in (
        ({"metrics_allow_list": "careflow.messages.sent"}, {"sent"}),
        ({"metrics_block_list": "lateness"}, {"sent", "send_latency_ms"}),
    ):
        listener = StatsdListener()
        try:
            _airflow_statsd_client(monkeypatch, listener.port, **lists)
            observability._record(Stats, "messages_sent", _batch_sent(20))
            lines = listener.wait_for(1 + 20 * (len(kept) - 1))
        finally:
            listener.close()
        assert {line.split(".")[3] for line in lines} == kept, (lists, lines)
        assert len(lines) == 1 + 20 * (len(kept) - 1), (lists, lines)
