"""The clinic's times, ids and text as its own database serves them (docs/contracts.md §2).

Times are read as the instant they denote however the clinic's system wrote them (on SQLite,
text in any ISO 8601 form; on Postgres, a time without a zone is UTC, whatever the database's
TimeZone); ids that are not text are refused, named, before anything is read; Korean text goes
through whatever the database's encoding (SQL_ASCII, EUC_KR) or the environment's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from careflow.exceptions import ConfigurationError

from .harness import (
    CLINIC_ID,
    KST,
    Clinic,
    Journey,
    action,
    chain,
    clinic_view,
    compile_doc,
    executions,
    kst,
    ledger,
)

UTC = timezone.utc

#: A UTC instant as clinics' systems write it.
WRITTEN: dict[str, Callable[[datetime], str]] = {
    "sqlite_current_timestamp": lambda at: at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    "iso_t": lambda at: at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    "iso_z": lambda at: at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    "offset_utc": lambda at: at.astimezone(UTC).isoformat(),
    "offset_seoul": lambda at: at.astimezone(KST).isoformat(),
    "offset_seoul_no_colon": lambda at: at.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S%z"),
}


def _write(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` as given (times as text: the database keeps or parses them, careflow does not)."""
    names = list(rows[0])
    statement = text(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(f':{n}' for n in names)})")
    with engine.begin() as conn:
        conn.execute(statement, rows)


def _appointment(
    aid: str, pid: str, at: str, status: str = "completed", type_: str = "implant_surgery"
) -> dict:
    return {
        "id": aid,
        "patient_id": pid,
        "clinic_id": CLINIC_ID,
        "type": type_,
        "status": status,
        "scheduled_at": at,
        "created_at": at,
        "completed_at": at if status == "completed" else None,
        "attributes": "{}",
    }


def _event(eid: str, aid: str, pid: str, at: str, type_: str = "appointment_completed") -> dict:
    return {
        "id": eid,
        "appointment_id": aid,
        "patient_id": pid,
        "clinic_id": CLINIC_ID,
        "type": type_,
        "occurred_at": at,
    }


def _completed(engine: Engine, written: dict[str, datetime], form: Callable[[datetime], str]) -> None:
    """Patients (by id) whose appointment completed at the given instants, written in ``form``."""
    c = Clinic()
    for pid in written:
        c.patient(pid)
    c.load(engine)
    _write(engine, "appointments", [_appointment(f"{pid}-a", pid, form(at)) for pid, at in written.items()])
    _write(
        engine, "appointment_events", [_event(f"{p}-e", f"{p}-a", p, form(at)) for p, at in written.items()]
    )


# ------------------------------------------------------------------ times on SQLite


def test_events_of_one_instant_across_pages_are_all_enrolled(engine, journey, fake):
    # Written as SQLite's CURRENT_TIMESTAMP writes it (no fraction), and two more ways: one
    # instant, five events, pages of two.
    at = kst(2025, 3, 4, 15)
    c = Clinic()
    for pid in ("p0", "p1", "p2", "p3", "p4"):
        c.patient(pid)
    c.load(engine)
    forms = {
        "p0": WRITTEN["sqlite_current_timestamp"],
        "p1": WRITTEN["sqlite_current_timestamp"],
        "p2": WRITTEN["sqlite_current_timestamp"],
        "p3": WRITTEN["iso_z"],
        "p4": WRITTEN["offset_seoul"],
    }
    _write(engine, "appointments", [_appointment(f"{p}-a", p, form(at)) for p, form in forms.items()])
    _write(
        engine, "appointment_events", [_event(f"{p}-e", f"{p}-a", p, form(at)) for p, form in forms.items()]
    )
    j = journey(chain("same-instant", ("a", "action", action()), settings={"batch_size": 2}))
    report = j.run_at(kst(2025, 3, 5))["t"]
    assert (report.enrolled, report.batches) == (5, 3)
    assert set(j.sent) == {f"{p}/a" for p in forms}
    assert {e["event_at"] for e in executions(engine, "same-instant").values()} == {at}


