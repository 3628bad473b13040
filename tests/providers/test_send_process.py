"""The send process: the provider client in a forked child, over real HTTP to the fake provider."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from careflow.providers.client import LeaseDeadline, Outcome, ProviderClient
from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.send_process import SendProcess, available
from careflow.resilience import BreakerConfig, CircuitBreaker
from careflow.resilience.backends.memory_backend import MemoryBackend
from careflow.resilience.backends.sqlite_backend import EmbeddedBackend

from .conftest import make_message

pytestmark = pytest.mark.skipif(not available(), reason="the send process needs os.fork")


def client_for(fake: FakeProviderServer, **kwargs: object) -> ProviderClient:
    return ProviderClient(fake.url, fake.token, **kwargs)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def test_batches_sent_side_by_side_each_message_once_within_the_concurrency(fake) -> None:
    fake.configure(latency_ms=20)
    batches = [[make_message(f"{b}-{i}") for i in range(60)] for b in range(4)]
    with SendProcess.start(client_for(fake, max_concurrency=8)) as sender:
        assert sender.pid != os.getpid()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(sender.send_batch, batches))

    for batch, results in zip(batches, answers, strict=True):
        assert [r.idempotency_key for r in results] == [m.idempotency_key for m in batch]
        assert all(r.outcome is Outcome.ACCEPTED and r.provider_id for r in results)
    stats = fake.stats()
    assert (stats["accepted"], stats["accepted_twice"]) == (240, 0)
    # four batches in the child at once still share one bound of 8 requests in flight
    assert 1 < stats["max_in_flight"] <= 8
    assert not _alive(sender.pid)


def test_lookups_answer_from_the_child(fake) -> None:
    client = client_for(fake)
    [sent] = client.send_batch([make_message(1)])
    with SendProcess.start(client) as sender:
        found = sender.lookup_many(["wf1:a1:ex1", "wf1:a1:ex2"])
    assert found["wf1:a1:ex1"] is not None and found["wf1:a1:ex1"].provider_id == sent.provider_id
    assert found["wf1:a1:ex2"] is None


def test_a_child_killed_mid_batch_leaves_its_batch_unknown_and_sends_nothing_more(fake) -> None:
    fake.configure(latency_ms=300)
    batch = [make_message(i) for i in range(20)]
    with SendProcess.start(client_for(fake, max_concurrency=4)) as sender:
        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(results=sender.send_batch(batch)))
        thread.start()
        deadline = time.monotonic() + 10
        while fake.stats()["received"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(sender.pid, signal.SIGKILL)
        thread.join(10)
        later = sender.send_batch([make_message(99)])
        lookups = sender.lookup_many(["wf1:a1:ex1"])

    # the requests on the wire may have reached the provider: unknown, looked up by the next attempt
    assert [r.outcome for r in box["results"]] == [Outcome.UNKNOWN] * 20
    assert {r.error_code for r in box["results"]} == {"send_process_lost"}
    assert all(r.request_sent for r in box["results"])
    # after it died: never sent (pending for the next attempt), and a lookup proves nothing
    assert later[0].outcome is Outcome.NOT_SENT and not later[0].request_sent
    assert lookups["wf1:a1:ex1"] is not None and lookups["wf1:a1:ex1"].outcome is Outcome.UNKNOWN
    assert fake.stats()["accepted"] < 20


def _gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaped yet): a grandchild cannot be waited for."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def _task_process(url: str, token: str, pids) -> None:  # type: ignore[no-untyped-def]
    sender = SendProcess.start(ProviderClient(url, token, max_concurrency=2))
    pids.put(sender.pid)
    sender.send_batch([make_message(i) for i in range(50)])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_child_stops_when_the_task_process_is_killed(fake) -> None:
    fake.configure(latency_ms=200)
    ctx = multiprocessing.get_context("fork")
    pids = ctx.Queue()
    task = ctx.Process(target=_task_process, args=(fake.url, fake.token, pids))
    task.start()
    child = pids.get(timeout=10)
    deadline = time.monotonic() + 10
    while fake.stats()["received"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(task.pid, signal.SIGKILL)  # a worker killed mid-batch
    task.join(10)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)
    # it stopped instead of finishing the batch (50 messages, 2 at a time, 200 ms each: 5 s)
    assert fake.stats()["received"] < 50


def test_the_childs_log_lines_reach_the_task_log(fake, caplog) -> None:
    caplog.set_level(logging.INFO, logger="careflow.providers")
    with SendProcess.start(client_for(fake)) as sender:
        sender.send_batch([make_message(i) for i in range(3)])
    lines = [r for r in caplog.records if r.name == "careflow.providers" and "batch of 3" in r.getMessage()]
    assert lines and lines[0].process != os.getpid()


def test_the_breaker_in_the_child_is_the_one_every_worker_shares(fake, tmp_path: Path) -> None:
    from careflow.resilience import events

    heard: list[tuple[str, dict]] = []
    stop_listening = events.subscribe(lambda event, **fields: heard.append((event, fields)))
    fake.configure(error_rate=1.0)
    config = BreakerConfig(consecutive_failures=3, open_seconds=30, max_open_seconds=60)
    breaker = CircuitBreaker("child:sms", config, backend=EmbeddedBackend(tmp_path / "breakers.db"))
    with SendProcess.start(client_for(fake, max_concurrency=1), breaker.gate()) as sender:
        results = sender.send_batch([make_message(i) for i in range(10)])

    outcomes = [r.outcome for r in results]
    assert outcomes[:3] == [Outcome.TRANSIENT] * 3
    assert set(outcomes[3:]) == {Outcome.NOT_SENT}
    assert {r.error_code for r in results[3:]} == {"breaker_open"}
    assert fake.stats()["received"] == 3
    # the task process reads the state the child left in the shared backend
    snapshot = breaker.snapshot()
    assert snapshot.state == "open" and snapshot.next_probe_at and snapshot.next_probe_at > time.time()
    # its transition reached this process's listeners (alerts, metrics), from the child
    stop_listening()
    opened = [f for e, f in heard if e == "breaker_transition" and f["to_state"] == "open"]
    assert len(opened) == 1 and opened[0]["breaker"] == "child:sms"


def test_the_gate_is_the_one_the_child_was_started_with(fake) -> None:
    with SendProcess.start(client_for(fake)) as sender:
        with pytest.raises(ValueError, match="gate it was started with"):
            sender.send_batch([make_message(1)], gate=object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="on_result"):
            sender.send_batch([make_message(1)], on_result=print)
        assert sender.send_batch([]) == []
    assert fake.stats()["received"] == 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
def test_the_child_lets_go_of_the_sockets_it_inherited(fake) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    listening = os.readlink(f"/proc/self/fd/{listener.fileno()}")  # "socket:[inode]"
    with SendProcess.start(client_for(fake)) as sender:
        assert sender.send_batch([make_message(1)])[0].delivered
        sockets = [
            os.readlink(f"/proc/{sender.pid}/fd/{fd}")
            for fd in map(int, os.listdir(f"/proc/{sender.pid}/fd"))
            if os.readlink(f"/proc/{sender.pid}/fd/{fd}").startswith("socket:")
        ]
        # The child's copy of this listening socket is gone: closing ours ends it for good.
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # what is left: the pipe to this process and the client's own connections, not the listener
    assert sockets and listening not in sockets


def test_a_child_dying_while_a_batch_is_handed_over_leaves_it_unknown() -> None:
    """The reader gives the batch back (the child is gone) before the hand-over fails with EPIPE."""
    import socket
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # a child that is gone at once
        os._exit(0)
    os.waitpid(pid, 0)

    class Client:
        name = "race"

    process = SendProcess(Client(), None, pid, Connection(ours.detach()))
    send = process._conn.send

    def send_once_given_back(obj):  # type: ignore[no-untyped-def]
        theirs.close()
        deadline = time.monotonic() + 5
        while process._lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return send(obj)

    process._conn.send = send_once_given_back  # type: ignore[method-assign]
    [result] = process.send_batch([make_message("race-1")])
    assert result.outcome is Outcome.UNKNOWN and result.error_code == "send_process_lost"
    process.close(timeout=1)


def test_the_childs_breaker_says_when_sends_may_go_again(fake) -> None:
    # A breaker of each process's own (as when Redis and the breaker file are both out of reach):
    # only the child's sees the sends.
    fake.configure(error_rate=1.0)
    config = BreakerConfig(consecutive_failures=3, open_seconds=30, max_open_seconds=60)
    breaker = CircuitBreaker("child-own:sms", config, backend=MemoryBackend(kind="local-fallback"))
    with SendProcess.start(client_for(fake, max_concurrency=3), breaker.gate()) as sender:
        assert sender.sends_resume_at() is None  # closed: sends may go now
        results = sender.send_batch([make_message(i) for i in range(3)])
        assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 3
        resumes = sender.sends_resume_at()
    assert resumes is not None and time.time() + 20 < resumes <= time.time() + 30
    assert breaker.snapshot().state == "closed"  # this process's copy never saw a send
    assert sender.sends_resume_at() is None  # a closed send process cannot say
    with SendProcess.start(client_for(fake)) as sender:
        assert sender.sends_resume_at() is None  # no breaker at all


def test_the_child_writes_no_request_past_the_lease_of_its_batch(fake) -> None:
    with SendProcess.start(client_for(fake)) as sender:
        results = sender.send_batch(
            [make_message(i) for i in range(5)], deadline=LeaseDeadline(time.time() - 1, sender.renewed)
        )
    assert {(r.outcome, r.error_code) for r in results} == {(Outcome.NOT_SENT, "lease_expired")}
    assert fake.stats()["received"] == 0


def test_a_renewal_in_the_task_process_reaches_the_child_while_it_sends(fake) -> None:
    fake.configure(latency_ms=200)
    with SendProcess.start(client_for(fake, max_concurrency=1)) as sender:
        # Written after the fork: the child reads it from the memory both processes share.
        sender.renewed.value = time.time() + 60
        batch = [make_message(i) for i in range(20)]
        box: dict = {}
        thread = threading.Thread(
            target=lambda: box.update(
                results=sender.send_batch(batch, deadline=LeaseDeadline(time.time() - 1, sender.renewed))
            )
        )
        thread.start()
        deadline = time.monotonic() + 10
        while fake.stats()["received"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.renewed.value = time.time() - 1  # the renewed lease runs out
        thread.join(10)

    results = box["results"]
    sent = [r for r in results if r.outcome is Outcome.ACCEPTED]
    # what was on the wire when the lease ran out finished; nothing after it was written
    assert 2 <= len(sent) < len(batch) and results[: len(sent)] == sent
    assert {(r.outcome, r.error_code) for r in results[len(sent) :]} == {(Outcome.NOT_SENT, "lease_expired")}
    assert fake.stats()["received"] == len(sent)


def test_a_deadline_follows_only_the_renewals_the_child_shares(fake) -> None:
    with SendProcess.start(client_for(fake)) as sender:
        foreign = LeaseDeadline(time.time() + 60, ctypes.c_double(time.time() + 60))
        with pytest.raises(ValueError, match="renewals it shares"):
            sender.send_batch([make_message(1)], deadline=foreign)
        assert sender.send_batch([make_message(1)], deadline=LeaseDeadline(time.time() + 60))[0].delivered
    assert fake.stats()["received"] == 1


def test_told_what_is_coming_the_child_opens_its_connections_before_the_batch_arrives() -> None:
    from support import ScriptedServer

    body = b'{"id": "p-1", "status": "accepted"}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with ScriptedServer(lambda n, _: answer) as server:
        client = ProviderClient(server.url, "t", max_concurrency=3)
        with SendProcess.start(client, warm=5) as sender:  # 5 coming, 3 at a time: 3 connections
            deadline = time.monotonic() + 10
            while server.connections < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.connections == 3 and server.requests == []
            results = sender.send_batch([make_message(i) for i in range(5)])
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5
        assert server.connections == 3 and len(server.requests) == 5


def _child_exiting_after(seconds: float) -> int:
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    return pid


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_reaping_waits_for_the_exit_itself_not_a_polling_interval(monkeypatch) -> None:
    """Where the kernel gives the child a pidfd, the child is collected as it exits: no sleep at all."""
    from careflow.providers import send_process

    pid = _child_exiting_after(0.05)
    sleeps: list[float] = []
    monkeypatch.setattr(send_process.time, "sleep", sleeps.append)
    send_process._reap(pid)
    assert not _alive(pid)  # collected: waitpid finds no such child
    assert sleeps == []


def test_reaping_without_a_pidfd_checks_often_at_first_then_less(monkeypatch) -> None:
    """Elsewhere the checks start half a millisecond apart and double, up to 10 ms."""
    from careflow.providers import send_process

    monkeypatch.delattr(send_process.os, "pidfd_open", raising=False)
    pid = _child_exiting_after(0.1)
    sleeps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(send_process.time, "sleep", sleep)
    send_process._reap(pid)
    assert not _alive(pid)
    assert sleeps[:6] == [0.0005, 0.001, 0.002, 0.004, 0.008, 0.01]
    assert max(sleeps) == 0.01


def test_reaping_gives_up_on_a_child_that_does_not_exit(monkeypatch) -> None:
    """A child still running at the timeout is left to the caller (which killed it first)."""
    from careflow.providers import send_process

    pid = _child_exiting_after(30)
    try:
        started = time.monotonic()
        send_process._reap(pid, timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 5
        assert _alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pidfd (Linux)")
def test_reaping_waits_on_a_pidfd_numbered_past_selects_limit(monkeypatch) -> None:
    """A task process with many files open: a pidfd above 1,024 is still waited on, not an error."""
    import fcntl
    import resource

    from careflow.providers import send_process

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("cannot open a file descriptor past 1,024 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    real_open = os.pidfd_open

    def high_pidfd(pid: int) -> int:
        fd = real_open(pid)
        try:
            return fcntl.fcntl(fd, fcntl.F_DUPFD, 1500)  # the lowest free number from 1,500 on
        finally:
            os.close(fd)

    monkeypatch.setattr(send_process.os, "pidfd_open", high_pidfd)
    pid = _child_exiting_after(0.05)
    sleeps: list[float] = []
    monkeypatch.setattr(send_process.time, "sleep", sleeps.append)
    try:
        send_process._reap(pid)
        assert not _alive(pid) and sleeps == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
