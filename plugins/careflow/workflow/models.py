"""The stored workflow: what React Flow's ``toObject()`` exports plus careflow's own fields.

UI-only fields (``position``, ``measured``, ``selected``, ``viewport``…) are accepted and ignored;
everything that has meaning is strict. These models are the single source of the published
JSON Schema (``careflow schema``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Final = "1.0"

#: Largest workflow careflow accepts; larger ones are refused before any graph work.
MAX_NODES = 1000
MAX_EDGES = 4000

NODE_TYPES = ("trigger", "action", "condition", "delay", "timeWindow")
CHANNELS = ("sms", "lms", "kakao", "email")
PURPOSES = ("care", "marketing")
TRIGGER_EVENTS = (
    "appointment_created",
    "appointment_completed",
    "appointment_cancelled",
    "appointment_no_show",
    "appointment_rescheduled",
)
#: The statuses of the clinic's appointments careflow reads (docs/contracts.md §2).
APPOINTMENT_STATUSES = ("scheduled", "completed", "cancelled", "no_show")
CONDITION_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "contains")
DURATION_UNITS = ("minutes", "hours", "days", "weeks")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORKFLOW_STATUSES = ("draft", "active", "paused", "archived")

#: React Flow fields that only matter to the builder's canvas.
UI_NODE_FIELDS = frozenset(
    {
        "position",
        "positionAbsolute",
        "measured",
        "width",
        "height",
        "selected",
        "dragging",
        "dragHandle",
        "draggable",
        "selectable",
        "connectable",
        "deletable",
        "focusable",
        "hidden",
        "resizing",
        "style",
        "className",
        "sourcePosition",
        "targetPosition",
        "parentId",
        "parentNode",
        "extent",
        "expandParent",
        "zIndex",
        "origin",
        "ariaLabel",
        "handles",
        "initialWidth",
        "initialHeight",
    }
)
UI_EDGE_FIELDS = frozenset(
    {
        "type",
        "markerEnd",
        "markerStart",
        "animated",
        "selected",
        "style",
        "className",
        "label",
        "labelStyle",
        "labelShowBg",
        "labelBgStyle",
        "labelBgPadding",
        "labelBgBorderRadius",
        "hidden",
        "deletable",
        "focusable",
        "updatable",
        "reconnectable",
        "interactionWidth",
        "zIndex",
        "ariaLabel",
        "pathOptions",
        "data",
        "sourceX",
        "sourceY",
        "targetX",
        "targetY",
        "selectable",
    }
)
UI_WORKFLOW_FIELDS = frozenset({"viewport", "description", "created_at", "updated_at", "version"})

HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Duration(_Strict):
    """A length of time: ``{"amount": 3, "unit": "days"}``."""

    amount: int = Field(ge=0, le=3650, description="How many units (0 to 3650).")
    unit: Literal["minutes", "hours", "days", "weeks"]

    def minutes(self) -> int:
        """The duration in minutes."""
        return self.amount * {"minutes": 1, "hours": 60, "days": 1440, "weeks": 10080}[self.unit]


class SignedDuration(_Strict):
    """An offset that may be negative: one day *before* an appointment is ``amount: -1``."""

    amount: int = Field(ge=-3650, le=3650)
    unit: Literal["minutes", "hours", "days", "weeks"]

    def minutes(self) -> int:
        """The offset in minutes (negative = earlier)."""
        return self.amount * {"minutes": 1, "hours": 60, "days": 1440, "weeks": 10080}[self.unit]


class WorkflowSettings(_Strict):
    """Execution settings of a workflow; every field has a documented default."""

    max_concurrency: int = Field(5, ge=1, le=100, description="Node tasks of one run at once.")
    node_timeout_seconds: int = Field(
        30,
        ge=1,
        le=3600,
        description="The longest one database statement of a node's batch may run (Postgres); the batch fails past it.",
    )
    retries: int = Field(3, ge=0, le=10, description="Airflow retries per node task.")
    retry_delay_seconds: int = Field(30, ge=1, le=3600, description="First retry delay; grows exponentially.")
    max_lateness: Duration = Field(
        default=Duration(amount=24, unit="hours"),
        description="A message more than this past due is recorded as expired, never sent late.",
    )
    retention_days: int = Field(
        180,
        ge=1,
        le=3650,
        description="How long ended executions are kept; events older than this are not enrolled.",
    )
    batch_size: int = Field(1000, ge=1, le=10000, description="Executions a node processes per query batch.")
    run_deadline_hours: float | None = Field(
        None, gt=0, le=168, description="Alert when a run has not finished this long after it was queued."
    )
    task_timeout_seconds: int = Field(
        3600, ge=10, le=86400, description="execution_timeout of one node task (all its batches)."
    )
    owner: str = Field("careflow", min_length=1, max_length=64)


class TriggerFilters(_Strict):
    """Which trigger events enroll a patient."""

    appointment_types: list[str] | None = Field(None, description="Only these appointment types.")
    min_age: int | None = Field(None, ge=0, le=150)
    max_age: int | None = Field(None, ge=0, le=150)


class TriggerData(_Strict):
    """The event that enrolls a patient, its filters and the DAG's schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field("", max_length=200)
    event: Literal[
        "appointment_created",
        "appointment_completed",
        "appointment_cancelled",
        "appointment_no_show",
        "appointment_rescheduled",
    ]
    filters: TriggerFilters = Field(default_factory=lambda: TriggerFilters())
    schedule: str = Field("@daily", description="@daily, @hourly or a five-field cron expression.")

    @field_validator("schedule", mode="before")
    @classmethod
    def _one_space_between_fields(cls, value: object) -> object:
        """`` @daily `` is ``@daily``, ``0  9 * * *`` is ``0 9 * * *``: what Airflow's timetable accepts."""
        return " ".join(value.split()) if isinstance(value, str) else value