@pytest.mark.parametrize("form", sorted(WRITTEN))
def test_an_event_is_enrolled_by_the_run_whose_window_holds_its_instant(engine, journey, fake, form):
    # The run of 5 March 00:00 (Seoul) reads [4 March 00:00, 5 March 00:00): two events in it, one
    # just after it for the next run.
    written = {
        "morning": kst(2025, 3, 4, 15),
        "late": kst(2025, 3, 4, 23, 30),
        "next": kst(2025, 3, 5, 0, 30),
    }
    _completed(engine, written, WRITTEN[form])
    j = journey(chain("window", ("a", "action", action())))
    first = j.run_at(kst(2025, 3, 5))
    assert first["t"].enrolled == 2
    assert set(j.sent) == {"morning/a", "late/a"}
    assert j.run_at(kst(2025, 3, 6))["t"].enrolled == 1
    assert {p: e["event_at"] for p, e in executions(engine, "window").items()} == written
    assert {p: m["status"] for p, m in ledger(engine, "window").items()} == dict.fromkeys(written, "sent")


@pytest.mark.parametrize("form", sorted(WRITTEN))
def test_an_appointment_an_hour_past_is_not_upcoming(engine, journey, fake, form):
    # Run at 5 March 00:00 (Seoul): one patient's next appointment was at 23:00 the day before,
    # the other's is at 01:00.
    c = Clinic()
    c.completed("past", kst(2025, 3, 4, 15))
    c.completed("ahead", kst(2025, 3, 4, 15))
    c.load(engine)
    _write(
        engine,
        "appointments",
        [
            _appointment("past-next", "past", WRITTEN[form](kst(2025, 3, 4, 23)), status="scheduled"),
            _appointment("ahead-next", "ahead", WRITTEN[form](kst(2025, 3, 5, 1)), status="scheduled"),
        ],
    )
    doc = chain(
        "upcoming",
        (
            "c",
            "condition",
            {"all": [{"field": "patient.has_upcoming_appointment", "op": "eq", "value": False}]},
        ),
        ("a", "action", action()),
        edges=[("t", "c", None), ("c", "a", "true")],
    )
    j = journey(doc)
    report = j.run_at(kst(2025, 3, 5))["c"]
    assert (report.passed, report.reasons["patient_or_appointment_missing"]) == (2, 0)
    assert set(j.sent) == {"past/a"}


@pytest.mark.parametrize("form", sorted(WRITTEN))
def test_a_move_earlier_is_followed_by_the_run_whose_window_holds_it(engine, journey, fake, form):
    # Booked on 4 March for the 14th (as careflow writes times); the move is written in ``form``.
    c = Clinic()
    c.patient("moved")
    c.appointment("moved-a", "moved", type="checkup", status="scheduled", scheduled_at=kst(2025, 3, 14, 14))
    c.event("moved-e", "moved-a", "appointment_created", kst(2025, 3, 4, 11))
    c.load(engine)
    doc = chain(
        "moved",
        (
            "d",
            "delay",
            {"until": "appointment.scheduled_at", "offset": {"amount": -1, "unit": "days"}, "at": "10:00"},
        ),
        ("a", "action", action()),
        event="appointment_created",
    )
    j = journey(doc)
    assert j.run_at(kst(2025, 3, 5))["d"].waiting == 1  # until 13 March 10:00
    with engine.begin() as conn:  # on 5 March 13:30 the clinic moves it to 7 March 11:00, and says so
        conn.execute(
            text("UPDATE appointments SET scheduled_at = :at WHERE id = 'moved-a'"),
            {"at": WRITTEN[form](kst(2025, 3, 7, 11))},
        )
    _write(
        engine,
        "appointment_events",
        [
            _event(
                "moved-r",
                "moved-a",
                "moved",
                WRITTEN[form](kst(2025, 3, 5, 13, 30)),
                "appointment_rescheduled",
            )
        ],
    )
    j.run_days(kst(2025, 3, 6), kst(2025, 3, 8))
    assert j.sent["moved/a"][0] == kst(2025, 3, 6, 10)  # the run of 6 March 00:00 followed it


# ------------------------------------------------------------------ times without a zone on Postgres


@contextmanager
def _events_without_zone(engine: Engine) -> Iterator[None]:
    """``appointment_events`` as a view whose ``occurred_at`` has no zone (UTC wall times)."""
    naive = "occurred_at AT TIME ZONE 'UTC'" if engine.dialect.name == "postgresql" else "occurred_at"
    with clinic_view(
        engine,
        "appointment_events",
        f"SELECT id, appointment_id, patient_id, clinic_id, type, {naive} AS occurred_at "
        "FROM appointment_events_stored",
    ):
        yield


