"""The action node: render, check consent and channel, dedupe, send, record; exactly once.

Per batch: (1) decide for each due execution (expired, skipped with a reason, template failure,
or a message to send) and *claim* the messages in the ledger, whose primary key is the
idempotency key, in one transaction; (2) send the claimed messages concurrently, outside any
transaction; (3) record every outcome. A claim is a lease: a worker killed mid-send leaves
``claimed`` rows that the next attempt reconciles by asking the provider for the key before it
sends again (and the provider dedupes on the same key). Unknown outcomes are never resent blindly.
No request is written once the lease of its batch has run out (a worker that stalled past it):
the message comes back not sent, pending for a later attempt if this worker still holds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from careflow.compiler import CompiledNode
from careflow.engine import steps as st
from careflow.engine.context import NodeReport, RunContext
from careflow.exceptions import ProviderConfigurationError, TemplateError
from careflow.store import tables
from careflow.workflow.timezones import zone, zone_or

if TYPE_CHECKING:
    from careflow.providers.client import LeaseDeadline, SendResult

log = logging.getLogger(__name__)

#: A claim older than this belongs to a worker that died: the next attempt reconciles it.
CLAIM_LEASE = timedelta(minutes=5)
m = tables.messages
#: Why a batch stopped before sending a message when the breaker (open, or half-open with its
#: probes out) or a provider's Retry-After held it back: the send waits, the attempt did not fail.
_HELD_BACK = ("breaker_open", "throttled")
#: Ledger states whose message an earlier attempt may have sent: a claim past its lease (the
#: worker died) or a request whose answer was lost. The provider is asked about them before
#: anything else happens to them, and a failed lookup leaves them as they are.
_SUSPECT = ("claimed", "unknown")
#: How often a worker waiting for its batches to be sent renews its claims on them, in seconds.
RENEW_EVERY = CLAIM_LEASE.total_seconds() / 5
#: The send stage stops writing a batch's requests this long before its lease runs out: every
#: worker judges leases by the database's clock (``RunContext.wall``), each knowing it to within a
#: round trip, and a request checked just in time may still open a connection (up to the client's
#: timeout, 10 s by default) before it is written. At most a tenth of the lease, so that a lease
#: shortened to a second (the chaos runner's) keeps most of its time.
LEASE_MARGIN = timedelta(seconds=30)
#: The first batch of an action is at most this big, and each next one twice the one before, up
#: to the workflow's ``batch_size``: the first messages leave once a hundred are prepared, not a
#: thousand, and the send stage has its next batch before it runs out.
FIRST_BATCH = 100
#: The last batch of an action (the one that found fewer due steps than it asked for) goes to the
#: send stage in parts, each half the size of the one before, down to about this size: the task
#: records a part while the next ones are on the wire, so that what it still records after the
#: provider's last answer is the smallest part, not the whole batch.
LAST_PART = 200


def idempotency_key(execution_id: str, node_id: str) -> str:
    """The ledger key and provider Idempotency-Key of one (execution, action node)."""
    return f"cf-{execution_id}-{node_id}"


def worker_name() -> str:
    """Who holds a claim (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def send_action(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Send the action's message to every execution due at this node (see ``_send_action``)."""
    with _frozen_heap():
        return _send_action(ctx, node)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the garbage collector's full passes off the objects that exist when the action starts,
    and its young passes off the batches in hand.

    A task process holds a couple of hundred thousand long-lived objects (Airflow, SQLAlchemy,
    the DAG); every batch allocates enough to trigger collections, and each full one walks them
    all (about a tenth of the preparing thread's time at 10,000 messages). ``gc.freeze`` sets
    them aside; objects made during the action are collected as usual. They are handed back at
    the end, unless something froze a heap before (an executor that forks), which is left as
    it was.

    The batches in hand (rows, facts, messages, results: tens of thousands of objects) live until
    they are recorded. A young collection every 700 allocations, Python's default, walks them
    and moves them on to be walked again, about 5 % of the task's CPU; every
    :data:`YOUNG_COLLECTION_EVERY` allocations, most have been recorded and freed by then. Only
    garbage in reference cycles waits for a collection, so memory is not held longer otherwise.
    The thresholds are restored when the last action running in the process ends.

    With young collections that rare, the garbage that reaches the oldest generation is left to
    full collections, which Python postpones until a quarter as many objects as the last one
    found there have been added since: SQLAlchemy's statements are reference cycles that hold the
    batch's values (the ids of ``column = ANY(…)``), and they would pile up there until then (the
    action task's peak RSS at 100,000 messages 177 MB against 150). A full collection every
    :data:`FULL_COLLECTION_EVERY` batches (:func:`_collect_old_garbage`) frees them: it walks
    only what the action made, since the heap before it is frozen.
    """
    thawed_before = gc.get_freeze_count() <= _INTERPRETER_FROZEN
    gc.freeze()
    _widen_young_generation()
    try:
        yield
    finally:
        _restore_young_generation()
        if thawed_before:
            gc.unfreeze()


#: Allocations between two young collections while an action runs (Python's default is 700).
YOUNG_COLLECTION_EVERY = 50_000

#: A full collection every this many batches while an action runs (see ``_frozen_heap``).
FULL_COLLECTION_EVERY = 10


def _collect_old_garbage(batches: int) -> None:
    """Collect every generation once every :data:`FULL_COLLECTION_EVERY` batches (unless the
    process switched its collector off)."""
    if batches % FULL_COLLECTION_EVERY == 0 and gc.isenabled():
        gc.collect()


_young_lock = threading.Lock()
_young_actions = 0
_young_saved: tuple[int, int, int] | None = None


def _widen_young_generation() -> None:
    global _young_actions, _young_saved
    with _young_lock:
        if _young_actions == 0:
            _young_saved = gc.get_threshold()
            if 0 < _young_saved[0] < YOUNG_COLLECTION_EVERY:  # 0: collections are off; left so
                gc.set_threshold(YOUNG_COLLECTION_EVERY, *_young_saved[1:])
        _young_actions += 1


def _restore_young_generation() -> None:
    global _young_actions, _young_saved
    with _young_lock:
        _young_actions -= 1
        if _young_actions == 0 and _young_saved is not None:
            gc.set_threshold(*_young_saved)
            _young_saved = None


_INTERPRETER_FROZEN = 10_000
"""The most permanent-generation objects a process holds before anyone freezes a heap.

Python 3.12 starts with a few hundred there (tuples of its deep-frozen modules); a heap frozen
before a fork holds Airflow as imported, hundreds of thousands of objects. Below this, nothing
was frozen on purpose, and the action unfreezes what it froze (the interpreter's own with it:
they are ordinary tuples, alive, that the collector then walks like any other).
"""


def _send_action(ctx: RunContext, node: CompiledNode) -> NodeReport:
    """Send the action's message to every execution due at this node.

    Batches go through a pipeline: while batches are on the wire (handed to the send stage: a
    process of its own where the provider client runs its event loop, or a thread of this one),
    the batch before them is recorded and this thread prepares the batch after them. With a send
    process on Postgres the recording is done by a thread of its own on a connection of its own
    (``_Recorder``), so that its statements and this thread's run at once; otherwise this thread
    does both. Batches are recorded in the order they were handed over, each on one thread, and
    every batch is recorded before the task ends, whatever happened to the batches around it.
    """
    report = NodeReport(node.id, node.type)
    after = 0
    batch = min(FIRST_BATCH, ctx.compiled.settings.batch_size)
    stage = _SendStage(ctx, node)
    in_flight: deque[_Handed] = deque()
    recorder: _Recorder | None = None
    #: the parts of the batch just claimed that nothing has taken charge of yet (recorder or queue)
    unhanded: list[dict[str, dict[str, Any]]] = []
    # On Postgres the send stage starts as soon as the first batch has due steps, so that the send
    # process opens its connections while the batch is prepared. SQLite's one writer would wait
    # for the fork too (the batch's transaction holds the database): there it starts once the
    # batch is claimed.
    early_start = stage.start if ctx.engine.dialect.name == "postgresql" else None
    try:
        more = True
        while more:
            prepared = _prepare_batch(ctx, node, after, batch, report, on_due=early_start)
            if prepared is None:
                more = False
            else:
                after, to_send, last_full, claimed_at = prepared
                unhanded = parts = _parts(to_send, last=not last_full)
                more = last_full
                batch = min(2 * batch, ctx.compiled.settings.batch_size)
                if parts and recorder is None and stage.start() and _records_aside(ctx, stage):
                    recorder = _Recorder(ctx, node, stage)
                if recorder is not None:
                    unhanded = []  # the recorder takes charge of them, those it cannot send included
                    recorder.hand(parts, claimed_at)
                else:
                    # those already queued when a stop comes are the queue's (see the filter below)
                    for part in parts:
                        in_flight.append((part, stage.submit(part, claimed_at)))
                    unhanded = []
                _collect_old_garbage(report.batches)  # once the batch is on its way
            # The oldest batch is recorded once the stage holds as many as it sends at once.
            while len(in_flight) > stage.depth and not _held_back(report):
                _record_oldest(ctx, node, stage, in_flight, report)
            if _held_back(report) or (recorder is not None and recorder.stopped()):
                # A configuration error, or the breaker or a long Retry-After held sends back:
                # the batches not prepared yet stay pending for the attempt after the wait, and
                # are not rendered, claimed and released for nothing in the meantime.
                break
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # Stopped from outside (its execution timeout, Airflow stopping it, an interrupt):
            # what is on the wire finishes, nothing more is written.
            stage.stop_sending()
        # Claimed parts the stop caught before they were handed over are queued as not sent, as
        # ``_Recorder.hand`` queues those still waiting: recorded, they release their claims.
        released = [part for part in unhanded if part and all(part is not queued for queued, _ in in_flight)]
        in_flight.extend((part, _done(_not_handed(part))) for part in released)
        try:
            if recorder is not None:
                _merge(report, recorder.close(raise_first=False))
        finally:
            _drain(ctx, node, in_flight, report, stage, raise_first=False)
        raise
    first: BaseException | None = None
    try:
        if recorder is not None:
            try:
                _merge(report, _close_recorder(recorder, stage))
            except BaseException as exc:
                _merge(report, recorder.report)
                first = exc
    finally:
        _drain(ctx, node, in_flight, report, stage, raise_first=first is None)
    if first is not None:
        raise first
    return report


def _close_recorder(recorder: _Recorder, stage: _SendStage) -> NodeReport:
    """Wait until the recorder has recorded every batch; its counts, or its first error.

    Stopped from outside while waiting (the execution timeout, Airflow's SIGTERM): the sending
    stops, the recorder is waited for again, now only as long as what is on the wire takes, and
    the stop goes on its way.
    """
    try:
        return recorder.close(raise_first=True)
    except Exception:
        raise
    except BaseException:
        stage.stop_sending()
        recorder.close(raise_first=False)
        raise


def _held_back(report: NodeReport) -> bool:
    """Whether recording a batch stopped the action: a configuration error, or sends held back."""
    return bool(report.stop_reason) or report.retry_at is not None


def _records_aside(ctx: RunContext, stage: _SendStage) -> bool:
    """Whether batches are recorded in a thread of their own, on a connection of their own.

    With a send process (which holds several batches) on Postgres: the statements that record
    one batch run while this thread prepares the next, on the other core. SQLite takes one writer
    at a time, and a send thread holds one batch: there is nothing to overlap.
    """
    return stage.depth > 1 and ctx.engine.dialect.name == "postgresql"


class _Recorder:
    """Records the batches handed to the send stage, in a thread of its own (two at the end).

    The preparing thread hands each claimed batch over (``hand``: it goes to the send stage and
    joins the queue) and goes on preparing the next, while this thread waits for the oldest
    (``_answered``) and records it on its own connection (``_record_answered``). At most
    ``stage.depth + 1`` batches are handed and not yet recorded, as when one thread did both.
    Every batch handed over is recorded, even after recording one before it failed (``close``
    raises the first error). The recorder's counts are its own (``report``), added to the
    action's at the end.

    Until then batches are recorded in the order they were handed over. Once nothing more is
    handed over (``close``), a second thread records too, on a connection of its own: it takes the
    batches whose sends have all been answered while this thread records the one before them, and
    half of each large batch this thread finds answered (``_share``), so that the last batches'
    statements run on two connections at once instead of one after the other: they are the task's
    last work. It takes only answered batches: the claims that must be renewed while a batch waits
    for its answers stay with this thread. Each batch (or half) is recorded once, in a transaction
    of its own; their rows are their own.
    """

    def __init__(self, ctx: RunContext, node: CompiledNode, stage: _SendStage) -> None:
        self.ctx, self.node, self.stage = ctx, node, stage
        self.report = NodeReport(node.id, node.type)
        #: batches handed over that no thread has taken yet
        self._queue: deque[_Handed] = deque()
        #: batches a thread is recording (taken off the queue)
        self._recording: list[_Handed] = []
        #: claimed parts waiting for room in the queue: their claims are renewed with the others'
        self._waiting: list[dict[str, dict[str, Any]]] = []
        #: guards the queue, the waiting parts, and a batch handed to the stage against a renewal
        #: of the claims (a batch handed over while claims are renewed would have its deadline
        #: moved unrenewed)
        self._cond = threading.Condition()
        self._closed = False
        #: recording threads not ended yet (``close`` waits for none)
        self._running = 1
        #: whether the second recording thread (``close`` starts it) runs, and its counts
        self._helping = False
        self._helper_report = NodeReport(node.id, node.type)
        #: set when a batch handed over is answered, or one is shared: the second thread looks again
        self._changed = threading.Event()
        self._merged = False
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"careflow-record-{node.id}", daemon=True)
        self._thread.start()

    def hand(self, parts: list[dict[str, dict[str, Any]]], claimed_at: datetime) -> None:
        """Send each of ``parts`` (claimed at ``claimed_at``) and queue it for recording, as room comes.

        While a part waits for room, its claims are renewed with those of the batches queued
        before it: a renewal moves the stage's deadline, which every batch handed after it may
        use, so it must have covered the claims of every batch claimed by then. A part whose
        claims were not renewed keeps the deadline of its own claim.

        If the wait ends in an exception (the task's execution timeout), the parts still
        waiting are queued as not sent: the recorder releases their claims (pending, or unknown for
        a message an earlier attempt may have sent) instead of leaving them claimed until the lease
        runs out.
        """
        with self._cond:
            self._waiting = list(parts)
            try:
                while self._waiting:
                    while len(self._queue) + len(self._recording) > self.stage.depth and not self.stopped():
                        self._cond.wait()
                    part = self._waiting[0]
                    future = self.stage.submit(part, claimed_at)
                    future.add_done_callback(self._answer_came)
                    self._queue.append((part, future))
                    self._waiting.pop(0)
                    self._cond.notify_all()
            except BaseException:
                queued = {id(part) for part, _ in [*self._queue, *self._recording]}
                for part in self._waiting:
                    if id(part) not in queued:
                        self._queue.append((part, _done(_not_handed(part))))
                self._cond.notify_all()
                raise
            finally:
                self._waiting = []

    def stopped(self) -> bool:
        """Whether recording stopped the action (an error, a configuration error, sends held back)."""
        return bool(self._errors) or _held_back(self.report) or _held_back(self._helper_report)

    def close(self, *, raise_first: bool) -> NodeReport:
        """Wait until every batch handed over is recorded; the recorder's counts, or its first error."""
        # Waited for on the recorder's condition, not with Thread.join: a join that a signal's
        # exception interrupted (the execution timeout) takes the thread for ended, and every
        # join after it returns at once while the thread still records.
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._queue:
                self._start_helper()
            while self._running:
                self._cond.wait()
            if not self._merged:
                self._merged = True
                _merge(self.report, self._helper_report)
        if self._errors:
            if raise_first:
                raise self._errors[0]
            # the errors after the first were logged as they came
            log.warning(
                "careflow: recording a batch failed while the task was failing", exc_info=self._errors[0]
            )
        return self.report

    def __iter__(self) -> Iterator[tuple[dict[str, dict[str, Any]], Any]]:
        """The batches behind the one being recorded, queued or claimed and waiting (the caller holds the lock).

        Those the second thread took are left out: their sends have all been answered.
        """
        return iter([*self._queue, *((part, None) for part in self._waiting)])

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return
                    handed = self._take(self._queue[0])
                self._record_one(handed, first=True)
        finally:
            self._ended()

    def _help(self) -> None:
        """The second thread: record the queued batches whose sends have all been answered, oldest first."""
        try:
            while True:
                with self._cond:
                    self._changed.clear()  # before looking: an answer that comes after sets it again
                    handed = next((h for h in self._queue if h[1].done()), None)
                    if handed is not None:
                        self._take(handed)
                    elif not self._queue:
                        # decided under the lock: a batch shared after it starts another thread
                        self._helping = False
                        return
                if handed is not None:
                    self._record_one(handed, first=False)
                else:  # until a batch is answered or shared (the other thread may take it first)
                    self._changed.wait(RENEW_EVERY)
        except BaseException:
            with self._cond:
                self._helping = False
            raise
        finally:
            self._ended()

    def _share(
        self, to_send: dict[str, dict[str, Any]], sent: _Sent
    ) -> tuple[dict[str, dict[str, Any]], _Sent]:
        """Once nothing more is handed over, half of a large answered batch goes to the second thread.

        Each half is recorded in a transaction of its own, the two at once: the last batch's
        statements are the task's last work, and one connection would run them one after the other.
        Returns the half this thread records.
        """
        keys = list(to_send)
        mine = {key: to_send[key] for key in keys[: len(keys) // 2]}
        theirs = {key: to_send[key] for key in keys[len(keys) // 2 :]}
        with self._cond:
            self._queue.appendleft((theirs, _done(_portion(sent, theirs, counted=False))))
            self._start_helper()
            self._changed.set()
            self._cond.notify_all()
        return mine, _portion(sent, mine, counted=True)

    def _answer_came(self, _future: Future[_Sent]) -> None:
        self._changed.set()

    def _start_helper(self) -> None:
        """Start the second recording thread, unless it runs (the caller holds the lock)."""
        if self._helping:
            return
        self._helping = True
        self._running += 1
        threading.Thread(target=self._help, name=f"careflow-record-{self.node.id}-2", daemon=True).start()

    def _take(self, handed: _Handed) -> _Handed:
        """Move ``handed`` from the queue to the batches being recorded (the caller holds the lock)."""
        for index, queued in enumerate(self._queue):
            if queued is handed:
                del self._queue[index]
                break
        self._recording.append(handed)
        return handed

    def _record_one(self, handed: _Handed, *, first: bool) -> None:
        """Record one batch taken off the queue, on the ``first`` recording thread or the second.

        The first renews the claims of the batches behind while it waits, and shares a large one
        once the recorder is closed; the second takes only answered batches.
        """
        try:
            to_send = handed[0]
            sent = _answered(self.ctx, self.stage, handed, self if first else (), self._cond)
            if first and self._closed and len(to_send) > 2 * LAST_PART:
                to_send, sent = self._share(to_send, sent)
            _record_answered(
                self.ctx, self.node, to_send, sent, self.report if first else self._helper_report
            )
        except BaseException as exc:
            if self._errors:
                log.warning("careflow: recording a batch failed after an earlier error", exc_info=True)
            self._errors.append(exc)
        finally:
            with self._cond:
                self._recording = [other for other in self._recording if other is not handed]
                self._cond.notify_all()

    def _ended(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()


def _merge(into: NodeReport, other: NodeReport) -> None:
    """Add the counts of ``other`` (the recorder's) to ``into`` (the action's)."""
    for name in ("processed", "passed", "waiting", "skipped", "failed", "expired", "sent", "pending"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.batches += other.batches
    into.queries += other.queries
    into.reasons.update(other.reasons)
    if other.next_due is not None:
        into.next_due = other.next_due if into.next_due is None else min(into.next_due, other.next_due)
    if other.retry_at is not None:
        into.retry_at = other.retry_at if into.retry_at is None else max(into.retry_at, other.retry_at)
    into.stop_reason = into.stop_reason or other.stop_reason


def _parts(to_send: dict[str, dict[str, Any]], *, last: bool) -> list[dict[str, dict[str, Any]]]:
    """What the send stage gets of one batch: the whole (none if empty), or the ``last`` batch in parts.

    The last batch's parts are each half of what is left, until ``2 * LAST_PART`` or fewer are
    left: the last part.
    """
    if not last:
        return [to_send] if to_send else []
    keys = list(to_send)
    parts: list[dict[str, dict[str, Any]]] = []
    while keys:
        size = len(keys) // 2 if len(keys) > 2 * LAST_PART else len(keys)
        parts.append({key: to_send[key] for key in keys[:size]})
        keys = keys[size:]
    return parts


def _record_oldest(
    ctx: RunContext, node: CompiledNode, stage: _SendStage, in_flight: deque[_Handed], report: NodeReport
) -> None:
    """Record the oldest batch of ``in_flight`` and take it off.

    A batch whose recording failed is taken off (it stays claimed: the next attempt after its
    lease asks the provider about it). One whose wait was cut short by the task's execution
    timeout (not an ``Exception``) stays first, for ``_drain`` to record on the way out.
    """
    handed = in_flight.popleft()
    try:
        _record_handed(ctx, node, stage, handed, report, in_flight)
    except Exception:
        raise
    except BaseException:
        in_flight.appendleft(handed)
        raise


def _drain(
    ctx: RunContext,
    node: CompiledNode,
    in_flight: deque[_Handed],
    report: NodeReport,
    stage: _SendStage,
    *,
    raise_first: bool,
) -> None:
    """Record every batch still handed over (claimed, maybe on the wire), then stop the stage.

    Each batch is recorded even when recording one before it failed; the first error is raised
    afterwards (``raise_first``) or, while another exception is on its way out, only logged. What
    is left pending without a wait from the breaker takes the send process's breaker's, if any.
    A stop from outside while draining stops the sending, and the drain goes on; the stop is
    raised once every batch is recorded.
    """
    first: BaseException | None = None
    stopped: BaseException | None = None
    try:
        while in_flight:
            try:
                _record_oldest(ctx, node, stage, in_flight, report)
            except Exception as exc:
                if first is None:
                    first = exc
                else:
                    log.warning("careflow: recording a batch failed after an earlier error", exc_info=True)
            except BaseException as exc:
                if stopped is not None:
                    raise
                # Stopped from outside while draining: nothing more is written, and the batches
                # left are recorded as soon as what is on the wire is answered.
                stopped = exc
                stage.stop_sending()
        if report.pending and report.retry_at is None:
            report.retry_at = stage.sends_resume_at()
    finally:
        stage.close()
    if stopped is not None:
        raise stopped
    if first is not None:
        if raise_first:
            raise first
        log.warning("careflow: recording a batch failed while the task was failing", exc_info=first)


class _SendStage:
    """Where claimed batches are sent: a send process when it can, else a thread of this process.

    The send process (``careflow.providers.send_process``) is forked once, only for careflow's
    own provider client and when ``[careflow] send_process`` is not false: on Postgres as soon as
    the first batch has due steps (before they are claimed, even if none of them turns out to be
    sent), and it opens its connections to the provider while the task prepares that batch; on
    SQLite once the first batch is claimed. It holds
    ``depth`` batches at once; a thread of this process holds one. Either way, no request of a
    batch is written past its lease: the deadline of its claim, or of the last renewal, which
    covers every batch handed over before it (``renewed``).
    """

    def __init__(self, ctx: RunContext, node: CompiledNode) -> None:
        self.ctx, self.node = ctx, node
        self.sender: Any = ctx.sender
        self.process: Any = None
        self.depth = 1
        #: the last renewal's deadline; the send process's, in memory it shares, once it runs
        self._renewed = ctypes.c_double(0.0)
        #: set by ``stop_sending``; guarded, with ``_renewed``, against a renewal moving it back
        self._stopping = False
        self._stop_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._nice = 0
        self._lowered: tuple[int, int] | None = None
        if ctx.dry_run:
            return
        from careflow.providers import send_process
        from careflow.providers.client import ProviderClient
        from careflow.settings import prepare_nice, send_in_process

        if isinstance(ctx.sender, ProviderClient) and send_in_process() and send_process.available():
            self.depth = send_process.SendProcess.concurrent_batches
            self._nice = prepare_nice()

    def start(self, due: int = 0) -> bool:
        """Start the send process (or thread) before the first batch; False in a dry run (none).

        ``due``: how many messages the first batch may hold; the send process opens as many
        connections (up to the provider's concurrency) while they are prepared. Started once:
        later calls change nothing.
        """
        if self.ctx.dry_run:
            return False
        if self._executor is None:
            if self.depth > 1:
                self._start_process(due)
            self._executor = ThreadPoolExecutor(
                max_workers=self.depth + (self.process is not None),
                thread_name_prefix=f"careflow-send-{self.node.id}",
            )
            warm = getattr(self.ctx.sent_keys, "warm", None)
            if warm is not None:
                # While the first batch is prepared: its send reads the sent-keys cache first.
                self._executor.submit(_cache_call, warm, None)
        return True

    def submit(self, to_send: dict[str, dict[str, Any]], claimed_at: datetime) -> Future[_Sent]:
        """Hand one batch, claimed at ``claimed_at``, to the stage; its future gives what was sent."""
        from careflow.providers.client import LeaseDeadline

        if self.ctx.dry_run:  # nothing leaves, no thread
            return _done(_send(self.ctx, self.node, to_send, None))
        self.start()
        assert self._executor is not None
        deadline = LeaseDeadline(_lease_deadline(self.ctx, claimed_at), self._renewed)
        return self._executor.submit(_send, self.ctx, self.node, to_send, self.sender, deadline)

    def renewed(self, at: datetime) -> None:
        """The claims of every batch handed over so far were renewed at ``at``: their lease moves."""
        with self._stop_lock:
            if not self._stopping:
                self._renewed.value = _lease_deadline(self.ctx, at)

    def stop_sending(self) -> None:
        """The task is stopping: no request not yet written is written, whatever batch it is of.

        The requests already written finish and are recorded; the others come back not sent
        (``task_stopped``), so the batches handed over are recorded as soon as what is on the wire
        has been answered, rather than once every message of them has gone out.
        """
        from careflow.providers.client import STOPPING

        with self._stop_lock:
            self._stopping = True
            self._renewed.value = STOPPING

    def _start_process(self, due: int) -> None:
        from careflow.providers.send_process import SendProcess

        try:
            self.process = SendProcess.start(self.ctx.sender, self.ctx.gate, warm=due)
        except Exception:
            log.warning("careflow: could not start a send process; sending from this one", exc_info=True)
            self.depth = 1
        else:
            self.sender = self.process
            self._renewed = self.process.renewed
            # The send process keeps the priority it was forked with; this thread gives way to it.
            self._lowered = _lower_priority(self._nice)

    def sends_resume_at(self) -> float | None:
        """When the send process's breaker lets sends go again (None: now, or no send process).

        With Redis out of reach and the machine's breaker file unusable too, each process keeps its
        own breaker, and only the send process's has seen this task's sends
        (``SendProcess.sends_resume_at``).
        """
        return None if self.process is None else self.process.sends_resume_at()

    def close(self) -> None:
        """Wait for the batches handed over, then stop the send process."""
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        finally:
            try:
                if self.process is not None:
                    self.process.close()
            finally:
                _restore_priority(self._lowered)
                self._lowered = None


def _lower_priority(nice: int) -> tuple[int, int] | None:
    """Lower the calling thread's CPU priority by ``nice``: (thread id, priority before), or None.

    Linux only, where a priority belongs to a thread: elsewhere the same call would name a process.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, before + nice))
    except OSError:
        log.debug("careflow: could not lower the preparing thread's priority", exc_info=True)
        return None
    return thread, before


def _restore_priority(lowered: tuple[int, int] | None) -> None:
    """Give a thread its priority back; without the privilege to raise it, it keeps the lower one."""
    if lowered is None:
        return
    thread, before = lowered
    try:
        os.setpriority(os.PRIO_PROCESS, thread, before)
    except OSError:
        log.debug("careflow: the preparing thread keeps its lower priority until the task ends")


@dataclass
class _Sent:
    """What the send stage hands back: one result per key it settled, how many were reconciled."""

    results: dict[str, Any]
    reconciled: int = 0
    #: keys looked up because the sent-keys cache had them although the ledger did not say sent
    flagged: int = 0
    #: keys the provider was asked about before sending (whatever the answer)
    looked_up: frozenset[str] = frozenset()
    #: keys of those that the provider said it does not have (404): only these may be sent
    cleared: frozenset[str] = frozenset()


#: A claimed batch handed to the send stage, and what the stage will make of it.
_Handed = tuple[dict[str, dict[str, Any]], Future[_Sent]]


def _not_handed(to_send: dict[str, dict[str, Any]]) -> _Sent:
    """What became of a claimed batch that never reached the send stage: nothing left for the provider.

    Recorded, this releases its claims: a message is pending again, or unknown if an earlier
    attempt may have sent it (the provider was not asked about it, so the next attempt asks first).
    """
    from careflow.providers.client import Outcome, SendResult

    results: dict[str, Any] = {}
    for key, item in to_send.items():
        previous = item.get("previous")
        if previous is not None and previous["status"] in _SUSPECT:
            results[key] = SendResult(key, Outcome.UNKNOWN, error_code="not_looked_up")
        else:
            results[key] = SendResult(key, Outcome.NOT_SENT, error_code="task_stopped")
    return _Sent(results)


def _done(sent: _Sent) -> Future[_Sent]:
    """A future that already holds ``sent``."""
    future: Future[_Sent] = Future()
    future.set_result(sent)
    return future


def _record_handed(
    ctx: RunContext,
    node: CompiledNode,
    stage: _SendStage,
    handed: _Handed,
    report: NodeReport,
    behind: Iterable[_Handed] = (),
) -> None:
    """Wait for what the send stage made of one batch (renewing claims: ``_answered``), count its lookups, and record it."""
    _record_answered(ctx, node, handed[0], _answered(ctx, stage, handed, behind), report)


def _answered(
    ctx: RunContext,
    stage: _SendStage,
    handed: _Handed,
    behind: Iterable[_Handed] = (),
    guard: contextlib.AbstractContextManager[Any] | None = None,
) -> _Sent:
    """What the send stage made of one batch, once every message of it is answered.

    While it waits, the claims of this batch and of the batches ``behind`` it (every batch the
    stage holds) are renewed every ``RENEW_EVERY`` seconds: a slow provider keeps a live worker's
    batches for longer than the lease, and another worker must not take them for abandoned. The
    stage's deadline moves with a renewal only when every one of those claims was still held.
    ``behind`` is read afresh at each renewal, under ``guard`` when another thread hands batches
    over (the recorder's lock: no batch is handed over while the claims are renewed).
    """
    to_send, future = handed
    guard = guard if guard is not None else contextlib.nullcontext()
    while True:
        try:
            return future.result(timeout=RENEW_EVERY)
        except FutureTimeout:
            with guard:
                renewed_at = _renew_claims(ctx, [to_send, *(batch for batch, _ in behind)])
                if renewed_at is not None:
                    stage.renewed(renewed_at)


def _record_answered(
    ctx: RunContext, node: CompiledNode, to_send: dict[str, dict[str, Any]], sent: _Sent, report: NodeReport
) -> None:
    """Count the lookups of an answered batch and record it."""
    if sent.reconciled:
        report.reasons["reconciled"] += sent.reconciled
    if sent.flagged:
        report.reasons["sent_key_cache_suspects"] += sent.flagged
    _record(ctx, node, to_send, sent, report)


def _portion(sent: _Sent, keys: dict[str, Any], *, counted: bool) -> _Sent:
    """What ``sent`` says of ``keys`` alone; its lookup counts go with the ``counted`` portion only."""
    return _Sent(
        {key: result for key, result in sent.results.items() if key in keys},
        sent.reconciled if counted else 0,
        sent.flagged if counted else 0,
        sent.looked_up,
        sent.cleared,
    )


def _renew_claims(ctx: RunContext, batches: list[dict[str, dict[str, Any]]]) -> datetime | None:
    """Move the lease of every message of ``batches`` that this worker still holds to now.

    Returns the new claim time if this worker still held every one of them, else None: a message
    another worker took over (this one stalled past its lease) must not have its batch's deadline
    moved, so the deadline of every batch stays where it was.
    """
    keys = list({key for batch in batches for key in batch})
    if not keys:
        return None
    wall = ctx.wall()
    with st.batch_transaction(ctx) as conn:
        renewed = conn.execute(update(m).where(*_held_by(conn, ctx, keys)).values(claimed_at=wall)).rowcount
    return wall if renewed == len(keys) else None


def _lease_deadline(ctx: RunContext, claimed_at: datetime) -> float:
    """The unix time, on this worker's clock, after which no request of a batch claimed (or renewed)
    at ``claimed_at`` (on the database's, ``RunContext.wall``) is written."""
    lease = CLAIM_LEASE.total_seconds()
    mine = claimed_at - ctx.clock_offset()
    return mine.timestamp() + lease - min(LEASE_MARGIN.total_seconds(), lease / 10)


def _prepare_batch(  # type: ignore[no-untyped-def]
    ctx: RunContext,
    node: CompiledNode,
    after: int,
    batch: int,
    report: NodeReport,
    on_due: Callable[[int], object] | None = None,
):
    from careflow.engine.consent import check_consent, quiet_hours_end
    from careflow.engine.facts_builder import UnreadableFacts
    from careflow.engine.recipients import missing_recipient_reason, recipient_for
    from careflow.templates import render_message, render_subject

    config = node.config
    max_late = timedelta(minutes=(config.max_lateness or ctx.compiled.settings.max_lateness).minutes())
    default_tz = zone(ctx.compiled.timezone)
    with st.batch_transaction(ctx, report) as conn:
        wall = ctx.wall(conn)
        rows = st.due_steps(conn, ctx, node.id, after, batch)
        report.queries += 1
        if not rows:
            return None
        if on_due is not None:
            on_due(len(rows))
        report.batches += 1
        last_id = rows[-1]["id"]
        facts = st.load_facts(conn, ctx, rows, report)
        keys = [idempotency_key(r["execution_id"], node.id) for r in rows]
        ledger = {
            row["idempotency_key"]: row
            for row in conn.execute(
                select(m.c.idempotency_key, m.c.status, m.c.claimed_at, m.c.attempts).where(
                    st.among(conn, m.c.idempotency_key, keys)
                )
            )
            .mappings()
            .all()
        }
        report.queries += 1
        new_rows: list[dict[str, Any]] = []
        new_claims: list[dict[str, Any]] = []
        step_updates: list[dict[str, Any]] = []
        arrivals: list[tuple[str, str, datetime]] = []
        exits: dict[str, str] = {}
        outcomes: Counter[tuple[str, str]] = Counter()  # the batch's messages not sent, by outcome and reason
        candidates: dict[str, dict[str, Any]] = {}
        local_nows: dict[Any, datetime] = {}  # the run's now in each patient timezone of the batch
        for row, key in zip(rows, keys, strict=True):
            report.processed += 1
            existing = ledger.get(key)
            if existing is not None and existing["status"] in ("sent", "expired", "skipped", "failed"):
                # Already decided by an earlier attempt: move the step on, never send again.
                status = (
                    "done"
                    if existing["status"] == "sent"
                    else ("failed" if existing["status"] == "failed" else "skipped")
                )
                step_updates.append(
                    {"id": row["id"], "status": status, "output": {"message": existing["status"]}}
                )
                if status == "done":
                    arrivals += [(row["execution_id"], t, ctx.now) for t in node.targets()]
                report.reasons[f"ledger_{existing['status']}"] += 1
                continue
            if (
                existing is not None
                and existing["status"] == "claimed"
                and existing["claimed_at"] > wall - CLAIM_LEASE
            ):
                report.reasons["claimed_elsewhere"] += 1
                report.pending += 1
                continue
            fact = facts.get(row["execution_id"])
            # An action's step arrives when its message is due. A step parked by quiet hours keeps
            # that time: its lateness counts from it, not from the end of the quiet hours, so a
            # wake run that did not happen cannot stretch max_lateness night after night.
            due = row["arrived_at"]
            # What the ledger row of this message holds of its own; the rest is the batch's.
            base = {
                "idempotency_key": key,
                "execution_id": row["execution_id"],
                "patient_id": row["patient_id"],
                "due_at": due,
            }
            outcome: tuple[str, str] | None = None  # (ledger status, reason)
            detail: str | None = None  # what the ledger's last_error says of it (no patient data)
            if fact is None:
                outcome = ("skipped", "patient_or_appointment_missing")
            elif isinstance(fact, UnreadableFacts):
                outcome = ("failed", UnreadableFacts.REASON)
            elif ctx.now - due > max_late:
                outcome = ("expired", f"late_by_{int((ctx.now - due).total_seconds() // 60)}_min")
            else:
                patient = fact["patient"]
                tz = zone_or(patient.get("timezone"), default_tz)
                local_now = local_nows.get(tz)
                if local_now is None:
                    local_now = local_nows[tz] = ctx.now.astimezone(tz)
                refusal = check_consent(
                    purpose=config.purpose,
                    channel=config.channel,
                    patient=patient,
                    local_now=local_now,
                )
                resume = quiet_hours_end(local_now) if refusal == "marketing_quiet_hours" else None
                if resume is not None and resume - due > max_late:
                    # The quiet hours end past the message's max_lateness: it would go out late.
                    outcome = ("expired", "quiet_hours_past_max_lateness")
                elif resume is not None:
                    step_updates.append({"id": row["id"], "status": "waiting", "due_at": resume})
                    report.waiting += 1
                    report.reasons["marketing_quiet_hours"] += 1
                    report.next_due = resume if report.next_due is None else min(report.next_due, resume)
                    continue
                elif refusal:
                    outcome = ("skipped", refusal)
                else:
                    to = recipient_for(config.channel, patient)
                    if not to:
                        outcome = ("skipped", missing_recipient_reason(config.channel, patient))
                    else:
                        try:
                            body = render_message(config.template, fact, channel=config.channel)
                            # Only an e-mail has a subject: on other channels it is not rendered nor sent.
                            subject = (
                                render_subject(config.subject, fact)
                                if config.subject and config.channel == "email"
                                else None
                            )
                        except TemplateError as exc:
                            # The template's own words (a path, a line, a limit), never a value.
                            outcome, detail = ("failed", exc.code), exc.message[:500]
                        else:
                            candidates[key] = {
                                "row": row,
                                "to": to,
                                "body": body,
                                "subject": subject,
                                "base": base,
                            }
                            if existing is None:
                                # A key nobody has written yet is claimed by writing it.
                                new_claims.append(base)
                            continue
            if existing is not None and existing["status"] in _SUSPECT:
                # An earlier attempt may have sent it (its claim was abandoned, or its answer
                # lost): the provider is asked first, and the outcome stands only if it has nothing.
                candidates[key] = {"row": row, "base": base, "hold": outcome, "hold_detail": detail}
                continue
            status, reason = outcome
            if existing is None:
                new_rows.append({**base, "status": status, "reason": reason, "last_error": detail})
            else:
                conn.execute(
                    update(m)
                    .where(m.c.idempotency_key == key)
                    .values(status=status, reason=reason, last_error=detail, updated_at=ctx.now)
                )
            step_updates.append(_decided(report, row, status, reason, outcomes))
        shared = {
            "workflow_id": ctx.workflow_id,
            "node_id": node.id,
            "version": ctx.compiled.version,
            "channel": config.channel,
            "purpose": config.purpose,
            "updated_at": ctx.now,
        }
        st.insert_ignore(conn, m, new_rows, ["idempotency_key"], constants={**shared, "attempts": 0})
        claimed = st.insert_ignore(
            conn,
            m,
            new_claims,
            ["idempotency_key"],
            returning="idempotency_key",
            constants={
                **shared,
                "status": "claimed",
                "claimed_by": ctx.worker,
                "claimed_at": wall,
                "attempts": 1,
                "reason": None,
            },
        )
        # Keys written before (pending, unknown, an abandoned claim), or written by another worker
        # since the ledger was read: an update takes the lease only where it is free.
        unclaimed = [k for k in candidates if k not in claimed]
        claimed |= _claim(conn, ctx, unclaimed, wall)
        report.queries += bool(new_rows) + bool(new_claims) + bool(unclaimed)
        to_send = {k: v for k, v in candidates.items() if k in claimed}
        report.reasons["claimed_elsewhere"] += len(candidates) - len(to_send)
        report.pending += len(candidates) - len(to_send)
        for key, item in to_send.items():
            item["previous"] = ledger.get(key)
        st.finish_steps(conn, ctx, step_updates)
        st.create_steps(conn, ctx, arrivals)
        report.queries += bool(step_updates) + bool(arrivals) + st.exit_executions(conn, ctx, exits)
        moved = {u["id"] for u in step_updates}
        # Executions whose step moved on here; those being sent are settled once they are recorded.
        report.queries += st.settle_executions(
            conn, ctx, [r["execution_id"] for r in rows if r["id"] in moved]
        )
        _count_outcomes(ctx, node, outcomes)
    return last_id, to_send, len(rows) == batch, wall


def _claim(conn: Any, ctx: RunContext, keys: list[str], wall: datetime) -> set[str]:
    """Take the lease on pending (or abandoned) messages; returns the keys this worker now owns."""
    if not keys:
        return set()
    stale = wall - CLAIM_LEASE
    stmt = (
        update(m)
        .where(
            st.among(conn, m.c.idempotency_key, keys),
            (m.c.status.in_(("pending", "unknown"))) | ((m.c.status == "claimed") & (m.c.claimed_at < stale)),
        )
        .values(status="claimed", claimed_by=ctx.worker, claimed_at=wall, attempts=m.c.attempts + 1)
        .returning(m.c.idempotency_key)
    )
    return set(conn.execute(stmt).scalars())


def _send(
    ctx: RunContext,
    node: CompiledNode,
    to_send: dict[str, dict[str, Any]],
    sender: Any,
    deadline: LeaseDeadline | None = None,
) -> _Sent:
    """The send stage of one claimed batch: reconcile suspects, send the rest, ask about lost answers.

    Runs in a send thread: it talks to the provider through ``sender`` (the client, or the send
    process) and to the breaker's gate only; the ledger and the report belong to the calling
    thread, which records what this returns. No request is written past ``deadline`` (the
    batch's ``LeaseDeadline``); lookups still go, since they change nothing at the provider.
    """
    from careflow.providers.client import Message, Outcome, SendResult

    config = node.config
    results: dict[str, Any] = {}
    reconciled = 0
    # A claim that an earlier attempt may have sent (left "claimed" by a worker that died, or
    # "unknown" after a lost answer): ask the provider before sending again. A "pending" message
    # is not a suspect: its last attempt was refused (5xx, 429, 401) or never left (breaker open),
    # and asking about every one of them would hit a failing provider once per message per attempt.
    suspects = [
        k
        for k, item in to_send.items()
        if item.get("previous") is not None and item["previous"]["status"] in _SUSPECT
    ]
    flagged = 0
    if ctx.sent_keys is not None and not ctx.dry_run:
        # Keys the provider accepted minutes ago although the ledger does not say "sent" (a
        # ledger that lost its last writes: a database restored or failed over): asked about
        # too. A hit never skips a send by itself; a forged or stale one costs one lookup.
        others = [k for k in to_send if k not in suspects]
        flagged_keys = list(_cache_call(lambda: ctx.sent_keys.get_many(others), {}) if others else {})
        flagged = len(flagged_keys)
        suspects += flagged_keys
    cleared: set[str] = set()
    if suspects and not ctx.dry_run:
        found = sender.lookup_many(suspects)
        for key in suspects:
            result = found.get(key)
            if key in found and result is None:
                cleared.add(key)  # the provider has nothing under this key
            elif result is not None and result.delivered:
                results[key] = result
                reconciled += 1
            else:
                # The lookup itself failed (an outage, a timeout, a refused token): the message
                # may be at the provider, so it is not sent again until a lookup says it is not.
                results[key] = result or SendResult(key, Outcome.UNKNOWN, error_code="lookup_failed")
    messages = [
        Message(
            idempotency_key=key,
            channel=config.channel,
            to=item["to"],
            body=item["body"],
            subject=item["subject"],
            metadata={
                "workflow_id": ctx.workflow_id,
                "node_id": node.id,
                "execution_id": item["row"]["execution_id"],
            },
        )
        for key, item in to_send.items()
        if key not in results and "hold" not in item
    ]
    if ctx.dry_run:
        for msg in messages:
            results[msg.idempotency_key] = SendResult(
                msg.idempotency_key, Outcome.ACCEPTED, provider_id="dry-run"
            )
    elif messages:
        for result in sender.send_batch(messages, gate=ctx.gate, deadline=deadline):
            results[result.idempotency_key] = result
        unknown = [
            m.idempotency_key
            for m in messages
            if (sent := results.get(m.idempotency_key)) is not None and sent.outcome == Outcome.UNKNOWN
        ]
        if unknown:
            # The request left but its answer was lost: the provider knows whether it took it.
            for key, found in sender.lookup_many(unknown).items():
                if found is not None and found.delivered:
                    results[key] = found
                    reconciled += 1
        if ctx.sent_keys is not None:
            accepted = {k: r.provider_id or "accepted" for k, r in results.items() if r.delivered}
            if accepted:
                _cache_call(lambda: ctx.sent_keys.set_many(accepted), None)
    return _Sent(results, reconciled, flagged, frozenset(suspects), frozenset(cleared))


def _cache_call(call: Any, default: Any) -> Any:
    """A cache read or write that can only cost time: any failure is logged and ignored."""
    try:
        return call()
    except Exception:
        log.warning("careflow: the sent-keys cache failed; the ledger alone decides", exc_info=True)
        return default


def _record(
    ctx: RunContext,
    node: CompiledNode,
    to_send: dict[str, dict[str, Any]],
    sent: _Sent,
    report: NodeReport,
) -> None:
    """Write what became of one claimed batch: the ledger, the steps, the executions.

    Only rows this worker still holds are written, except a message the provider accepted (that
    is true whoever holds the row now): a worker stalled past its lease must not overwrite what
    the worker that took the claim over has recorded since.
    """
    from careflow.providers.client import Outcome

    config = node.config
    results = sent.results
    ledger_rows: list[dict[str, Any]] = []
    step_updates: list[dict[str, Any]] = []
    arrivals: list[tuple[str, str, datetime]] = []
    targets = node.targets()
    # One object for every sent step of the batch: the bulk update writes it once.
    sent_output = {"message": "sent", "channel": config.channel}
    configuration_error: Any = None
    sent_latency_ms: list[float] = []
    sent_lateness_s: list[float] = []
    # A 429 is the provider's answer whatever becomes of the transaction below: counted now. The
    # outcomes recorded in it are counted once it commits (``batch_transaction``).
    _count_outcomes(
        ctx, node, Counter(("throttled", "429") for r in results.values() if r.outcome == Outcome.THROTTLED)
    )
    outcomes: Counter[tuple[str, str]] = Counter()  # the batch's messages not sent, by outcome and reason
    with st.batch_transaction(ctx, report) as conn:
        held = _still_claimed(conn, ctx, list(to_send))
        report.queries += 1
        # A message another worker took over and recorded as sent is that worker's to count.
        taken = [k for k in to_send if k not in held]
        recorded_sent = _recorded_sent(conn, taken) if taken else set()
        report.queries += bool(taken)
        for key, item in to_send.items():
            row = item["row"]
            result = results.get(key)
            outcome = result.outcome if result is not None else Outcome.NOT_SENT
            delivered = result is not None and result.delivered
            if key not in held and (not delivered or key in recorded_sent):
                report.reasons["claim_taken_over"] += 1
                continue
            entry = {
                "idempotency_key": key,
                "status": "pending",
                "outcome": outcome.value,
                "reason": None,
                "provider_id": None,
                "last_error": None,
                "sent_at": None,
                "latency": int(result.latency_ms) if result is not None and result.latency_ms else None,
            }
            if outcome == Outcome.CONFIGURATION:  # a refused token: the task stops once the batch is recorded
                configuration_error = result
            if delivered and result is not None:
                entry.update(status="sent", provider_id=result.provider_id, sent_at=ctx.now)
                step_updates.append({"id": row["id"], "status": "done", "output": sent_output})
                arrivals += [(row["execution_id"], t, ctx.now) for t in targets]
                report.sent += 1
                report.passed += 1
                sent_latency_ms.append(entry["latency"] or 0)
                sent_lateness_s.append(max(0.0, (ctx.now - item["base"]["due_at"]).total_seconds()))
            elif outcome == Outcome.PERMANENT and result is not None:
                reason = f"provider_{result.error_code or result.status_code}"
                entry.update(status="failed", reason=reason, last_error=_safe_error(result))
                step_updates.append(_decided(report, row, "failed", reason, outcomes))
            elif item.get("hold") is not None and result is None:
                # Not at the provider (or a dry run): the outcome decided before the lookup stands.
                status, reason = item["hold"]
                entry.update(status=status, reason=reason, last_error=item.get("hold_detail"))
                step_updates.append(_decided(report, row, status, reason, outcomes))
            elif outcome == Outcome.UNKNOWN or (key in sent.looked_up and key not in sent.cleared):
                # Left "unknown" (a lost answer, or a lookup that did not answer): the next attempt
                # asks the provider first, and nothing sends it again before the provider says no.
                entry.update(status="unknown", last_error=_safe_error(result))
                report.pending += 1
                report.reasons["unknown_outcome"] += 1
            else:
                entry.update(last_error=_safe_error(result) if result is not None else "not sent")
                report.pending += 1
                report.reasons[outcome.value] += 1
                if outcome == Outcome.NOT_SENT and result is not None and result.error_code in _HELD_BACK:
                    # Held back by the breaker or a provider's pause, not failed: when to try again.
                    until = time.time() + (result.retry_after or 0.0)
                    report.retry_at = until if report.retry_at is None else max(report.retry_at, until)
            ledger_rows.append(entry)
        st.bulk_update(
            conn,
            m,
            "idempotency_key",
            ledger_rows,
            {name: name for name in ("status", "outcome", "reason", "provider_id", "last_error", "sent_at")}
            | {"latency_ms": "latency"},
            {"updated_at": ctx.now},
        )
        st.finish_steps(conn, ctx, step_updates)
        st.create_steps(conn, ctx, arrivals)
        report.queries += bool(ledger_rows) + bool(step_updates) + bool(arrivals)
        report.queries += st.settle_executions(
            conn, ctx, [item["row"]["execution_id"] for item in to_send.values()]
        )
        _count_outcomes(ctx, node, outcomes)
    if sent_latency_ms:  # one event per batch: the counter moves once, the timers get every message
        ctx.event(
            "messages_sent",
            node_id=node.id,
            channel=config.channel,
            count=len(sent_latency_ms),
            latencies_ms=sent_latency_ms,
            lateness_s=sent_lateness_s,
        )
    if configuration_error is not None:
        report.stop_reason = "provider_configuration"
        raise _configuration_stop(configuration_error, f"workflow {ctx.workflow_id} node {node.id}")


def _configuration_stop(result: SendResult, where: str) -> ProviderConfigurationError:
    """The error that stops a node whose send came back ``CONFIGURATION``, saying what to fix."""
    status = result.status_code
    if status in (401, 403):
        problem, what = f"http_{status}", f"the provider refused careflow's credentials (HTTP {status})"
        fix = "fix the token of the careflow_messaging connection"
    elif status is not None:
        problem, what = f"http_{status}", f"the provider answered HTTP {status} to POST /v1/messages"
        fix = "check the base URL (host) of the careflow_messaging connection"
    elif result.error_code == "tls_certificate":
        problem, what = (
            "tls_certificate",
            result.error_message or "the provider's TLS certificate was refused",
        )
        fix = (
            "trust the CA that signed it (SSL_CERT_FILE) or fix the host of the careflow_messaging connection"
        )
    else:  # the proxy's own answer, and its URL without the password, are in the message
        problem, what = "proxy_refused", result.error_message or "the proxy refused the tunnel"
        fix = "fix the proxy (the careflow_messaging connection's proxies or the workers' HTTPS_PROXY; its user and password)"
    return ProviderConfigurationError(f"{what} while {where} was sending: {fix}", problem)


def _decided(
    report: NodeReport, row: Any, status: str, reason: str, outcomes: Counter[tuple[str, str]]
) -> dict[str, Any]:
    """Count a message that will not be sent (failed, expired or skipped) and give its step's update.

    ``outcomes`` gathers the batch's: :func:`_count_outcomes` reports them once it is decided.
    """
    if status == "failed":
        report.failed += 1
    elif status == "expired":
        report.expired += 1
    else:
        report.skipped += 1
    report.reasons[reason] += 1
    outcomes[status, reason] += 1
    step_status = "failed" if status == "failed" else "skipped"
    return {"id": row["id"], "status": step_status, "error": reason, "output": {"message": status}}


def _still_claimed(conn: Any, ctx: RunContext, keys: list[str]) -> set[str]:
    """The keys of ``keys`` whose ledger row this worker still holds, locked until the transaction ends."""
    query = select(m.c.idempotency_key).where(*_held_by(conn, ctx, keys))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return set(conn.execute(query).scalars())


def _recorded_sent(conn: Any, keys: list[str]) -> set[str]:
    """The keys of ``keys`` whose ledger row says sent."""
    query = select(m.c.idempotency_key).where(st.among(conn, m.c.idempotency_key, keys), m.c.status == "sent")
    return set(conn.execute(query).scalars())


def _held_by(conn: Any, ctx: RunContext, keys: list[str]) -> tuple[Any, ...]:
    """Where a ledger row of ``keys`` is still claimed by this worker."""
    return st.among(conn, m.c.idempotency_key, keys), m.c.status == "claimed", m.c.claimed_by == ctx.worker


def _count_outcomes(ctx: RunContext, node: CompiledNode, outcomes: Counter[tuple[str, str]]) -> None:
    """One ``message_outcome`` event for each outcome and reason of a batch, with how many messages.

    Inside the batch's transaction they go out once it commits; a metrics backend moves each
    counter once (a statsd packet), not once a message.
    """
    for (outcome, reason), count in outcomes.items():
        ctx.event(
            "message_outcome",
            node_id=node.id,
            channel=node.config.channel,
            outcome=outcome,
            reason=reason,
            count=count,
        )


def _safe_error(result: Any) -> str | None:
    """An error description with codes only: never the message body or the recipient."""
    if result is None:
        return None
    parts = [str(result.outcome.value)]
    if result.status_code:
        parts.append(f"HTTP {result.status_code}")
    if result.error_code:
        parts.append(str(result.error_code))
    return " ".join(parts)[:500]