class ActionData(_Strict):
    """Send one message per execution on a channel."""

    label: str = Field("", max_length=200)
    channel: Literal["sms", "lms", "kakao", "email"]
    template: str = Field(min_length=1, max_length=20000)
    subject: str | None = Field(None, max_length=500, description="Email subject (required for email).")
    purpose: Literal["care", "marketing"] = "care"
    max_lateness: Duration | None = Field(None, description="Overrides the workflow's max_lateness.")


class Rule(_Strict):
    """One comparison of a fact with a value."""

    field: str = Field(min_length=1, max_length=100)
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "contains"]
    value: Any = None


class RuleGroup(_Strict):
    """Rules combined with ``all`` (and) or ``any`` (or); groups nest."""

    all: list[Rule | RuleGroup] | None = None
    any: list[Rule | RuleGroup] | None = None

    @model_validator(mode="after")
    def _one_combinator(self) -> RuleGroup:
        if (self.all is None) == (self.any is None):
            raise ValueError("a rule group needs exactly one of 'all' or 'any'")
        return self


class ConditionData(_Strict):
    """Route each execution to the ``true`` or the ``false`` handle."""

    label: str = Field("", max_length=200)
    all: list[Rule | RuleGroup] | None = None
    any: list[Rule | RuleGroup] | None = None

    @model_validator(mode="after")
    def _one_combinator(self) -> ConditionData:
        if (self.all is None) == (self.any is None):
            raise ValueError("a condition needs exactly one of 'all' or 'any'")
        return self

    def group(self) -> RuleGroup:
        """The condition's rules as one group."""
        return RuleGroup(all=self.all, any=self.any)