def test_times_without_a_zone_are_utc_whatever_the_database_time_zone(engine, journey, fake, monkeypatch):
    from careflow.store.db import dispose_engines

    # The database's TimeZone is Seoul (libpq sends PGTZ as the session's starting TimeZone).
    monkeypatch.setenv("PGTZ", "Asia/Seoul")
    dispose_engines()
    written = {f"p{i}": datetime(2025, 3, 4, 1 + i, tzinfo=UTC) for i in range(6)}
    c = Clinic()
    for pid, at in written.items():
        c.completed(pid, at)
    c.load(engine)
    j = journey(chain("no-zone", ("a", "action", action()), settings={"batch_size": 2}))
    with _events_without_zone(engine):
        report = j.run_at(kst(2025, 3, 5))["t"]
    assert (report.enrolled, report.batches) == (6, 3)
    assert {p: e["event_at"] for p, e in executions(engine, "no-zone").items()} == written


# ------------------------------------------------------------------ text in the database's encoding


def _korean_journey(engine, journey):  # type: ignore[no-untyped-def]
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 10), name="김민지", attributes={"nickname": "민지"})
    c.completed("p2", kst(2025, 3, 4, 11), name="이서연", attributes={"nickname": "서연"})
    c.load(engine)
    doc = chain(
        "encoded",
        (
            "a",
            "action",
            action("{{ patient.name }}({{ patient.attributes.nickname }})님, {{ clinic.name }}입니다"),
        ),
    )
    return journey(doc).run_at(kst(2025, 3, 5))["a"]


@pytest.mark.parametrize("db_url", ["postgres SQL_ASCII", "postgres EUC_KR"], indirect=True)
def test_korean_text_goes_through_a_database_of_another_encoding(engine, journey, fake):
    # SQL_ASCII keeps whatever bytes it is given (the clinic's software wrote UTF-8); EUC_KR is
    # converted to and from. psycopg2 left to the database's encoding encoded Korean as ASCII.
    report = _korean_journey(engine, journey)
    assert report.sent == 2
    assert sorted(m["body"] for m in fake.messages()) == [
        "김민지(민지)님, 강남 미소 치과입니다",
        "이서연(서연)님, 강남 미소 치과입니다",
    ]


@pytest.mark.parametrize("db_url", ["postgres SQL_ASCII"], indirect=True)
def test_a_client_encoding_named_in_the_url_reads_what_the_clinics_software_wrote(db_url, fake):
    from careflow.store.db import get_engine

    # A SQL_ASCII database keeps bytes; this clinic's software wrote EUC-KR, which only its
    # operator knows, and says so in careflow_db's URL.
    engine = get_engine(f"{db_url}?client_encoding=EUC_KR")
    report = _korean_journey(engine, lambda doc: Journey(compile_doc(doc, 1), engine, fake))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT name::bytea FROM patients WHERE id = 'p1'")).scalar_one()
    assert bytes(stored) == "김민지".encode("euc_kr")
    assert report.sent == 2
    assert "김민지(민지)님, 강남 미소 치과입니다" in [m["body"] for m in fake.messages()]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_environments_client_encoding_is_not_careflows(engine, journey, fake, monkeypatch):
    from careflow.store.db import dispose_engines

    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")  # libpq's default for every session it opens
    dispose_engines()
    assert _korean_journey(engine, journey).sent == 2


# ------------------------------------------------------------------ ids that are not text


