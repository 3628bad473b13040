"""Optimisation suggestions: warnings and infos about workflows that are valid but wasteful or surprising.

Unreachable nodes, dead ends, windows that never open, delays that could be one, actions that
could run in parallel, waits longer than the retention, marketing that quiet hours will skip.
"""

from __future__ import annotations

from typing import Any, Literal

from careflow.workflow.diagnostics import Diagnostic, make
from careflow.workflow.graph_checks import Graph, NodeRef
from careflow.workflow.models import Duration, SignedDuration, WorkflowSettings
from careflow.workflow.schedules import longest_gap

#: Marketing messages are skipped outside 08:00-21:00 without night consent (docs/contracts.md §2).
QUIET_ENDS, QUIET_STARTS = 8 * 60, 21 * 60

#: Fields of an appointment that are never later than the trigger event, per event.
PAST_AT_EVENT: dict[str, frozenset[str]] = {
    "appointment_created": frozenset({"appointment.created_at"}),
    "appointment_completed": frozenset(
        {"appointment.created_at", "appointment.scheduled_at", "appointment.completed_at"}
    ),
    "appointment_no_show": frozenset({"appointment.created_at", "appointment.scheduled_at"}),
    "appointment_cancelled": frozenset({"appointment.created_at"}),
    "appointment_rescheduled": frozenset({"appointment.created_at"}),
}

#: The longest a local day lasts: a fall-back day is 26 hours where clocks go back two (Antarctica/Troll).
LONGEST_DAY_MINUTES = 26 * 60


def suggest(graph: Graph, settings: WorkflowSettings) -> list[Diagnostic]:
    """Every suggestion for a graph whose edges are usable (nodes may lack a model)."""
    found: list[Diagnostic] = []
    found.extend(_node_suggestions(graph))
    if graph.nodes and not any(n.type == "action" for n in graph.nodes.values()):
        found.append(make("WF_NO_ACTIONS", "The workflow has no action node: it never sends a message"))
    if graph.trigger_id is None or not graph.complete:
        return found
    found.extend(_reachability(graph))
    found.extend(_condition_branches(graph))
    found.extend(_chains(graph))
    found.extend(_lateness(graph, settings))
    found.extend(_until_in_past(graph))
    if graph.order is not None:
        found.extend(_retention(graph, settings))
        found.extend(_marketing(graph))
    return found


def _node_suggestions(graph: Graph) -> list[Diagnostic]:
    found = []
    for node in graph.nodes.values():
        model = node.model
        if model is None:
            continue
        if node.type == "timeWindow":
            if not model.days:
                found.append(
                    make(
                        "WINDOW_NEVER_OPENS",
                        f"{node.title}: no day is selected, so the window never opens and nobody gets past it",
                        node_id=node.id,
                        field="data.days",
                    )
                )
            elif model.start == model.end:
                found.append(
                    make(
                        "WINDOW_NEVER_OPENS",
                        f"{node.title}: it opens and closes at {model.start}, so it never opens; for an "
                        "overnight window put the later time first (22:00-06:00)",
                        node_id=node.id,
                        field="data.end",
                    )
                )
        elif node.type == "delay" and model.amount == 0 and model.at is None:
            found.append(
                make(
                    "DELAY_ZERO",
                    f"{node.title}: a delay of 0 {model.unit} waits for nothing; remove it",
                    node_id=node.id,
                    field="data.amount",
                )
            )
    return found


def _reachability(graph: Graph) -> list[Diagnostic]:
    found = []
    for node in graph.nodes.values():
        if node.id not in graph.reachable:
            found.append(
                make(
                    "NODE_UNREACHABLE",
                    f"{node.title} is not connected to the trigger, so it never runs; connect it or delete it",
                    node_id=node.id,
                )
            )
        elif node.type != "action" and not graph.succ[node.id]:
            found.append(
                make(
                    "NODE_DEAD_END",
                    f"{node.title} leads nowhere: nothing happens after it. Connect it to the next step "
                    "or delete it",
                    node_id=node.id,
                )
            )
    return found


def _condition_branches(graph: Graph) -> list[Diagnostic]:
    found = []
    for node in graph.nodes.values():
        if node.type != "condition" or node.id not in graph.reachable or not graph.succ[node.id]:
            continue
        targets = {h: {e.target for e in graph.succ[node.id] if e.handle == h} for h in ("true", "false")}
        for handle in ("true", "false"):
            if not targets[handle]:
                found.append(
                    make(
                        "CONDITION_BRANCH_EMPTY",
                        f"{node.title}: nothing is connected to its '{handle}' branch; patients for whom "
                        f"the condition is {handle} leave the workflow here",
                        node_id=node.id,
                    )
                )
        # Only identical branches make the condition pointless: when one branch also leads somewhere
        # the other does not (true -> w1; false -> w1 and a2), the condition decides who goes there.
        if targets["true"] and targets["true"] == targets["false"]:
            names = " and ".join(graph.nodes[target].title for target in sorted(targets["true"]))
            found.append(
                make(
                    "CONDITION_REDUNDANT",
                    f"{node.title}: both branches lead to {names} and nowhere else, so the condition "
                    "changes nothing; delete it, or connect one branch to a different step",
                    node_id=node.id,
                )
            )
    return found