class DelayData(_Strict):
    """Wait a duration, or until a time relative to an appointment field."""

    label: str = Field("", max_length=200)
    amount: int | None = Field(None, ge=0, le=3650)
    unit: Literal["minutes", "hours", "days", "weeks"] | None = None
    until: (
        Literal["appointment.scheduled_at", "appointment.created_at", "appointment.completed_at"] | None
    ) = None
    offset: SignedDuration | None = None
    at: str | None = Field(
        None,
        pattern=HHMM_PATTERN,
        description="Local time of day, HH:MM, at which a wait until a field, or in days or weeks, ends.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> DelayData:
        by_duration = self.amount is not None or self.unit is not None
        if by_duration and self.until is not None:
            raise ValueError("a delay is either a duration (amount, unit) or 'until' a field, not both")
        if not by_duration and self.until is None:
            raise ValueError("a delay needs 'amount' and 'unit', or 'until'")
        if by_duration and (self.amount is None or self.unit is None):
            raise ValueError("a duration delay needs both 'amount' and 'unit'")
        if by_duration and self.offset is not None:
            raise ValueError("'offset' only applies to a delay 'until' a field")
        return self

    def duration(self) -> Duration | None:
        """The fixed duration, or None for an ``until`` delay."""
        if self.amount is None or self.unit is None:
            return None
        return Duration(amount=self.amount, unit=self.unit)

    def names_a_day(self) -> bool:
        """Whether it waits until a field on a day of the calendar: with ``at``, or an offset in days or weeks.

        "10:00 on the day before the appointment" is for that day only (``engine.delays.day_passed``).
        """
        if self.until is None:
            return False
        return self.at is not None or (self.offset is not None and self.offset.unit in ("days", "weeks"))


class TimeWindowData(_Strict):
    """Days and hours when messages may go out; ``start > end`` is an overnight window."""

    label: str = Field("", max_length=200)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS),  # type: ignore[arg-type]
    )
    start: str = Field(pattern=HHMM_PATTERN)
    end: str = Field(pattern=HHMM_PATTERN)
    timezone: str | None = Field(
        None, description="Overrides the clinic's timezone (the patient's own wins)."
    )


class _NodeBase(BaseModel):
    # UI fields (position, measured…) are dropped; meaningful unknown fields are reported by the validator.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=ID_PATTERN)


class TriggerNode(_NodeBase):
    type: Literal["trigger"]
    data: TriggerData


class ActionNode(_NodeBase):
    type: Literal["action"]
    data: ActionData


class ConditionNode(_NodeBase):
    type: Literal["condition"]
    data: ConditionData


class DelayNode(_NodeBase):
    type: Literal["delay"]
    data: DelayData


class TimeWindowNode(_NodeBase):
    type: Literal["timeWindow"]
    data: TimeWindowData


Node = Annotated[
    TriggerNode | ActionNode | ConditionNode | DelayNode | TimeWindowNode, Field(discriminator="type")
]


class Edge(BaseModel):
    """A connection; condition edges leave on the ``true`` or ``false`` handle."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    source: str
    target: str
    sourceHandle: str | None = None  # noqa: N815 - React Flow's name
    targetHandle: str | None = None  # noqa: N815


class Workflow(BaseModel):
    """A workflow as stored: React Flow export plus careflow's fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal["1.0"] = Field(SCHEMA_VERSION, description="careflow workflow schema version.")
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    clinic_id: str = Field(min_length=1, max_length=64)
    status: Literal["draft", "active", "paused", "archived"] = Field(
        "active",
        description=(
            "Only an active workflow runs. Published paused (or as a draft), its executions in "
            "flight wait where they are until a version is published active; published archived, "
            "it is retired and they end."
        ),
    )
    timezone: str = "Asia/Seoul"
    settings: WorkflowSettings = Field(default_factory=lambda: WorkflowSettings())
    nodes: list[Node] = Field(max_length=MAX_NODES)
    edges: list[Edge] = Field(default_factory=list, max_length=MAX_EDGES)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from careflow.workflow.timezones import check_timezone

        check_timezone(value)
        return value

    def node(self, node_id: str) -> TriggerNode | ActionNode | ConditionNode | DelayNode | TimeWindowNode:
        """The node with this id (KeyError when absent)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def trigger(self) -> TriggerNode:
        """The workflow's single trigger node."""
        return next(n for n in self.nodes if isinstance(n, TriggerNode))


AnyNode = TriggerNode | ActionNode | ConditionNode | DelayNode | TimeWindowNode
