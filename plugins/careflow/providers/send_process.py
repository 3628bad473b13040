"""The provider client in a process of its own: an action task's send stage, off the task's lock.

An action task prepares and records batches in its own thread (database, facts, consent,
rendering) and sends them with :class:`ProviderClient`. In one process both stages share one
interpreter lock, and the client's event loop answers late whenever the preparing thread holds
it. :class:`SendProcess` forks the task process once, before the task starts any thread of its
own, and runs the client, its event loop and the breaker's gate in the child, on the other core:

- ``send_batch`` hands a batch to the child and waits for its results. Several batches may be
  in the child at once (``concurrent_batches``); they share one keep-alive connection pool and one
  ``max_concurrency`` bound, so the next batch fills the connections while the last answers of
  the one before it are still coming in;
- ``lookup_many`` asks the provider about keys, in the child too;
- a batch comes with the deadline of the claim it is sent under (``LeaseDeadline``), and
  :attr:`SendProcess.renewed`, a double in memory shared with the child, carries the deadline of
  the task's last renewal of its claims: the child writes no request once both have passed,
  and a renewal reaches it without a message on the pipe;
- the child's log records and the breaker's events (transitions, Redis lost) travel back over
  the same pipe; the task process logs them and hands the events to its alerts and metrics, as
  if they had happened there; the breaker's state is shared through its backend (Redis or the
  embedded SQLite file) as it is between workers, and the child flushes it before it exits;
- if the child dies, every batch it held comes back ``UNKNOWN`` (its requests may have left:
  the next attempt asks the provider) and later batches come back ``NOT_SENT`` (pending);
  nothing is lost and nothing is sent twice. If the task process dies, the child reads the end
  of its pipe, stops sending and exits.

``[careflow] send_process = false`` keeps the send stage in a thread of the task process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from careflow.providers.client import (
    LeaseDeadline,
    Message,
    Outcome,
    ProviderClient,
    SendGate,
    SendResult,
    _loop_factory,
)

log = logging.getLogger("careflow.providers")

#: Seconds ``close`` waits for the child to finish the batches it holds before it kills it.
CLOSE_TIMEOUT = 60.0


def available() -> bool:
    """Whether this platform can fork a send process (POSIX)."""
    return hasattr(os, "fork")


class SendProcessLost(RuntimeError):
    """The send process died or could not be reached."""


class SendProcess:
    """A forked child that sends for this process; same ``send_batch``/``lookup_many`` as the client.

    Use as a context manager (``with SendProcess.start(client, gate) as sender:``); ``close``
    waits for the batches in the child, then reaps it. Thread-safe: several threads may send at
    once; their batches take the child's connections in the order they arrived.
    """

    #: How many batches the action node keeps in the child while it prepares the next one.
    concurrent_batches = 2

    def __init__(
        self,
        client: ProviderClient,
        gate: SendGate | None,
        pid: int,
        conn: Connection,
        renewed: ctypes.c_double | None = None,
    ) -> None:
        self.client = client
        self.name = client.name
        self.gate = gate
        self.pid = pid
        #: The deadline (unix time) set by the last renewal of the claims in flight; the child reads
        #: it before every request of a batch whose ``LeaseDeadline`` follows it.
        self.renewed = renewed if renewed is not None else ctypes.c_double(0.0)
        self._conn = conn
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[Future[Any], str, list[Any]]] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"careflow-send-process-{pid}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"SendProcess(pid={self.pid}, provider={self.name!r})"

    @classmethod
    def start(cls, client: ProviderClient, gate: SendGate | None = None, *, warm: int = 0) -> SendProcess:
        """Fork the child; it sends with ``client`` and asks ``gate`` before every request.

        ``warm``: how many messages are about to come. The child starts opening that many
        connections (up to the client's ``max_concurrency``) and reaches the breaker's backend
        once, while the task still prepares them, instead of when the first requests go out.
        """
        if not available():
            raise SendProcessLost("this platform cannot fork a send process")
        # Made before the fork, so that parent and child map the same page: a renewal written
        # here is read there at the next request. One writer, and an aligned double: no lock.
        renewed = multiprocessing.RawValue(ctypes.c_double, 0.0)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                ours.close()
                _child_main(Connection(theirs.detach()), client, gate, renewed, warm)
                code = 0
            except BaseException:  # the parent reads the closed pipe and gives the batches back
                pass
            finally:
                os._exit(code)
        theirs.close()
        return cls(client, gate, pid, Connection(ours.detach()), renewed)

    def __enter__(self) -> SendProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the action stage calls ------------------------------------------------------------

    def send_batch(
        self,
        messages: Iterable[Message],
        *,
        gate: SendGate | None = None,
        on_result: Any = None,
        deadline: LeaseDeadline | None = None,
    ) -> list[SendResult]:
        """Send in the child; one result per message, in input order (see ``ProviderClient.send_many``).

        The child asks the gate it was started with; ``gate`` must be that one or None. The
        renewals a ``deadline`` follows must be :attr:`renewed` (or none): the child sees no other.
        """
        if on_result is not None:
            raise ValueError("a send process reports results per batch, not per message (on_result)")
        if gate is not None and gate is not self.gate:
            raise ValueError("a send process asks the gate it was started with")
        renewals = None if deadline is None else deadline.renewed
        if renewals is not None and renewals is not self.renewed:
            raise ValueError("a send process follows the renewals it shares with this process (renewed)")
        batch = list(messages)
        if not batch:
            return []
        wire = (batch, None if deadline is None else deadline.own, renewals is not None)
        try:
            results: list[SendResult] = self._call("send", batch, wire).result()
        except SendProcessLost as exc:
            return [_not_sent(m.idempotency_key, str(exc)) for m in batch]
        return results

    def lookup_many(self, keys: Iterable[str]) -> dict[str, SendResult | None]:
        """``ProviderClient.lookup_many`` in the child; a lost child leaves every key ``UNKNOWN``."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        try:
            found: dict[str, SendResult | None] = self._call("lookup", wanted).result()
        except SendProcessLost:
            return {k: _unknown(k, "lookup not answered: the send process is gone") for k in wanted}
        return found

    def sends_resume_at(self, timeout: float = 10.0) -> float | None:
        """When the child's breaker lets sends go again (``BreakerSnapshot.sends_resume_at``).

        The child's breaker state is the one every worker shares, except when Redis is out of reach:
        then each process keeps its own, and only the child's has seen this task's sends. None:
        sends may go now, there is no breaker, or the child cannot say.
        """
        try:
            return self._call("breaker", []).result(timeout)
        except (SendProcessLost, TimeoutError):
            return None

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Let the child finish what it holds, then reap it (kill it after ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError), self._send_lock:
            self._conn.send(None)
        self._reader.join(timeout)
        if self._reader.is_alive():
            log.warning(
                "careflow: the send process %s did not finish in %.0f s; killing it", self.pid, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reader.join(5)
        _reap(self.pid)
        with contextlib.suppress(OSError):
            self._conn.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, kind: str, payload: list[Any], wire: Any = None) -> Future[Any]:
        """Hand a request to the child: ``payload`` is kept to answer for it, ``wire`` (else it) is sent."""
        future: Future[Any] = Future()
        request = next(self._ids)
        # Checked and registered under the lock _give_back takes: a request is either refused
        # here or answered there, never both.
        with self._pending_lock:
            if self._lost is not None or self._closed:
                future.set_exception(SendProcessLost(self._lost or "the send process is closed"))
                return future
            self._pending[request] = (future, kind, payload)
        try:
            with self._send_lock:
                self._conn.send((request, kind, payload if wire is None else wire))
        except (OSError, ValueError) as exc:
            with self._pending_lock:
                mine = self._pending.pop(request, None) is not None
            if mine:  # else the reader saw the child go first and has answered it already
                future.set_exception(SendProcessLost(f"the send process is gone ({type(exc).__name__})"))
        return future

    def _read(self) -> None:
        """The parent's reader thread: answers to futures, the child's log records to the log."""
        try:
            while True:
                item = self._conn.recv()
                if item is None:  # the child is done
                    break
                request, kind, payload = item
                if kind == "log":
                    _relog(payload)
                    continue
                if kind == "event":
                    _reemit(*payload)
                    continue
                with self._pending_lock:
                    waiting = self._pending.pop(request, None)
                if waiting is not None:
                    waiting[0].set_result(payload)
        except (EOFError, OSError):
            pass
        except Exception:  # an answer we cannot read: treat the child as lost
            log.exception("careflow: unreadable answer from the send process %s", self.pid)
        finally:
            self._give_back()

    def _give_back(self) -> None:
        """The child is gone: every batch it held comes back UNKNOWN (it may have sent them)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            if self._lost is None:
                self._lost = "the send process ended" if self._closed else "the send process died"
        for future, kind, payload in pending.values():
            reason = "send_process_lost"
            if kind == "send":
                future.set_result([_unknown(m.idempotency_key, reason) for m in payload])
            elif kind == "lookup":
                future.set_result({k: _unknown(k, reason) for k in payload})
            else:
                future.set_result(None)
        if pending:
            log.error(
                "careflow: the send process %s ended with %d request(s) unanswered; their messages are "
                "left unknown and looked up at the provider by the next attempt",
                self.pid,
                len(pending),
            )


def _sends_resume_at(gate: SendGate | None) -> float | None:
    breaker = getattr(gate, "breaker", None)
    return None if breaker is None else breaker.snapshot().sends_resume_at()


def _unknown(key: str, code: str) -> SendResult:
    return SendResult(key, Outcome.UNKNOWN, error_code=code, error_message=code, request_sent=True)


def _not_sent(key: str, why: str) -> SendResult:
    return SendResult(key, Outcome.NOT_SENT, error_code="send_process_lost", error_message=why)


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Collect the child once it has exited, waiting up to ``timeout`` seconds for it.

    The child exits right after its last word, so the wait is its exit, not a polling interval:
    where Linux gives the process a file descriptor (``pidfd_open``), the wait ends as the child
    does; elsewhere the checks come closer together at first (from half a millisecond, doubling
    up to 10 ms). A child still running at ``timeout`` is left (the caller has killed it first).
    """
    deadline = time.monotonic() + timeout
    _wait_for_exit(pid, timeout)
    pause = 0.0005
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


def _wait_for_exit(pid: int, timeout: float) -> None:
    """Block until process ``pid`` exits or ``timeout`` passes, where the platform can tell (Linux)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return
    try:
        fd = opener(pid)
    except OSError:  # gone already, or a kernel without pidfds: the polling decides
        return
    try:
        # poll, not select: a task process with many files open may give a pidfd past select's
        # limit (1,024). Readable once the process has exited.
        waiter = select.poll()
        waiter.register(fd, select.POLLIN)
        waiter.poll(max(0, int(timeout * 1000)))
    except OSError:
        pass
    finally:
        os.close(fd)


def _reemit(event: str, fields: dict[str, Any]) -> None:
    from careflow.resilience import events

    events.emit(event, **fields)


def _relog(record: dict[str, Any]) -> None:
    logger = logging.getLogger(record.get("name") or "careflow.providers")
    if logger.isEnabledFor(record["levelno"]):
        logger.handle(logging.makeLogRecord(record))


# -- the child ----------------------------------------------------------------------------------


class _Feed:
    """A batch's messages as ``send_many`` takes them; ``dispatched`` is set once all were taken."""

    def __init__(
        self, messages: list[Message], dispatched: asyncio.Event, deadline: LeaseDeadline | None = None
    ) -> None:
        self.messages = messages
        self.dispatched = dispatched
        self.deadline = deadline

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Any:
        yield from self.messages
        self.dispatched.set()


class _PipeHandler(logging.Handler):
    """The child's only log handler: records go to the parent, which logs them."""

    def __init__(self, reply: Any) -> None:
        super().__init__()
        self._reply = reply

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._reply(
                0,
                "log",
                {
                    "name": record.name,
                    "levelno": record.levelno,
                    "levelname": record.levelname,
                    "msg": message,
                    "args": None,
                    "created": record.created,
                    "process": record.process,
                    "threadName": record.threadName,
                },
            )
        except Exception:  # a log line is never worth a lost batch
            pass


def _child_logging(reply: Any) -> None:
    # Handlers inherited from the task process write where it writes (files, the supervisor's
    # socket); two processes writing there at once could interleave lines. Send them home instead.
    handler = _PipeHandler(reply)
    root = logging.getLogger()
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            logger.handlers = []
            logger.propagate = logger is not root
    root.handlers = [handler]


def _child_events(reply: Any) -> None:
    # The breaker announces its transitions (and Redis falling back) as events; alerts and
    # metrics listen in the task process, which outlives this one: send the events home.
    from careflow.resilience import events

    def forward(event: str, **fields: Any) -> None:
        try:
            reply(0, "event", (event, fields))
        except Exception:  # an event is never worth a lost batch
            pass

    events._lock = threading.Lock()  # a lock held by another thread at the fork stays held here
    events._subscribers[:] = [forward]
    from careflow import settings

    settings._read_once_lock = threading.Lock()  # the same: a thread may be reading a connection


def _drop_inherited_sockets(keep: int) -> None:
    """Let go of the sockets the fork copied (database, Redis, the supervisor's, a server's).

    A copy held here keeps a connection open after the task process closes it: its peer would
    see no end of it until this process exits. Each one is pointed at /dev/null instead of being
    closed, so that its number is not handed to a new socket that an inherited object (a pool
    resetting itself after the fork) might close later.
    """
    import stat

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: keep the copies (they only delay a peer's end of file)
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            if fd in (keep, devnull) or fd < 3:
                continue
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:  # closed since the listing (the listing's own descriptor)
                continue
    finally:
        os.close(devnull)


def _warm_gate(gate: SendGate | None) -> None:
    """Reach the breaker's backend once (a read: its connection and script are ready for the first send).

    What goes wrong here goes wrong again at the first send, which deals with it.
    """
    with contextlib.suppress(Exception):
        _sends_resume_at(gate)


def _child_main(
    conn: Connection, client: ProviderClient, gate: SendGate | None, renewed: ctypes.c_double, warm: int = 0
) -> None:
    # The task process's handlers belong to Airflow's task runner. Airflow stops a task by
    # signalling its whole process group, this child included: the child leaves the stop to the
    # task, which stops the sending (no request is written after it) and waits for the requests on
    # the wire, so that their answers are recorded rather than left unknown. The child still ends
    # when the task does (its pipe closes) and with the SIGKILL that follows Airflow's SIGTERM.
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_IGN)
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    _drop_inherited_sockets(conn.fileno())
    send_lock = threading.Lock()

    def reply(request: int, kind: str, payload: Any) -> None:
        with send_lock:
            conn.send((request, kind, payload))

    _child_logging(reply)
    _child_events(reply)
    loop = _loop_factory()()
    asyncio.set_event_loop(loop)
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def read() -> None:
        # A thread of its own, so a large batch arriving never stalls the event loop.
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                item = EOFError  # the task process died: stop sending
            loop.call_soon_threadsafe(inbox.put_nowait, item)
            if item is None or item is EOFError:
                return

    async def handle(request: int, kind: str, payload: Any, turn: asyncio.Event | None = None) -> None:
        try:
            if kind == "send":
                if turn is not None:
                    await turn.wait()
                answer: Any = await client.send_many(payload, gate=gate, deadline=payload.deadline)
            elif kind == "lookup":
                answer = await client.lookup_many_async(payload)
            else:  # "breaker"
                answer = await asyncio.to_thread(_sends_resume_at, gate)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not an answer: what may have left is left to a lookup
            log.exception("careflow: the send process failed on a %s request", kind)
            if kind == "send":
                payload.dispatched.set()
                answer = [_unknown(m.idempotency_key, "send_process_error") for m in payload.messages]
            elif kind == "lookup":
                answer = {k: _unknown(k, "send_process_error") for k in payload}
            else:
                answer = None
        reply(request, kind, answer)

    async def main() -> None:
        async with client:
            tasks: set[asyncio.Task[None]] = set()
            if warm > 0:
                client.warm(warm)
                warming = asyncio.create_task(asyncio.to_thread(_warm_gate, gate))
                tasks.add(warming)
                warming.add_done_callback(tasks.discard)
            # Batches take the connections in the order they came: the next one starts once the
            # one before it has handed out its last message, so batches finish one after the
            # other (the task records the first while the next are still on the wire) and the
            # connections never wait between two batches.
            turn: asyncio.Event | None = None
            while True:
                item = await inbox.get()
                if item is EOFError:
                    for task in tasks:
                        task.cancel()
                    break
                if item is None:
                    break
                request, kind, payload = item
                if kind == "send":
                    messages, own, follows = payload
                    deadline = None if own is None else LeaseDeadline(own, renewed if follows else None)
                    feed_turn, turn = turn, asyncio.Event()
                    feed = _Feed(messages, turn, deadline)
                    task = asyncio.create_task(handle(request, kind, feed, feed_turn))
                else:
                    task = asyncio.create_task(handle(request, kind, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks, return_exceptions=True)

    threading.Thread(target=read, name="careflow-send-inbox", daemon=True).start()
    try:
        loop.run_until_complete(main())
    finally:
        from careflow.resilience.breaker import flush_all

        flush_all()
        with contextlib.suppress(OSError), send_lock:
            conn.send(None)
        loop.close()