def _chains(graph: Graph) -> list[Diagnostic]:
    found = []
    for edge in graph.edges:
        if edge.source not in graph.reachable:
            continue
        first, second = graph.nodes[edge.source], graph.nodes[edge.target]
        if first.type == second.type == "action":
            found.append(
                make(
                    "ACTIONS_CHAINED",
                    f"{second.title} is sent right after {first.title} with no wait between; connect both "
                    f"to the step before {first.id} so they go out in parallel",
                    node_id=second.id,
                    edge_id=edge.id,
                )
            )
        elif (
            first.type == second.type == "delay"
            and _is_duration(first)
            and _is_duration(second)
            and first.model.at is None
            and second.model.at is None
            and len(graph.succ[first.id]) == 1
            and len(graph.pred[second.id]) == 1
        ):
            total = _human(first.model.duration().minutes() + second.model.duration().minutes())
            found.append(
                make(
                    "DELAYS_MERGEABLE",
                    f"{first.title} and {second.title} wait one after the other with nothing between; "
                    f"one delay of {total} does the same",
                    node_id=second.id,
                    edge_id=edge.id,
                )
            )
    return found


def _is_duration(node: NodeRef) -> bool:
    return node.type == "delay" and node.model is not None and node.model.duration() is not None


def _human(minutes: int) -> str:
    for unit, size in (("weeks", 10080), ("days", 1440), ("hours", 60)):
        if minutes and minutes % size == 0:
            return f"{minutes // size} {unit}"
    return f"{minutes} minutes"


def _trigger_model(graph: Graph) -> Any:
    assert graph.trigger_id is not None
    return graph.nodes[graph.trigger_id].model


