"""What a node task knows while it runs, and what it reports back (counts only, no patient data)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from careflow.compiler import CompiledWorkflow


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

    @property
    def workflow_id(self) -> str:
        """The workflow being run."""
        return self.compiled.workflow_id

    def event(self, name: str, **fields: Any) -> None:
        """Report an observable event (metrics, alerts) without patient data."""
        if self.emit is not None:
            self.emit(name, workflow_id=self.workflow_id, **fields)


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