@contextmanager
def _events_with_ids(engine: Engine, id_expression: str) -> Iterator[None]:
    """``appointment_events`` as a view over the clinic's log, whose key is an integer."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE clinic_log (lid INTEGER PRIMARY KEY, visit TEXT, person TEXT, clinic TEXT, "
                "kind TEXT, at TIMESTAMP WITH TIME ZONE)"
            )
        )
    with clinic_view(
        engine,
        "appointment_events",
        f"SELECT {id_expression} AS id, visit AS appointment_id, person AS patient_id, "
        "clinic AS clinic_id, kind AS type, at AS occurred_at FROM clinic_log",
        drop=["clinic_log"],
    ):
        yield


def _log(engine: Engine, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO clinic_log VALUES (900001, 'p1-a', 'p1', :clinic, 'appointment_completed', :at)"
            ),
            {"clinic": CLINIC_ID, "at": at.isoformat()},
        )


@pytest.mark.parametrize("id_expression", ["lid", "lid + 0"])
def test_integer_ids_are_refused_naming_the_column_before_anything_is_read(
    engine, journey, fake, id_expression
):
    c = Clinic()
    c.patient("p1")
    c.appointment("p1-a", "p1", scheduled_at=kst(2025, 3, 4, 14), completed_at=kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("int-ids", ("a", "action", action())))
    with _events_with_ids(engine, id_expression):
        _log(engine, kst(2025, 3, 4, 15))
        with pytest.raises(ConfigurationError) as refused:
            j.run_at(kst(2025, 3, 5))
        message = str(refused.value)
        assert "appointment_events.id " in message and "integer" in message
        assert "CAST(id AS text) AS id" in message
        for fine in ("appointment_events.appointment_id", "patients.id", "appointments.id", "clinics.id"):
            assert fine not in message
        assert executions(engine, "int-ids") == {}
    with _events_with_ids(engine, "CAST(lid AS TEXT)"):  # the view fixed: the next run goes on
        _log(engine, kst(2025, 3, 4, 15))
        assert j.run_at(kst(2025, 3, 5, 1))["t"].enrolled == 1
    assert set(j.sent) == {"p1/a"}


def test_a_view_that_lacks_columns_careflow_reads_is_refused_naming_them(engine, journey, fake):
    """A clinic's view of its patients that maps only some of the columns: each run refuses before
    it reads anything, naming them, and once the view hands out a constant for each, goes on."""
    c = Clinic()
    c.patient("p1")
    c.appointment("p1-a", "p1", scheduled_at=kst(2025, 3, 4, 14), completed_at=kst(2025, 3, 4, 15))
    c.event("e1", "p1-a", "appointment_completed", kst(2025, 3, 4, 15))
    c.load(engine)
    j = journey(chain("narrow", ("a", "action", action())))
    mapped = "id, clinic_id, name, phone, email, birth_date, timezone, consent_messages"
    with clinic_view(engine, "patients", f"SELECT {mapped} FROM patients_stored"):
        with pytest.raises(ConfigurationError) as refused:
            j.run_at(kst(2025, 3, 5))
        assert str(refused.value) == (
            "the clinic's data lacks columns careflow reads (docs/contracts.md §2): patients has no "
            "consent_marketing, consent_night_marketing, attributes; add them, or map the clinic's own "
            "columns in the view careflow reads (a constant where it has none, for example false AS "
            "consent_marketing)"
        )
        assert executions(engine, "narrow") == {}
    constants = "false AS consent_marketing, false AS consent_night_marketing, NULL AS attributes"
    with clinic_view(engine, "patients", f"SELECT {mapped}, {constants} FROM patients_stored"):
        assert j.run_at(kst(2025, 3, 5, 1))["t"].enrolled == 1
    assert set(j.sent) == {"p1/a"}


# SQLite only: Postgres does not compare integer ids with text, and is refused before (test above).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rows_whose_ids_come_back_as_numbers_are_found(engine, journey, fake):
    # The views change after this process found the database ready: SQLite then hands back the
    # rows of text ids '1' and '2' as the integers 1 and 2.
    c = Clinic()
    for pid in ("1", "2"):
        c.patient(pid)
        c.appointment(f"1{pid}", pid, scheduled_at=kst(2025, 3, 4, 14), completed_at=kst(2025, 3, 4, 15))
        c.event(f"e{pid}", f"1{pid}", "appointment_completed", kst(2025, 3, 4, 15))
    c.load(engine)
    doc = chain(
        "numbers",
        ("c", "condition", {"all": [{"field": "patient.consent_messages", "op": "eq", "value": True}]}),
        ("a", "action", action()),
        edges=[("t", "c", None), ("c", "a", "true")],
    )
    j = journey(doc)
    now = kst(2025, 3, 5)
    assert j.node("t", now).enrolled == 2
    with engine.begin() as conn:
        for table, ids in (
            ("patients", "CAST(id AS INTEGER) AS id"),
            ("appointments", "CAST(id AS INTEGER) AS id, CAST(patient_id AS INTEGER) AS patient_id"),
        ):
            columns = [r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({table})")]
            kept = ", ".join(col for col in columns if col not in ("id", "patient_id"))
            conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_stored"))
            conn.execute(text(f"CREATE VIEW {table} AS SELECT {ids}, {kept} FROM {table}_stored"))
    report = j.node("c", now)
    assert (report.passed, report.reasons["patient_or_appointment_missing"]) == (2, 0)
    j.node("a", now)
    assert {p: m["status"] for p, m in ledger(engine, "numbers").items()} == {"1": "sent", "2": "sent"}
