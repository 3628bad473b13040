"""careflow's tables and the clinic tables (docs/contracts.md §2), as SQLAlchemy Core metadata.

The same definitions run on Postgres (production, tests) and SQLite (the embedded default).
Times are stored in UTC; :class:`UTCDateTime` hands back aware datetimes on both.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A timezone-aware datetime stored as UTC (naive UTC on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata = MetaData()

# --- the clinic's data (read-only for careflow; created by `careflow db upgrade` when absent) ---

clinics = Table(
    "clinics",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("phone", String(32)),
    Column("timezone", String(64), nullable=False, server_default="Asia/Seoul"),
)

patients = Table(
    "patients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("clinic_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("phone", String(32)),
    Column("email", String(320)),
    Column("birth_date", Date),
    Column("timezone", String(64)),
    Column("consent_messages", Boolean, nullable=False, server_default="1"),
    Column("consent_marketing", Boolean, nullable=False, server_default="0"),
    Column("consent_night_marketing", Boolean, nullable=False, server_default="0"),
    Column("attributes", JSON),
)

appointments = Table(
    "appointments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False, index=True),
    Column("clinic_id", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("attributes", JSON),
    Index("ix_appointments_patient_status", "patient_id", "status", "scheduled_at"),
)

appointment_events = Table(
    "appointment_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("appointment_id", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Index("ix_appointment_events_lookup", "clinic_id", "type", "occurred_at"),
)

CLINIC_TABLES = (clinics, patients, appointments, appointment_events)

# --- careflow's own state ---

schema_migrations = Table(
    "careflow_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

#: The longest name a version keeps as who published it (``careflow workflows publish --by``).
PUBLISHED_BY_CHARS = 128

workflow_versions = Table(
    "careflow_workflow_versions",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("document", JSON, nullable=False),
    Column("diagnostics", JSON, nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
    Column("published_by", String(PUBLISHED_BY_CHARS)),
    Index("ix_workflow_versions_hash", "workflow_id", "content_hash"),
)

enrollment_watermarks = Table(
    "careflow_enrollment_watermarks",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("enrolled_until", UTCDateTime, nullable=False),
)

#: Percent of each page of ``careflow_executions`` that inserts fill on Postgres (see the table).
EXECUTIONS_FILLFACTOR = 50

executions = Table(
    "careflow_executions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workflow_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    # The clinic's ids, as long as its own tables or views make them (migration 3).
    Column("trigger_event_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("appointment_id", Text, nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # running, waiting, completed, failed, exited
    Column("enrolled_at", UTCDateTime, nullable=False),
    Column("event_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("exit_reason", String(200)),
    Column("run_id", String(250)),
    UniqueConstraint("workflow_id", "trigger_event_id", name="uq_executions_event"),
    # No index names a column that settling an execution changes (status, updated_at,
    # finished_at), and each page keeps half its room free: Postgres then updates an execution in
    # place, on its page and without an entry in each index (a "HOT" update), as every node of a
    # batch does to a thousand at once (migration 6).
    Index("ix_executions_workflow_enrolled", "workflow_id", "enrolled_at"),
    Index("ix_executions_patient", "patient_id"),
    postgresql_with={"fillfactor": EXECUTIONS_FILLFACTOR},
)

steps = Table(
    "careflow_steps",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("execution_id", String(64), ForeignKey("careflow_executions.id"), nullable=False),
    Column("workflow_id", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending, waiting, done, failed, skipped
    Column("arrived_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("output", JSON),
    Column("version", Integer),
    Column("run_id", String(250)),
    UniqueConstraint("execution_id", "node_id", name="uq_steps_execution_node"),
    # The waiting steps of a workflow in due order (the next wake, migration 5): status before
    # due_at, so the earliest is the first entry; node_id last, so the due-steps query, which
    # names a node but not one status, can only use it for the workflow, never in place of
    # ix_steps_open (whose order needs no sort) even when the planner expects one row.
    Index("ix_steps_due", "workflow_id", "status", "due_at", "node_id"),
    # The open steps of a node in id order: a batch of due steps is read from where the last one
    # ended and stops at its size, however many steps the node holds and however fresh the
    # planner's statistics are (a node's steps are written in bulk just before they are read).
    Index(
        "ix_steps_open",
        "workflow_id",
        "node_id",
        "id",
        postgresql_where=text("status IN ('pending', 'waiting')"),
        sqlite_where=text("status IN ('pending', 'waiting')"),
    ),
    # The failed and skipped steps (the careflow view's failures page, over every workflow): read
    # without scanning the steps that went well (migration 4).
    Index(
        "ix_steps_problems",
        "workflow_id",
        "node_id",
        "status",
        postgresql_where=text("status IN ('failed', 'skipped')"),
        sqlite_where=text("status IN ('failed', 'skipped')"),
    ),
)

messages = Table(
    "careflow_messages",
    metadata,
    Column("idempotency_key", String(128), primary_key=True),
    Column("execution_id", String(64), nullable=False),
    Column("workflow_id", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("patient_id", Text, nullable=False),  # recipient reference, never the address
    Column("status", String(16), nullable=False),  # claimed, sent, failed, skipped, expired, unknown, pending
    Column("outcome", String(32)),
    Column("reason", String(200)),
    Column("provider_id", Text),  # the provider's, of whatever length it gives (migration 3)
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("due_at", UTCDateTime, nullable=False),
    Column("claimed_at", UTCDateTime),
    Column("claimed_by", String(250)),
    Column("sent_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("latency_ms", Integer),
    UniqueConstraint("execution_id", "node_id", name="uq_messages_execution_node"),
    Index("ix_messages_workflow_status", "workflow_id", "node_id", "status"),
    # The messages that were not sent (the failures page), as ix_steps_problems (migration 4).
    Index(
        "ix_messages_problems",
        "workflow_id",
        "node_id",
        "status",
        postgresql_where=text("status IN ('failed', 'expired', 'skipped', 'unknown')"),
        sqlite_where=text("status IN ('failed', 'expired', 'skipped', 'unknown')"),
    ),
)

CAREFLOW_TABLES = (
    schema_migrations,
    workflow_versions,
    enrollment_watermarks,
    executions,
    steps,
    messages,
)
