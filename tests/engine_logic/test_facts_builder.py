"""Facts from clinic rows: the exact catalog, normalisation and the derived facts."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from careflow.engine.facts_builder import age_on, build_facts, patient_timezone
from careflow.workflow.facts import FACTS

UTC = timezone.utc
NOW = datetime(2026, 3, 17, 0, 30, tzinfo=UTC)  # Tuesday 09:30 in Seoul, Monday 20:30 in New York

CLINIC = {"id": "gangnam-01", "name": "강남 치과", "phone": "02-555-0101", "timezone": "Asia/Seoul"}
PATIENT = {
    "id": "p-1",
    "clinic_id": "gangnam-01",
    "name": "김민지",
    "phone": "010-1234-5678",
    "email": "minji@example.com",
    "birth_date": date(1990, 5, 17),
    "timezone": None,
    "consent_messages": True,
    "consent_marketing": False,
    "consent_night_marketing": False,
    "attributes": {"vip": True},
}
APPOINTMENT = {
    "id": "a-1",
    "patient_id": "p-1",
    "clinic_id": "gangnam-01",
    "type": "implant_surgery",
    "status": "completed",
    "scheduled_at": datetime(2026, 3, 14, 1, 0, tzinfo=UTC),
    "created_at": datetime(2026, 2, 1, 3, 0, tzinfo=UTC),
    "completed_at": datetime(2026, 3, 14, 2, 0, tzinfo=UTC),
    "attributes": None,
}
EVENT = {"id": "e-1", "type": "appointment_completed", "occurred_at": datetime(2026, 3, 14, 2, 0, tzinfo=UTC)}


def build(
    *,
    patient: dict | None = None,
    appointment: dict | None = None,
    clinic: dict | None = None,
    upcoming: int = 0,
    now: datetime = NOW,
) -> dict[str, Any]:
    return build_facts(
        patient={**PATIENT, **(patient or {})},
        appointment={**APPOINTMENT, **(appointment or {})},
        clinic={**CLINIC, **(clinic or {})},
        event=EVENT,
        upcoming_count=upcoming,
        now=now,
    )


def leaves(facts: dict, prefix: str = "") -> set[str]:
    names = set()
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if key == "attributes":
            assert isinstance(value, dict)
        elif isinstance(value, dict):
            names |= leaves(value, f"{name}.")
        else:
            names.add(name)
    return names


def test_exactly_the_catalog() -> None:
    facts = build()
    assert leaves(facts) == set(FACTS)
    assert facts["patient"]["attributes"] == {"vip": True}
    assert facts["appointment"]["attributes"] == {}


def test_values() -> None:
    facts = build(upcoming=2)
    assert facts["patient"]["age"] == 35
    assert facts["patient"]["timezone"] == "Asia/Seoul"  # the clinic's
    assert facts["patient"]["has_upcoming_appointment"] is True
    assert facts["patient"]["upcoming_appointment_count"] == 2
    assert facts["appointment"]["days_since_completed"] == 3
    assert facts["event"] == {"type": "appointment_completed", "occurred_at": EVENT["occurred_at"]}
    assert facts["clinic"]["timezone"] == "Asia/Seoul"


def test_no_upcoming_appointment() -> None:
    facts = build(upcoming=0)
    assert facts["patient"]["has_upcoming_appointment"] is False
    assert facts["patient"]["upcoming_appointment_count"] == 0


class TestAge:
    @pytest.mark.parametrize(
        ("today", "age"),
        [
            (date(2026, 5, 16), 35),
            (date(2026, 5, 17), 36),  # the birthday itself
            (date(2026, 5, 18), 36),
            (date(2026, 12, 31), 36),
            (date(2027, 1, 1), 36),
        ],
    )
    def test_birthday_edge(self, today: date, age: int) -> None:
        assert age_on(date(1990, 5, 17), today) == age

    @pytest.mark.parametrize(
        ("today", "age"),
        [(date(2027, 2, 28), 2), (date(2027, 3, 1), 3), (date(2028, 2, 28), 3), (date(2028, 2, 29), 4)],
    )
    def test_leap_day_birthday(self, today: date, age: int) -> None:
        assert age_on(date(2024, 2, 29), today) == age

    def test_birthday_is_on_the_patients_local_date(self) -> None:
        now = datetime(2026, 5, 16, 15, 30, tzinfo=UTC)  # 17 May 00:30 in Seoul, 16 May 11:30 in New York
        assert build(now=now)["patient"]["age"] == 36
        assert build(now=now, patient={"timezone": "America/New_York"})["patient"]["age"] == 35

    def test_no_birth_date(self) -> None:
        facts = build(patient={"birth_date": None})
        assert facts["patient"]["age"] is None
        assert facts["patient"]["birth_date"] is None


class TestTimezone:
    def test_patient_timezone_wins(self) -> None:
        facts = build(patient={"timezone": "America/New_York"})
        assert facts["patient"]["timezone"] == "America/New_York"
        assert patient_timezone(facts, "Asia/Seoul") == ZoneInfo("America/New_York")

    def test_unknown_patient_timezone_falls_back_to_the_clinics(self) -> None:
        assert build(patient={"timezone": "Mars/Olympus"})["patient"]["timezone"] == "Asia/Seoul"
        assert build(patient={"timezone": "../etc/passwd"})["patient"]["timezone"] == "Asia/Seoul"

    def test_default_when_nothing_is_known(self) -> None:
        facts = build(clinic={"timezone": None})
        assert facts["patient"]["timezone"] is None
        assert patient_timezone(facts, "Asia/Seoul") == ZoneInfo("Asia/Seoul")
        assert patient_timezone({}, "Europe/London") == ZoneInfo("Europe/London")


def test_days_since_completed_counts_local_calendar_days() -> None:
    # Completed Monday 17:00 KST; Thursday 09:00 KST is 64 hours later but 3 calendar days.
    completed = datetime(2026, 3, 16, 8, 0, tzinfo=UTC)
    thursday_morning = datetime(2026, 3, 19, 0, 0, tzinfo=UTC)
    facts = build(appointment={"completed_at": completed}, now=thursday_morning)
    assert facts["appointment"]["days_since_completed"] == 3
    assert build(appointment={"completed_at": None})["appointment"]["days_since_completed"] is None


def test_sqlite_row_is_normalised() -> None:
    """SQLite returns text for datetimes, dates and JSON, and 0/1 for booleans."""
    facts = build_facts(
        patient={
            **PATIENT,
            "birth_date": "1990-05-17",
            "consent_messages": 1,
            "consent_marketing": 0,
            "consent_night_marketing": None,
            "attributes": json.dumps({"vip": True, "tags": ["implant"]}),
        },
        appointment={
            **APPOINTMENT,
            "scheduled_at": "2026-03-14 10:00:00+09:00",
            "created_at": "2026-02-01T03:00:00Z",
            "completed_at": "2026-03-14 02:00:00",  # no offset: UTC
            "attributes": "{}",
        },
        clinic=CLINIC,
        event={**EVENT, "occurred_at": datetime(2026, 3, 14, 2, 0)},  # naive: UTC
        upcoming_count=0,
        now=NOW,
    )
    assert facts["patient"]["birth_date"] == date(1990, 5, 17)
    assert facts["patient"]["consent_messages"] is True
    assert facts["patient"]["consent_marketing"] is False
    assert facts["patient"]["consent_night_marketing"] is False
    assert facts["patient"]["attributes"] == {"vip": True, "tags": ["implant"]}
    appointment = facts["appointment"]
    assert appointment["scheduled_at"] == datetime(2026, 3, 14, 1, 0, tzinfo=UTC)
    assert appointment["created_at"] == datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    assert appointment["completed_at"] == datetime(2026, 3, 14, 2, 0, tzinfo=UTC)
    for value in (appointment["scheduled_at"], appointment["completed_at"], facts["event"]["occurred_at"]):
        assert value.tzinfo is UTC
    assert facts == build() | {"patient": facts["patient"]}  # the rest matches the typed row
    assert facts["patient"] == {**build()["patient"], "attributes": {"vip": True, "tags": ["implant"]}}


def test_consent_defaults() -> None:
    facts = build(
        patient={"consent_messages": None, "consent_marketing": None, "consent_night_marketing": None}
    )
    assert facts["patient"]["consent_messages"] is True
    assert facts["patient"]["consent_marketing"] is False
    assert facts["patient"]["consent_night_marketing"] is False


@pytest.mark.parametrize(
    ("patient", "appointment", "column"),
    [
        ({"attributes": "[1, 2]"}, {}, "p-1.attributes"),
        ({"attributes": "{not json"}, {}, "p-1.attributes"),
        ({"consent_messages": "maybe"}, {}, "p-1.consent_messages"),
        ({"birth_date": "17/05/1990"}, {}, "p-1.birth_date"),
        ({}, {"scheduled_at": "tomorrow at ten"}, "a-1.scheduled_at"),
    ],
)
def test_unreadable_values_name_the_row_not_the_value(patient: dict, appointment: dict, column: str) -> None:
    with pytest.raises(ValueError) as info:
        build(patient=patient, appointment=appointment)
    message = str(info.value)
    assert column in message
    for leaked in ("not json", "maybe", "17/05", "tomorrow", "[1, 2]"):
        assert leaked not in message


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, 5, 0, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 0, tzinfo=ZoneInfo("Asia/Seoul")),
    ],
)
def test_times_outside_the_years_careflow_reads_are_unreadable_however_they_come(value: datetime) -> None:
    """A UTC datetime straight from the driver takes a shortcut, which still checks the range."""
    with pytest.raises(ValueError, match=r"a-1\.scheduled_at is out of the range"):
        build(appointment={"scheduled_at": value})


def test_times_in_other_zones_and_subclasses_come_out_as_utc() -> None:
    class Moment(datetime):  # as pendulum's DateTime is
        pass

    seoul = datetime(2026, 3, 14, 10, 0, tzinfo=ZoneInfo("Asia/Seoul"))
    moment = Moment(2026, 3, 14, 1, 0, tzinfo=UTC)
    appointment = build(appointment={"scheduled_at": seoul, "created_at": moment})["appointment"]
    for value in (appointment["scheduled_at"], appointment["created_at"]):
        assert value == datetime(2026, 3, 14, 1, 0, tzinfo=UTC)
        assert value.tzinfo is UTC


def test_a_batch_gives_what_each_execution_alone_gives() -> None:
    from careflow.engine.facts_builder import BatchFacts

    rows = [
        ({"birth_date": date(1990, 3, 17)}, {}),
        ({"id": "p-2", "timezone": "America/New_York", "birth_date": date(1990, 3, 17)}, {"id": "a-2"}),
        ({"id": "p-3", "timezone": "Mars/Olympus"}, {"id": "a-3", "completed_at": None}),
        ({"id": "p-4", "timezone": "America/New_York", "consent_messages": 0}, {"id": "a-4"}),
        ({"id": "p-5", "timezone": 9, "attributes": '{"vip": false}'}, {"id": "a-5", "attributes": "{}"}),
        ({"id": "p-6", "timezone": ""}, {"id": "a-6", "completed_at": "2026-03-16T23:30:00Z"}),
    ]
    batch = BatchFacts(clinic=CLINIC, now=NOW)
    built = []
    for patient, appointment in rows:
        facts = batch.build(
            patient={**PATIENT, **patient},
            appointment={**APPOINTMENT, **appointment},
            event=EVENT,
            upcoming_count=2,
        )
        assert facts == build(patient=patient, appointment=appointment, upcoming=2)
        built.append(facts)
    assert [f["patient"]["timezone"] for f in built] == [
        "Asia/Seoul",
        "America/New_York",
        "Asia/Seoul",
        "America/New_York",
        "Asia/Seoul",
        "Asia/Seoul",
    ]
    # Born 17 March 1990: 36 in Seoul, where it is the 17th; 35 in New York, where it is the 16th.
    assert [built[0]["patient"]["age"], built[1]["patient"]["age"]] == [36, 35]
    built[0]["clinic"]["name"] = "changed by one execution"
    assert built[1]["clinic"]["name"] == CLINIC["name"]  # each execution has dicts of its own


def test_a_batch_looks_each_timezone_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from careflow.engine import facts_builder

    checked: list[str] = []
    real = facts_builder.check_timezone
    monkeypatch.setattr(facts_builder, "check_timezone", lambda name: (checked.append(name), real(name))[1])
    batch = facts_builder.BatchFacts(clinic=CLINIC, now=NOW)
    for n in range(200):
        zone_name = ("America/New_York", None, "Mars/Olympus")[n % 3]
        facts = batch.build(
            patient={**PATIENT, "id": f"p-{n}", "timezone": zone_name},
            appointment={**APPOINTMENT, "id": f"a-{n}"},
            event=EVENT,
            upcoming_count=0,
        )
        assert facts["patient"]["own_timezone"] == (zone_name if zone_name == "America/New_York" else None)
    assert sorted(checked) == ["America/New_York", "Asia/Seoul", "Mars/Olympus"]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans(), cut=st.integers(0, 400), junk=st.text(max_size=3))
def test_json_is_read_as_json_loads_reads_it(value: Any, ensure_ascii: bool, cut: int, junk: str) -> None:
    from careflow.engine.facts_builder import read_json

    text = json.dumps(value, ensure_ascii=ensure_ascii)
    for candidate in (text, text[:cut] + junk + text[cut:], text.encode(), text.encode("utf-16")):
        try:
            expected: Any = ("read", json.loads(candidate))
        except ValueError:
            expected = ValueError
        try:
            got: Any = ("read", read_json(candidate))
        except ValueError:
            got = ValueError
        # repr: NaN is not equal to itself, and -0.0 must stay -0.0
        assert repr(got) == repr(expected), candidate


@pytest.mark.parametrize(
    "text",
    ['{"n": 1e400}', '{"s": "\\ud800"}', '{"n": ' + "9" * 5000 + "}", '{"a": NaN}', '{"a": "x\\ty"}', "{}\n"],
)
def test_what_msgspec_and_json_read_differently_is_read_as_json_does(text: str) -> None:
    from careflow.engine.facts_builder import read_json

    try:
        expected: Any = repr(json.loads(text))
    except ValueError:
        expected = ValueError
    try:
        got: Any = repr(read_json(text))
    except ValueError:
        got = ValueError
    assert got == expected
