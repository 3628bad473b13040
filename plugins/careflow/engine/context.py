"""What a node task knows while it runs, and what it reports back (counts only, no patient data)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from careflow.compiler import CompiledWorkflow

log = logging.getLogger(__name__)

#: A worker's clock further than this from the database's is logged (see ``RunContext.wall``).
CLOCK_DRIFT_WARNING = timedelta(seconds=10)


@dataclass
class RunContext:
    """One DAG run's view of the world: the workflow, the clock, the database."""

    compiled: CompiledWorkflow
    now: datetime
    engine: Engine
    run_id: str = "manual"
    worker: str = "local"
    next_run_at: datetime | None = None
    interval_start: datetime | None = None
    dry_run: bool = False
    simulated: bool = False
    #: callable(event_name, **fields) for metrics/alerts; ids and counts only.
    emit: Any = None
    #: the provider client (send_batch, lookup_many); the action operator sets it.
    sender: Any = None
    #: the circuit breaker's gate for sends (None: no breaker).
    gate: Any = None
    #: recently accepted idempotency keys (the ``sent_keys`` cache, get_many/set_many): a hit
    #: makes a key a suspect that is looked up at the provider before any send; never a reason
    #: to skip one. None: not used.
    sent_keys: Any = None
    #: per thread, the events of each open :meth:`events_held` block, innermost last
    _held: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)
    #: the database's clock minus this worker's, read at the first :meth:`wall`
    _clock_offset: timedelta | None = field(default=None, init=False, repr=False, compare=False)
    _clock_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def workflow_id(self) -> str:
        """The workflow being run."""
        return self.compiled.workflow_id

    def wall(self, conn: Connection | None = None) -> datetime:
        """Now, on the database's clock: the time claims are written with and their leases judged by.

        Workers on several machines share the ledger, and each judges whether another's claim is
        still live by the time it was written. On their own clocks, a worker whose clock ran a few
        minutes ahead of another's would take that worker's live claims over, and both would send.
        On the database's they agree, whatever each machine's clock says.
        """
        from careflow.clock import wall_clock

        return wall_clock() + self.clock_offset(conn)

    def clock_offset(self, conn: Connection | None = None) -> timedelta:
        """The database's clock minus this worker's, read once (zero on SQLite): on ``conn`` if given."""
        if self._clock_offset is None:
            with self._clock_lock:
                if self._clock_offset is None:
                    from careflow.store.db import clock_offset

                    self._clock_offset = offset = clock_offset(self.engine if conn is None else conn)
                    if abs(offset) > CLOCK_DRIFT_WARNING:
                        log.warning(
                            "careflow: this worker's clock is %.1f s %s the database's; careflow times its "
                            "claims by the database's clock, but Airflow needs the clocks of its machines "
                            "synchronised (NTP)",
                            abs(offset.total_seconds()),
                            "behind" if offset > timedelta(0) else "ahead of",
                        )
        return self._clock_offset

    def event(self, name: str, **fields: Any) -> None:
        """Report an observable event (metrics, alerts) without patient data.

        Inside :meth:`events_held` it is held back until the block succeeds.
        """
        if self.emit is None:
            return
        blocks = getattr(self._held, "blocks", None)
        if blocks:
            blocks[-1].append((name, fields))
        else:
            self.emit(name, workflow_id=self.workflow_id, **fields)

    @contextmanager
    def events_held(self) -> Iterator[None]:
        """Hold back the events this thread reports in the block: sent if it ends, dropped if it raises.

        Around a transaction, an event that counts its writes goes out once they are committed: a
        batch rolled back and decided again by Airflow's retry is counted once, by the retry. A
        block inside another hands its events to the outer one; other threads' events go out as
        they come.
        """
        blocks = self._held.__dict__.setdefault("blocks", [])
        held: list[tuple[str, dict[str, Any]]] = []
        blocks.append(held)
        try:
            yield
        finally:
            blocks.pop()
        for name, fields in held:
            self.event(name, **fields)


@dataclass
class NodeReport:
    """What one node did in one run: counts by outcome and reason."""

    node_id: str
    node_type: str
    processed: int = 0
    passed: int = 0
    waiting: int = 0
    skipped: int = 0
    failed: int = 0
    expired: int = 0
    sent: int = 0
    pending: int = 0
    enrolled: int = 0
    reasons: Counter = field(default_factory=Counter)
    batches: int = 0
    queries: int = 0
    next_due: datetime | None = None
    retry_at: float | None = None
    stop_reason: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        """Counts only: safe for XCom and logs."""
        return {
            "node_id": self.node_id,
            "node_type": self.node_type,
            "processed": self.processed,
            "passed": self.passed,
            "waiting": self.waiting,
            "skipped": self.skipped,
            "failed": self.failed,
            "expired": self.expired,
            "sent": self.sent,
            "pending": self.pending,
            "enrolled": self.enrolled,
            "reasons": dict(self.reasons),
            "batches": self.batches,
            "queries": self.queries,
            "next_due": self.next_due.isoformat() if self.next_due else None,
            "stop_reason": self.stop_reason,
        }
