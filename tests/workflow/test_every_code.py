"""Every diagnostic code in the registry has an example that produces it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from careflow.workflow import validation
from careflow.workflow.diagnostics import CODES
from careflow.workflow.validation import ValidationReport, validate_path, validate_workflow

from .builders import base, chain, data, edge, node

try:
    import careflow.templates  # noqa: F401

    HAVE_TEMPLATES = True
except ImportError:
    HAVE_TEMPLATES = False

#: Codes only the template checker (careflow.templates) produces.
TEMPLATE_CHECKER_CODES = {
    "ACTION_TEMPLATE_UNSAFE",
    "ACTION_TEMPLATE_UNKNOWN_VARIABLE",
    "ACTION_TEMPLATE_CHANNEL_LIMIT",
    "ACTION_TEMPLATE_EMPTY",
}

#: Codes no example can produce yet, with the reason. Keep it empty when you can.
NOT_YET_TRIGGERABLE: dict[str, str] = (
    {}
    if HAVE_TEMPLATES
    else {
        code: "needs careflow.templates (the Jinja2 fallback checks syntax only)"
        for code in TEMPLATE_CHECKER_CODES
    }
)

Case = tuple[Callable[[], ValidationReport], dict[str, Any]]
CASES: dict[str, Case] = {}


def case(code: str, **where: Any) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register an example for ``code``; ``where`` is the node_id / edge_id / field it must name."""

    def register(build: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> ValidationReport:
            made = build()
            return made if isinstance(made, ValidationReport) else validate_workflow(made)

        assert code not in CASES, code
        CASES[code] = (run, where)
        return build

    return register


def broken(mutate: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    workflow = base()
    mutate(workflow)
    return workflow


# --- the document --------------------------------------------------------------------------------

case("WF_UNREADABLE")(lambda: validate_path(Path("/nonexistent/careflow/workflow.json")))
case("WF_EMPTY")(lambda: b"  \n\t")
case("WF_NOT_JSON")(lambda: '{"id": "x", "nodes": [}')
case("WF_NOT_OBJECT")(lambda: "[]")
case("WF_TOO_LARGE", field="nodes")(lambda: chain(1001))
case("WF_TOO_DEEP")(lambda: "[" * 100_000)
case("WF_MISSING_FIELD", field="name")(lambda: broken(lambda w: w.pop("name")))
case("WF_BAD_FIELD", field="clinic_id")(lambda: broken(lambda w: w.update(clinic_id=42)))
case("WF_BAD_SCHEMA_VERSION", field="schema_version")(
    lambda: broken(lambda w: w.update(schema_version="2.0"))
)
case("WF_BAD_ID", field="id")(lambda: broken(lambda w: w.update(id="implant aftercare")))
case("WF_BAD_STATUS", field="status")(lambda: broken(lambda w: w.update(status="live")))
case("WF_BAD_TIMEZONE", field="timezone")(lambda: broken(lambda w: w.update(timezone="Seoul")))
case("WF_BAD_SETTING", field="settings.retries")(lambda: broken(lambda w: w["settings"].update(retries=50)))
case("FIELD_IGNORED")(lambda: broken(lambda w: w.update(owner_team="front desk")))
case("DIAGNOSTICS_TRUNCATED")(
    lambda: broken(
        lambda w: w["nodes"].extend({"id": f"x{i}", "type": "sticker", "data": {}} for i in range(250))
    )
)
case("WF_NO_ACTIONS")(lambda: broken(lambda w: w.update(nodes=w["nodes"][:1], edges=[])))


@case("WF_INVALID", node_id="d1")
def _final_model_refuses() -> ValidationReport:
    # Fault injection: pretend the node checks pass a delay the model refuses.
    workflow = broken(lambda w: data(w, "d1").update(unit="fortnights"))
    with mock.patch.object(validation, "check_node_data", return_value=([], None)):
        return validate_workflow(workflow)


@case("WF_INTERNAL_ERROR")
def _a_stage_crashes() -> ValidationReport:
    with mock.patch.object(validation, "suggest", side_effect=RuntimeError("boom")):
        return validate_workflow(base())


def _published(
    *workflows: dict[str, Any],
    events: tuple[str, ...] = (),
    clinic_timezone: str | None = None,
    statuses: tuple[str, ...] = (),
    birth_dates: tuple[date | None, ...] = (),
    scheduled_at: datetime = datetime(2026, 3, 2, tzinfo=timezone.utc),
) -> ValidationReport:
    """The report of publishing the last of ``workflows``, each after the other, in a new database
    whose clinic's data holds an event of each type in ``events``, an appointment of each status in
    ``statuses`` at ``scheduled_at``, a patient of each birth date in ``birth_dates`` (and the clinic, with
    ``clinic_timezone``, when one is given)."""
    import tempfile

    from sqlalchemy import create_engine, insert

    from careflow.publishing import publish_report
    from careflow.store import tables
    from careflow.store.migrations import upgrade

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/careflow.db")
        try:
            upgrade(engine)
            with engine.begin() as conn:
                clinic = workflows[-1]["clinic_id"]
                for n, status in enumerate(statuses):
                    conn.execute(
                        insert(tables.appointments).values(
                            id=f"a{n}", patient_id="p1", clinic_id=clinic, type="checkup", status=status,
                            scheduled_at=scheduled_at,
                            created_at=datetime(2026, 3, 1, tzinfo=timezone.utc),
                        )
                    )  # fmt: skip
                for n, born in enumerate(birth_dates):
                    conn.execute(
                        insert(tables.patients).values(
                            id=f"p{n}", clinic_id=clinic, name="환자", birth_date=born
                        )
                    )
                if clinic_timezone is not None:
                    conn.execute(
                        insert(tables.clinics).values(id=clinic, name="clinic", timezone=clinic_timezone)
                    )
                for n, event in enumerate(events):
                    conn.execute(
                        insert(tables.appointment_events).values(
                            id=f"e{n}", appointment_id="a1", patient_id="p1", clinic_id=clinic, type=event,
                            occurred_at=datetime(2026, 3, 2, tzinfo=timezone.utc),
                        )
                    )  # fmt: skip
            for workflow in workflows:
                result = publish_report(validate_workflow(workflow), engine=engine, workflows_dir=Path(tmp))
        finally:
            engine.dispose()
    assert result.report is not None
    return result.report


@case("WF_ID_CASE_CLASH", field="id")
def _published_beside_an_id_that_differs_in_case_alone() -> ValidationReport:
    return _published(base(), broken(lambda w: w.update(id=w["id"].upper())))


@case("WF_ID_OF_ANOTHER_CLINIC", field="clinic_id")
def _published_for_another_clinic() -> ValidationReport:
    return _published(base(), broken(lambda w: w.update(clinic_id="busan-02")))


@case("WF_ID_IN_SEVERAL_FILES", field="id")
def _one_workflow_in_two_files_given_together() -> ValidationReport:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.json", Path(tmp) / "a (1).json"
        first.write_text(json.dumps(base()), encoding="utf-8")
        second.write_text(json.dumps(broken(lambda w: w.update(name="edited"))), encoding="utf-8")
        return validation.validate_paths([first, second])[0]


@case("WF_CLINIC_UNKNOWN", field="clinic_id")
def _published_where_the_clinic_data_has_no_such_clinic() -> ValidationReport:
    return _published(base())  # a new database: its clinics table is empty


@case("TRIGGER_TYPE_UNSEEN", node_id="t1", field="data.filters.appointment_types")
def _published_where_the_clinic_names_its_appointment_types_its_own_way() -> ValidationReport:
    # the event's appointment (a1) is a checkup; the trigger enrolls implant_surgery alone
    return _published(base(), events=("appointment_completed",), statuses=("completed", "completed"))


@case("TRIGGER_EVENTS_UNMATCHED", node_id="t1", field="data.event")
def _published_where_the_clinic_data_holds_no_appointment_nor_patient_of_its_events() -> ValidationReport:
    return _published(base(), events=("appointment_completed",))  # of appointment a1 and patient p1


@case("TRIGGER_AGE_UNKNOWN", node_id="t1", field="data.filters")
def _published_where_the_clinic_data_has_no_birth_dates() -> ValidationReport:
    return _published(broken(lambda w: data(w, "t1")["filters"].update(min_age=19)), birth_dates=(None, None))


@case("ACTION_RECIPIENT_UNSEEN", node_id="a1", field="data.channel")
def _published_where_no_patient_has_a_mobile_number() -> ValidationReport:
    return _published(base(), birth_dates=(None, None))  # two patients, neither with a phone


@case("ACTION_CONSENT_UNSEEN", node_id="a1", field="data.purpose")
def _published_a_marketing_action_where_no_patient_consents_to_marketing() -> ValidationReport:
    # consent_marketing is false where the clinic's data leaves it empty
    return _published(broken(lambda w: data(w, "a1").update(purpose="marketing")), birth_dates=(None,))


@case("APPOINTMENT_STATUS_UNKNOWN", field="clinic_id")
def _published_where_the_clinic_spells_its_statuses_its_own_way() -> ValidationReport:
    return _published(base(), statuses=("scheduled", "booked"))


@case("APPOINTMENT_TIMES_SHIFTED", field="clinic_id")
def _published_where_the_clinic_keeps_seoul_wall_times_without_a_zone() -> ValidationReport:
    # 11:00 in Seoul, written without a zone: read as UTC, 20:00 there
    return _published(
        base(), statuses=("scheduled",) * 20, scheduled_at=datetime(2026, 3, 2, 11, tzinfo=timezone.utc)
    )


@case("WF_CLINIC_TIMEZONE_UNKNOWN", field="clinic_id")
def _published_where_the_clinic_data_has_its_timezone_as_kst() -> ValidationReport:
    return _published(base(), clinic_timezone="KST")


@case("WF_DRAFT_STOPS_ACTIVE", field="status")
def _a_draft_published_over_the_active_version() -> ValidationReport:
    return _published(base(), broken(lambda w: w.update(status="draft", name="being edited")))


@case("TRIGGER_EVENT_UNSEEN", node_id="t1", field="data.event")
def _published_where_the_clinic_spells_its_events_its_own_way() -> ValidationReport:
    return _published(base(), events=("completed", "no-show"))


@case("WF_TEXT_UNSTORABLE", field="name")
def _name_the_database_cannot_store() -> ValidationReport:
    # Fault injection: SQLite stores any text; tests/store/test_publishing.py has an EUC_KR Postgres.
    from careflow import publishing

    with mock.patch.object(publishing, "unstorable_character", return_value=("\U0001f9b7", "EUC_KR")):
        return _published(base())


# --- nodes ---------------------------------------------------------------------------------------

case("NODE_MALFORMED", field="nodes[5]")(lambda: broken(lambda w: w["nodes"].append("a1")))
case("NODE_MISSING_ID", field="nodes[1].id")(lambda: broken(lambda w: node(w, "d1").pop("id")))
case("NODE_BAD_ID", node_id="d 1")(lambda: broken(lambda w: node(w, "d1").update(id="d 1")))
case("NODE_DUPLICATE_ID", node_id="d1")(
    lambda: broken(
        lambda w: w["nodes"].append({"id": "d1", "type": "delay", "data": {"amount": 1, "unit": "days"}})
    )
)
case("NODE_MISSING_TYPE", node_id="w1")(lambda: broken(lambda w: node(w, "w1").pop("type")))
case("NODE_UNKNOWN_TYPE", node_id="w1")(lambda: broken(lambda w: node(w, "w1").update(type="time_window")))
case("NODE_MISSING_DATA", node_id="d1")(lambda: broken(lambda w: node(w, "d1").update(data="3 days")))
case("NODE_UNKNOWN_FIELD", node_id="a1", field="data.chanel")(
    lambda: broken(lambda w: data(w, "a1").update(chanel="sms"))
)
case("NODE_BAD_FIELD", node_id="a1", field="data.label")(
    lambda: broken(lambda w: data(w, "a1").update(label=7))
)
case("NODE_UNREACHABLE", node_id="a2")(
    lambda: broken(
        lambda w: w["nodes"].append(
            {
                "id": "a2",
                "type": "action",
                "data": {"channel": "kakao", "template": "{{ patient.name }}님 안녕하세요"},
            }
        )
    )
)
case("NODE_DEAD_END", node_id="w1")(lambda: broken(lambda w: w.update(edges=w["edges"][:3])))

# --- trigger -------------------------------------------------------------------------------------

case("TRIGGER_MISSING")(lambda: broken(lambda w: w.update(nodes=w["nodes"][1:], edges=w["edges"][1:])))
case("TRIGGER_MULTIPLE", node_id="t2")(
    lambda: broken(
        lambda w: (
            w["nodes"].append({"id": "t2", "type": "trigger", "data": {"event": "appointment_cancelled"}}),
            w["edges"].append({"id": "e5", "source": "t2", "target": "d1"}),
        )
    )
)
case("TRIGGER_UNKNOWN_EVENT", node_id="t1", field="data.event")(
    lambda: broken(lambda w: data(w, "t1").update(event="appointment_finished"))
)
case("TRIGGER_BAD_SCHEDULE", node_id="t1", field="data.schedule")(
    lambda: broken(lambda w: data(w, "t1").update(schedule="@once"))
)
case("TRIGGER_BAD_FILTER", node_id="t1")(
    lambda: broken(lambda w: data(w, "t1").update(filters={"appointment_types": []}))
)
case("TRIGGER_HAS_INCOMING", node_id="t1", edge_id="e5")(
    lambda: broken(lambda w: w["edges"].append({"id": "e5", "source": "a1", "target": "t1"}))
)
case("LATENESS_BELOW_SCHEDULE", node_id="a1")(
    lambda: broken(lambda w: data(w, "t1").update(schedule="@weekly"))
)

# --- edges and the graph -------------------------------------------------------------------------

case("EDGE_MALFORMED", field="edges[4]")(lambda: broken(lambda w: w["edges"].append(["t1", "a1"])))
case("EDGE_BAD_FIELD", edge_id="e4", field="edges[3].target")(
    lambda: broken(lambda w: edge(w, "e4").pop("target"))
)
case("EDGE_DUPLICATE_ID", edge_id="e3")(lambda: broken(lambda w: edge(w, "e4").update(id="e3")))
case("EDGE_UNKNOWN_SOURCE", edge_id="e1")(lambda: broken(lambda w: edge(w, "e1").update(source="t9")))
case("EDGE_UNKNOWN_TARGET", edge_id="e4")(lambda: broken(lambda w: edge(w, "e4").update(target="a9")))
case("EDGE_SELF_LOOP", node_id="d1", edge_id="e5")(
    lambda: broken(lambda w: w["edges"].append({"id": "e5", "source": "d1", "target": "d1"}))
)
case("DUPLICATE_EDGE", edge_id="e5")(
    lambda: broken(
        lambda w: w["edges"].append({"id": "e5", "source": "c1", "target": "w1", "sourceHandle": "true"})
    )
)
case("GRAPH_CYCLE", edge_id="e5")(
    lambda: broken(lambda w: w["edges"].append({"id": "e5", "source": "a1", "target": "d1"}))
)

# --- conditions ----------------------------------------------------------------------------------

case("CONDITION_BAD_GROUP", node_id="c1", field="data.all")(
    lambda: broken(lambda w: data(w, "c1").update(all=[]))
)
case("CONDITION_BAD_RULE", node_id="c1", field="data.all[0]")(
    lambda: broken(
        lambda w: data(w, "c1").update(all=[{"field": "patient.age", "op": "gte", "value": 1, "x": 1}])
    )
)
case("CONDITION_UNKNOWN_OPERATOR", node_id="c1", field="data.all[0].op")(
    lambda: broken(lambda w: data(w, "c1")["all"][0].update(op="=="))
)
case("CONDITION_UNKNOWN_FIELD", node_id="c1", field="data.all[0].field")(
    lambda: broken(lambda w: data(w, "c1")["all"][0].update(field="patient.is_vip"))
)
case("CONDITION_BAD_VALUE", node_id="c1", field="data.all[0].value")(
    lambda: broken(lambda w: data(w, "c1")["all"][0].update(op="gt", value=1))
)
case("CONDITION_MISSING_HANDLE", node_id="c1", edge_id="e3")(
    lambda: broken(lambda w: edge(w, "e3").pop("sourceHandle"))
)
case("CONDITION_BAD_HANDLE", node_id="c1", edge_id="e3")(
    lambda: broken(lambda w: edge(w, "e3").update(sourceHandle="source-bottom"))
)
case("CONDITION_BRANCH_EMPTY", node_id="c1")(base)
case("CONDITION_REDUNDANT", node_id="c1")(
    lambda: broken(
        lambda w: w["edges"].append({"id": "e5", "source": "c1", "target": "w1", "sourceHandle": "false"})
    )
)

# --- delays --------------------------------------------------------------------------------------

case("DELAY_BAD_DURATION", node_id="d1", field="data.amount")(
    lambda: broken(lambda w: data(w, "d1").update(amount=2.5))
)
case("DELAY_BAD_UNIT", node_id="d1", field="data.unit")(
    lambda: broken(lambda w: data(w, "d1").update(unit="fortnights"))
)
case("DELAY_BAD_TIME", node_id="d1", field="data.at")(
    lambda: broken(lambda w: data(w, "d1").update(at="10h"))
)
case("DELAY_BAD_UNTIL", node_id="d1", field="data.until")(
    lambda: broken(lambda w: node(w, "d1").update(data={"until": "patient.birth_date"}))
)
case("DELAY_BAD_OFFSET", node_id="d1", field="data.offset.amount")(
    lambda: broken(
        lambda w: node(w, "d1").update(
            data={"until": "appointment.completed_at", "offset": {"amount": "3", "unit": "days"}}
        )
    )
)
case("DELAY_ZERO", node_id="d1")(lambda: broken(lambda w: data(w, "d1").update(amount=0)))
case("DELAYS_MERGEABLE", node_id="d2", edge_id="e2")(
    lambda: broken(
        lambda w: (
            w["nodes"].append({"id": "d2", "type": "delay", "data": {"amount": 12, "unit": "hours"}}),
            edge(w, "e2").update(target="d2"),
            w["edges"].append({"id": "e5", "source": "d2", "target": "c1"}),
        )
    )
)
case("DELAY_EXCEEDS_RETENTION", node_id="d1")(
    lambda: broken(lambda w: data(w, "d1").update(amount=27, unit="weeks"))
)
case("DELAY_UNTIL_PAST", node_id="d1", field="data.until")(
    lambda: broken(
        lambda w: node(w, "d1").update(
            data={
                "until": "appointment.scheduled_at",
                "offset": {"amount": -1, "unit": "days"},
                "at": "10:00",
            }
        )
    )
)

# --- time windows --------------------------------------------------------------------------------

case("WINDOW_BAD_TIME", node_id="w1", field="data.end")(
    lambda: broken(lambda w: data(w, "w1").update(end="24:00"))
)
case("WINDOW_BAD_DAY", node_id="w1", field="data.days[1]")(
    lambda: broken(lambda w: data(w, "w1").update(days=["mon", "Tue"]))
)
case("WINDOW_BAD_TIMEZONE", node_id="w1", field="data.timezone")(
    lambda: broken(lambda w: data(w, "w1").update(timezone="KST"))
)
case("WINDOW_NEVER_OPENS", node_id="w1")(lambda: broken(lambda w: data(w, "w1").update(days=[])))

# --- actions -------------------------------------------------------------------------------------

case("ACTION_UNKNOWN_CHANNEL", node_id="a1", field="data.channel")(
    lambda: broken(lambda w: data(w, "a1").update(channel="telegram"))
)
case("ACTION_BAD_PURPOSE", node_id="a1", field="data.purpose")(
    lambda: broken(lambda w: data(w, "a1").update(purpose="ads"))
)
case("ACTION_EMAIL_SUBJECT_MISSING", node_id="a1", field="data.subject")(
    lambda: broken(lambda w: data(w, "a1").update(channel="email", subject="  "))
)
case("ACTION_SUBJECT_IGNORED", node_id="a1", field="data.subject")(
    lambda: broken(lambda w: data(w, "a1").update(subject="안내"))
)
case("ACTION_TEMPLATE_MISSING", node_id="a1", field="data.template")(
    lambda: broken(lambda w: data(w, "a1").pop("template"))
)
case("ACTION_TEMPLATE_SYNTAX", node_id="a1", field="data.template")(
    lambda: broken(lambda w: data(w, "a1").update(template="{{ patient.name }"))
)
case("ACTION_TEMPLATE_UNSAFE", node_id="a1", field="data.template")(
    lambda: broken(lambda w: data(w, "a1").update(template="{{ patient.name.__class__ }}"))
)
case("ACTION_TEMPLATE_UNKNOWN_VARIABLE", node_id="a1", field="data.template")(
    lambda: broken(lambda w: data(w, "a1").update(template="{{ patient.nickname }}님 안녕하세요"))
)
case("ACTION_TEMPLATE_CHANNEL_LIMIT", node_id="a1", field="data.template")(
    lambda: broken(
        lambda w: data(w, "a1").update(channel="sms", template="{{ patient.name }}님 " + "가" * 60)
    )
)
case("ACTION_TEMPLATE_EMPTY", node_id="a1", field="data.template")(
    lambda: broken(
        lambda w: data(w, "a1").update(template="{% if patient.consent_night_marketing %}야간{% endif %}")
    )
)


@case("ACTION_TEMPLATE_INVALID", node_id="a1", field="data.template")
def _checker_code_without_a_name_of_ours() -> ValidationReport:
    problem = SimpleNamespace(
        code="TEMPLATE_RENDER_TIMEOUT", message="rendering took too long", field="template"
    )
    fake = SimpleNamespace(check_template=lambda source, *, channel, subject=None: [problem])
    with mock.patch.dict(sys.modules, {"careflow.templates": fake}):
        return validate_workflow(base())


case("ACTIONS_CHAINED", node_id="a2", edge_id="e5")(
    lambda: broken(
        lambda w: (
            w["nodes"].append(
                {
                    "id": "a2",
                    "type": "action",
                    "data": {"channel": "kakao", "template": "{{ clinic.name }} 안내"},
                }
            ),
            w["edges"].append({"id": "e5", "source": "a1", "target": "a2"}),
        )
    )
)
case("MARKETING_WITHOUT_WINDOW", node_id="a1")(
    lambda: broken(
        lambda w: (
            data(w, "a1").update(purpose="marketing"),
            edge(w, "e3").update(target="a1"),
            w.update(nodes=[n for n in w["nodes"] if n["id"] != "w1"], edges=w["edges"][:3]),
        )
    )
)
case("MARKETING_WINDOW_AT_NIGHT", node_id="a1")(
    lambda: broken(lambda w: (data(w, "a1").update(purpose="marketing"), data(w, "w1").update(end="22:00")))
)


def test_every_registered_code_has_an_example():
    assert set(CASES) | set(NOT_YET_TRIGGERABLE) == set(CODES)
    assert not set(CASES) & set(NOT_YET_TRIGGERABLE)


@pytest.mark.parametrize("code", sorted(CASES))
def test_example_produces_its_code(code: str):
    if code in NOT_YET_TRIGGERABLE:
        pytest.skip(NOT_YET_TRIGGERABLE[code])
    run, where = CASES[code]
    report = run()
    matching = [d for d in report.diagnostics if d.code == code]
    assert matching, f"{code} not produced; got {report.codes}"
    found = matching[0]
    assert found.severity == CODES[code][0]
    for key, value in where.items():
        assert any(getattr(d, key) == value for d in matching), (
            f"{code}: {key} {[getattr(d, key) for d in matching]}"
        )
    assert found.message and found.message[0].isupper(), found.message
    if found.severity == "error":
        assert not report.ok and report.workflow is None
    json.dumps(report.to_dict(), ensure_ascii=False)  # reports are always JSON-ready