def _lateness(graph: Graph, settings: WorkflowSettings) -> list[Diagnostic]:
    trigger = _trigger_model(graph)
    gap = longest_gap(trigger.schedule) if trigger is not None else None
    if gap is None:
        return []
    gap_minutes = int(gap.total_seconds() // 60)
    found = []
    for node in graph.nodes.values():
        if node.type != "action" or node.model is None or node.id not in graph.reachable:
            continue
        lateness: Duration = node.model.max_lateness or settings.max_lateness
        if lateness.minutes() < gap_minutes:
            found.append(
                make(
                    "LATENESS_BELOW_SCHEDULE",
                    f"{node.title}: messages expire {_human(lateness.minutes())} after they are due, but the "
                    f"workflow runs only every {_human(gap_minutes)} ({trigger.schedule}); a send that fails "
                    "once can never be retried. Raise max_lateness or run more often",
                    node_id=node.id,
                    field="data.max_lateness",
                )
            )
    return found


def _until_in_past(graph: Graph) -> list[Diagnostic]:
    trigger = _trigger_model(graph)
    if trigger is None:
        return []
    past = PAST_AT_EVENT.get(trigger.event, frozenset())
    found = []
    for node in graph.nodes.values():
        model = node.model
        if node.type != "delay" or model is None or model.until not in past or node.id not in graph.reachable:
            continue
        passed = _release_passed(model.offset, model.at)
        if passed is None:
            continue
        offset = "" if model.offset is None else f" {model.offset.amount:+d} {model.offset.unit}"
        release = (
            f"{model.until}{offset}"
            if model.at is None
            else f"{model.at} on the day of {model.until}{offset}"
        )
        # The engine does not release a wait that names a day once that day is over (release_day_passed).
        day_over = (
            "; a patient enrolled on a later day than that leaves the workflow here (release_day_passed)"
            if model.names_a_day()
            else ""
        )
        if passed == "earlier_day":
            message = (
                f"{node.title}: it waits until {release}, a day before the day '{trigger.event}' enrolls "
                "the patient; a wait for a day that is over is not released late, so every patient leaves "
                "the workflow here (release_day_passed). Use a positive offset or a duration"
            )
        elif passed == "always":
            message = (
                f"{node.title}: it waits until {release}, which has already passed when '{trigger.event}' "
                f"enrolls the patient; the delay ends at once{day_over}. Use a positive offset or a duration"
            )
        else:
            when = "is" if model.offset is None or model.offset.minutes() <= 0 else "can be"
            earlier = ", or an earlier one" if when == "is" else ""
            message = (
                f"{node.title}: it waits until {release}; that day {when} the day '{trigger.event}' enrolls "
                f"the patient{earlier}, so it may have passed: for a patient enrolled after {model.at} that "
                f"day, the delay ends at once instead of waiting for the next {model.at}"
                f"{day_over if earlier else ''}. Use a delay of 0 days at {model.at} to wait for the next "
                f"{model.at}, or a positive offset in days for a later day"
            )
        found.append(make("DELAY_UNTIL_PAST", message, node_id=node.id, field="data.until"))
    return found


def _release_passed(
    offset: SignedDuration | None, at: str | None
) -> Literal["earlier_day", "always", "maybe"] | None:
    """Whether a wait until a field never later than the trigger event ends before that event.

    Mirrors careflow.engine.delays: the field plus the offset (minutes and hours elapsed, days and
    weeks on the local calendar), then, with ``at``, that local time on the resulting local date.
    "earlier_day" when the wait names a day (``at``, or an offset in days or weeks) and that day is
    always before the event's, so the engine never releases it (``day_passed``); "maybe" when it
    depends on the time of day of the event; None when it never ends before it (for a positive
    offset: taking the field at the event, the latest it can be).
    """
    minutes = 0 if offset is None else offset.minutes()
    in_days = offset is not None and offset.unit in ("days", "weeks")
    if at is None:
        if minutes < 0 and in_days:
            return "earlier_day"  # whole local days before the field's date
        return "always" if minutes <= 0 else None
    if minutes < 0 and (in_days or minutes <= -LONGEST_DAY_MINUTES):
        return "earlier_day"  # a local date before the field's, so before the event's
    if minutes <= 0:
        # The field's local date or an earlier one, so the event's or an earlier one. Midnight of it
        # is never after the event; a later time is after an event earlier on that date.
        return "always" if _minutes(at) == 0 else "maybe"
    if in_days:
        return None  # a local date after the field's
    # Hours later: still the event's date for an event before midnight minus the offset, and `at` has
    # passed for an event after `at`.
    return "maybe" if _minutes(at) + minutes < 24 * 60 else None


def _retention(graph: Graph, settings: WorkflowSettings) -> list[Diagnostic]:
    limit = settings.retention_days * 1440
    waited: dict[str, int] = {}
    found = []
    assert graph.order is not None
    for node_id in graph.order:
        if node_id not in graph.reachable:
            continue
        before = max((waited[e.source] for e in graph.pred[node_id] if e.source in waited), default=0)
        node = graph.nodes[node_id]
        own = node.model.duration().minutes() if _is_duration(node) else 0
        waited[node_id] = before + own
        if node.type == "delay" and waited[node_id] > limit >= before:
            found.append(
                make(
                    "DELAY_EXCEEDS_RETENTION",
                    f"{node.title}: patients reach it after waiting up to {_human(waited[node_id])}, longer "
                    f"than the {settings.retention_days} days executions are kept (settings.retention_days); "
                    "raise the retention or shorten the waits",
                    node_id=node_id,
                )
            )
    return found


def _marketing(graph: Graph) -> list[Diagnostic]:
    # For each node: the windows that last gated every path to it ("" = a path with no window since the
    # last wait). Conditions and actions take no time, so a window before them still holds.
    gates: dict[str, set[str]] = {}
    found = []
    assert graph.order is not None
    for node_id in graph.order:
        if node_id not in graph.reachable:
            continue
        node = graph.nodes[node_id]
        if node.type == "timeWindow":
            gates[node_id] = {node_id}
        elif node.type in ("trigger", "delay"):
            gates[node_id] = {""}
        else:
            gates[node_id] = set().union(*(gates.get(e.source, {""}) for e in graph.pred[node_id])) or {""}
        if node.type != "action" or node.model is None or node.model.purpose != "marketing":
            continue
        if "" in gates[node_id]:
            found.append(
                make(
                    "MARKETING_WITHOUT_WINDOW",
                    f"{node.title} is a marketing message with no time window right before it; between 21:00 "
                    "and 08:00 it is held until 08:00 for patients without night consent (and expires if "
                    "that is past its max_lateness). Put a window such as 09:00-20:00 before it",
                    node_id=node_id,
                )
            )
            continue
        for window_id in sorted(gates[node_id]):
            window = graph.nodes[window_id].model
            if window is not None and _opens_at_night(window.start, window.end):
                found.append(
                    make(
                        "MARKETING_WINDOW_AT_NIGHT",
                        f"{node.title} is a marketing message behind {graph.nodes[window_id].title} "
                        f"({window.start}-{window.end}), which is open during quiet hours (21:00-08:00), "
                        "when marketing is held until 08:00 for patients without night consent; keep the "
                        "window within 08:00-21:00",
                        node_id=node_id,
                    )
                )
                break
    return found


def _opens_at_night(start: str, end: str) -> bool:
    begin, finish = _minutes(start), _minutes(end)
    if begin == finish:
        return False  # never opens; WINDOW_NEVER_OPENS says so
    if begin > finish:
        return True  # overnight
    return begin < QUIET_ENDS or finish > QUIET_STARTS


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)
