"""Optimisation suggestions: they fire where a clinic admin would want them, and only there."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from careflow.engine.delays import day_passed, release_time
from careflow.workflow.models import DelayData
from careflow.workflow.validation import validate_workflow

from .builders import base, data, edge


def codes(workflow) -> list[str]:
    return validate_workflow(workflow).codes


def insert_after_d1(workflow, node) -> None:
    workflow["nodes"].append(node)
    edge(workflow, "e2").update(target=node["id"])
    workflow["edges"].append({"id": "e9", "source": node["id"], "target": "c1"})


def test_mergeable_delays_name_the_total():
    workflow = base()
    insert_after_d1(workflow, {"id": "d2", "type": "delay", "data": {"amount": 4, "unit": "days"}})
    report = validate_workflow(workflow)
    [hint] = [d for d in report.warnings if d.code == "DELAYS_MERGEABLE"]
    assert "1 weeks" in hint.message and report.ok


def test_delays_are_not_mergeable_when_the_first_waits_for_a_time_of_day_or_the_chain_branches():
    workflow = base()
    data(workflow, "d1")["at"] = "10:00"
    insert_after_d1(workflow, {"id": "d2", "type": "delay", "data": {"amount": 4, "unit": "days"}})
    assert "DELAYS_MERGEABLE" not in codes(workflow)

    workflow = base()
    insert_after_d1(workflow, {"id": "d2", "type": "delay", "data": {"amount": 4, "unit": "days"}})
    workflow["nodes"].append(
        {"id": "a2", "type": "action", "data": {"channel": "kakao", "template": "{{ clinic.name }}"}}
    )
    workflow["edges"].append({"id": "e10", "source": "d1", "target": "a2"})
    assert "DELAYS_MERGEABLE" not in codes(workflow)


def test_retention_counts_the_waits_along_the_path():
    workflow = base()
    data(workflow, "d1").update(amount=20, unit="weeks")  # 140 days: fine alone
    insert_after_d1(workflow, {"id": "w2", "type": "timeWindow", "data": {"start": "09:00", "end": "18:00"}})
    workflow["nodes"].append({"id": "d3", "type": "delay", "data": {"amount": 8, "unit": "weeks"}})
    edge(workflow, "e9").update(target="d3")
    workflow["edges"].append({"id": "e11", "source": "d3", "target": "c1"})
    report = validate_workflow(workflow)
    hits = [d for d in report.warnings if d.code == "DELAY_EXCEEDS_RETENTION"]
    assert [d.node_id for d in hits] == ["d3"]
    workflow["settings"]["retention_days"] = 365
    assert "DELAY_EXCEEDS_RETENTION" not in codes(workflow)


def test_a_care_message_behind_an_overnight_window_is_fine_but_marketing_is_warned():
    workflow = base()
    data(workflow, "w1").update(start="22:00", end="06:00")
    assert "MARKETING_WINDOW_AT_NIGHT" not in codes(workflow)
    data(workflow, "a1")["purpose"] = "marketing"
    assert "MARKETING_WINDOW_AT_NIGHT" in codes(workflow)


def test_the_quiet_hours_warnings_say_what_the_engine_does_at_night():
    # The engine holds a marketing message until 08:00 (docs/contracts.md §2); it skips nothing.
    night = base()
    data(night, "w1").update(start="22:00", end="06:00")
    data(night, "a1")["purpose"] = "marketing"
    unguarded = base()  # a delay between the window and the action
    data(unguarded, "a1")["purpose"] = "marketing"
    unguarded["nodes"].append({"id": "d2", "type": "delay", "data": {"amount": 2, "unit": "hours"}})
    edge(unguarded, "e4").update(target="d2")
    unguarded["edges"].append({"id": "e5", "source": "d2", "target": "a1"})
    for workflow, code in ((night, "MARKETING_WINDOW_AT_NIGHT"), (unguarded, "MARKETING_WITHOUT_WINDOW")):
        [warning] = [d for d in validate_workflow(workflow).warnings if d.code == code]
        assert "held until 08:00" in warning.message and "skipped" not in warning.message


def test_a_delay_between_window_and_marketing_action_breaks_the_window():
    workflow = base()
    data(workflow, "a1")["purpose"] = "marketing"
    assert validate_workflow(workflow).warnings == []
    workflow["nodes"].append({"id": "d2", "type": "delay", "data": {"amount": 2, "unit": "hours"}})
    edge(workflow, "e4").update(target="d2")
    workflow["edges"].append({"id": "e5", "source": "d2", "target": "a1"})
    assert "MARKETING_WITHOUT_WINDOW" in codes(workflow)


def add_branch(workflow, edge_id: str, handle: str, target: str) -> None:
    workflow["edges"].append({"id": edge_id, "source": "c1", "target": target, "sourceHandle": handle})


def test_a_condition_is_redundant_only_when_both_branches_lead_to_the_same_steps():
    workflow = base()
    workflow["nodes"].append(
        {
            "id": "a2",
            "type": "action",
            "data": {"label": "예약 안내", "channel": "sms", "template": "{{ clinic.name }}"},
        }
    )
    add_branch(workflow, "e5", "false", "w1")
    add_branch(workflow, "e6", "false", "a2")  # true -> w1; false -> w1 and a2: the condition decides a2
    assert "CONDITION_REDUNDANT" not in codes(workflow)
    add_branch(workflow, "e7", "true", "a2")  # true and false -> w1 and a2: it decides nothing
    [hint] = [d for d in validate_workflow(workflow).warnings if d.code == "CONDITION_REDUNDANT"]
    assert hint.node_id == "c1" and "a2" in hint.message and "w1" in hint.message


def test_siblings_are_not_chained_actions():
    workflow = base()
    workflow["nodes"].append(
        {"id": "a2", "type": "action", "data": {"channel": "kakao", "template": "{{ clinic.name }}"}}
    )
    workflow["edges"].append({"id": "e5", "source": "w1", "target": "a2"})
    report = validate_workflow(workflow)
    assert report.ok and report.warnings == []


def test_overnight_window_opens_and_equal_times_never_do():
    workflow = base()
    data(workflow, "w1").update(start="22:00", end="06:00")
    assert "WINDOW_NEVER_OPENS" not in codes(workflow)
    data(workflow, "w1").update(start="09:00", end="09:00")
    assert "WINDOW_NEVER_OPENS" in codes(workflow)


def test_a_reminder_before_the_appointment_is_not_in_the_past_for_new_bookings():
    workflow = base()
    data(workflow, "t1").update(event="appointment_created", filters={})
    data(workflow, "d1").clear()
    data(workflow, "d1").update(
        until="appointment.scheduled_at", offset={"amount": -1, "unit": "days"}, at="10:00"
    )
    assert "DELAY_UNTIL_PAST" not in codes(workflow)
    data(workflow, "t1")["event"] = "appointment_no_show"
    assert "DELAY_UNTIL_PAST" in codes(workflow)


def until_hints(delay: dict, event: str = "appointment_completed") -> list[str]:
    """The DELAY_UNTIL_PAST messages for the base workflow with d1 set to ``delay``."""
    workflow = base()
    data(workflow, "t1")["event"] = event
    data(workflow, "d1").clear()
    data(workflow, "d1").update(delay)
    return [d.message for d in validate_workflow(workflow).warnings if d.code == "DELAY_UNTIL_PAST"]


def test_a_wait_until_a_field_at_a_time_of_day_may_not_have_passed_yet():
    # The engine releases at 18:00 on the completion day: anyone completed before 18:00 waits.
    [hint] = until_hints({"until": "appointment.completed_at", "at": "18:00"})
    assert "may have passed" in hint and "already passed" not in hint and "0 days at 18:00" in hint


def test_a_positive_offset_in_hours_with_a_time_of_day_can_land_earlier_the_same_day():
    # completed_at + 1 hour, at 08:00: 08:00 on the completion day for anyone completed before 23:00.
    [hint] = until_hints(
        {"until": "appointment.completed_at", "offset": {"amount": 1, "unit": "hours"}, "at": "08:00"}
    )
    assert "may have passed" in hint and "08:00 on the day of appointment.completed_at +1 hours" in hint
    # 20 hours later at 18:00: the completion day only for a completion before 04:00, and then still ahead.
    assert (
        until_hints(
            {"until": "appointment.completed_at", "offset": {"amount": 20, "unit": "hours"}, "at": "18:00"}
        )
        == []
    )


@pytest.mark.parametrize(
    "delay",
    [
        {"until": "appointment.completed_at"},
        {"until": "appointment.completed_at", "offset": {"amount": -2, "unit": "hours"}},
        {"until": "appointment.completed_at", "at": "00:00"},
    ],
)
def test_a_wait_that_always_ends_before_the_event_is_warned_as_already_passed(delay):
    [hint] = until_hints(delay)
    assert "already passed" in hint and "may have passed" not in hint


@pytest.mark.parametrize(
    "delay",
    [
        {"until": "appointment.completed_at", "offset": {"amount": -1, "unit": "days"}, "at": "18:00"},
        {"until": "appointment.completed_at", "offset": {"amount": -1, "unit": "days"}},
        {"until": "appointment.scheduled_at", "offset": {"amount": -30, "unit": "hours"}, "at": "23:00"},
    ],
)
def test_a_wait_for_a_day_before_the_event_is_warned_that_every_patient_leaves(delay):
    [hint] = until_hints(delay)
    assert "every patient leaves the workflow here (release_day_passed)" in hint


@pytest.mark.parametrize(
    "delay",
    [
        {"until": "appointment.completed_at", "offset": {"amount": 2, "unit": "hours"}},
        {"until": "appointment.completed_at", "offset": {"amount": 1, "unit": "days"}, "at": "08:00"},
        {"until": "appointment.completed_at", "offset": {"amount": 1, "unit": "weeks"}, "at": "00:00"},
    ],
)
def test_a_wait_that_ends_after_the_event_is_not_warned(delay):
    assert until_hints(delay) == []


SEOUL, NEW_YORK = ZoneInfo("Asia/Seoul"), ZoneInfo("America/New_York")
OFFSETS = [None] + [
    {"amount": amount, "unit": unit}
    for amount, unit in [
        (0, "days"),
        (-1, "days"),
        (1, "days"),
        (1, "weeks"),
        (-30, "minutes"),
        (-1, "hours"),
        (1, "hours"),
        (16, "hours"),
        (20, "hours"),
        (-24, "hours"),
        (-26, "hours"),
    ]
]


@pytest.mark.parametrize("tz", [SEOUL, NEW_YORK], ids=["Seoul", "New_York"])
def test_the_until_hint_follows_the_release_time_the_engine_computes(tz):
    # Completions every 20 minutes over a normal day and both daylight-saving days (New York), each
    # released by the engine with completed_at = the event: what the hint says must hold for them.
    events = [
        datetime(year, month, day, tzinfo=tz).astimezone(timezone.utc) + timedelta(minutes=20 * step)
        for year, month, day in [(2026, 6, 10), (2026, 3, 8), (2026, 11, 1)]
        for step in range(72)
    ]
    for offset in OFFSETS:
        for at in (None, "00:00", "08:00", "18:00", "23:30"):
            delay = {"until": "appointment.completed_at", "offset": offset, "at": at}
            delay = {key: value for key, value in delay.items() if value is not None}
            model = DelayData(**delay)
            releases = {
                event: release_time(model, event, {"appointment": {"completed_at": event}}, tz)
                for event in events
            }
            passed = {release <= event for event, release in releases.items()}
            # Found by the run that enrolls it (at the event, the earliest one can): its day over?
            over = {day_passed(model, release, event, tz) for event, release in releases.items()}
            [hint] = until_hints(delay) or [None]
            if hint is None:
                assert passed == {False}, delay
            elif "every patient leaves" in hint:
                assert over == {True}, delay
            elif "already passed" in hint:
                assert passed == {True}, delay
            else:
                assert "may have passed" in hint and True in passed, delay
            if True in over:
                assert hint is not None and "leaves the workflow here (release_day_passed)" in hint, delay


def test_lateness_is_compared_with_the_cron_gap():
    workflow = base()
    data(workflow, "t1")["schedule"] = "0 9 * * 1-5"  # weekdays: the weekend gap is 72 hours
    assert "LATENESS_BELOW_SCHEDULE" in codes(workflow)
    data(workflow, "a1")["max_lateness"] = {"amount": 3, "unit": "days"}
    assert "LATENESS_BELOW_SCHEDULE" not in codes(workflow)


def test_no_graph_suggestions_on_a_graph_with_dropped_nodes():
    workflow = base()
    workflow["nodes"][3]["type"] = "window"
    report = validate_workflow(workflow)
    assert report.codes == ["NODE_UNKNOWN_TYPE"]


def test_ui_fields_are_silent_and_unknown_fields_are_one_info():
    workflow = base()
    workflow["viewport"] = {"x": 0, "y": 0, "zoom": 1}
    workflow["nodes"][0].update(position={"x": 1, "y": 2}, measured={"width": 1, "height": 1}, selected=True)
    workflow["edges"][0].update(type="smoothstep", markerEnd={"type": "arrowclosed"}, animated=True)
    assert validate_workflow(workflow).diagnostics[-1].code == "CONDITION_BRANCH_EMPTY"
    workflow["team"] = "front"
    workflow["nodes"][0]["icon"] = "bell"
    workflow["nodes"][1]["icon"] = "clock"
    workflow["edges"][0]["weight"] = 3
    report = validate_workflow(workflow)
    ignored = [d for d in report.diagnostics if d.code == "FIELD_IGNORED"]
    assert len(ignored) == 1 and report.ok
    assert "team" in ignored[0].message and "icon" in ignored[0].message and "weight" in ignored[0].message
