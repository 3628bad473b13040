"""What each node type does to the executions due at it (docs/contracts.md §4, §2)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from careflow.store import tables

from .harness import (
    Clinic,
    action,
    assert_exactly_once,
    chain,
    example,
    executions,
    kst,
    ledger,
    rows,
    steps_of,
)

UTC = timezone.utc


# ------------------------------------------------------------------ trigger


def test_events_whose_appointment_or_patient_the_clinic_data_lacks_are_counted_and_logged(
    engine, journey, fake, caplog
):
    """The clinic's views hand out ids another way than its events do: the enrollment's join leaves
    those events out, and the trigger says how many, in its report and in the task's log."""
    from sqlalchemy import insert

    from careflow.engine.nodes import UNMATCHED_EVENT

    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("p1", t0 - timedelta(hours=5))
    c.load(engine)
    with engine.begin() as conn:
        for eid, appointment, patient in (("e-ghost-a", "A-0001", "p1"), ("e-ghost-p", "p1-a", "P-0001")):
            conn.execute(
                insert(tables.appointment_events).values(
                    id=eid, appointment_id=appointment, patient_id=patient, clinic_id="gangnam-01",
                    type="appointment_completed", occurred_at=t0 - timedelta(hours=4),
                )
            )  # fmt: skip
    j = journey(chain("unmatched", ("a", "action", action())))
    with caplog.at_level("WARNING", logger="careflow.engine.nodes"):
        report = j.run_at(t0)["t"]
    assert (report.enrolled, report.reasons[UNMATCHED_EVENT]) == (1, 2)
    assert (
        "careflow: workflow unmatched: 2 appointment_completed event(s) of this run's window name an "
        "appointment or a patient that the clinic's appointments or patients do not hold: not enrolled"
    ) in caplog.text
    assert set(executions(engine, "unmatched")) == {"p1"}


def test_trigger_enrolls_matching_events_in_window_once(engine, journey, fake):
    t0 = kst(2025, 3, 4)  # the daily run at Tuesday 00:00
    c = Clinic()
    c.completed("p1", t0 - timedelta(hours=5))  # matches
    c.patient("p2")
    a2 = c.appointment("p2-a", "p2", scheduled_at=t0 - timedelta(hours=6), status="scheduled")
    c.event("p2-e", a2, "appointment_created", t0 - timedelta(hours=5))  # wrong event type
    c.completed("p3", t0 - timedelta(hours=5), type="scaling")  # wrong appointment type
    c.patient("p4")
    a4 = c.appointment("p4-a", "p4", clinic_id="other-01", scheduled_at=t0 - timedelta(hours=6))
    c.event("p4-e", a4, "appointment_completed", t0 - timedelta(hours=5))  # another clinic
    c.completed("p5", t0 + timedelta(hours=1))  # after this run: the next run's
    c.completed("p6", t0 - timedelta(days=2))  # before the first run's interval
    c.load(engine)
    doc = chain(
        "trigger-test",
        ("d", "delay", {"amount": 30, "unit": "days"}),
        ("a", "action", action()),
        filters={"appointment_types": ["implant_surgery"]},
    )
    j = journey(doc)

    first = j.run_at(t0)["t"]
    assert first.enrolled == 1
    assert set(executions(engine, "trigger-test")) == {"p1"}
    steps = steps_of(engine, "trigger-test")
    assert steps[("p1", "t")]["status"] == "done"
    assert steps[("p1", "d")]["status"] == "waiting"

    again = j.run_at(t0)["t"]  # the same run again
    assert again.enrolled == 0
    cleared = j.node("t", t0, interval_start=t0 - timedelta(days=1))  # re-reads the whole interval
    assert cleared.enrolled == 0
    assert cleared.reasons["already_enrolled"] == 1
    assert len(executions(engine, "trigger-test")) == 1
    assert len(steps_of(engine, "trigger-test")) == 2

    nxt = j.run_at(t0 + timedelta(days=1))["t"]
    assert nxt.enrolled == 1
    assert set(executions(engine, "trigger-test")) == {"p1", "p5"}
    assert fake.stats()["received"] == 0


def test_a_first_enrollment_that_fails_loses_no_event(engine, journey, fake, monkeypatch):
    from careflow.engine import steps as st

    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("p1", t0 - timedelta(hours=5))
    c.load(engine)
    j = journey(chain("first-fails", ("a", "action", action())))

    def broken(*args, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(st, "create_steps", broken)
        with pytest.raises(RuntimeError):
            j.node("t", t0, interval_start=t0 - timedelta(days=1))
    assert executions(engine, "first-fails") == {}
    # The next day's run covers its own interval, and the one of the run that failed.
    report = j.node("t", t0 + timedelta(days=1), interval_start=t0)
    assert report.enrolled == 1
    assert set(executions(engine, "first-fails")) == {"p1"}


# SQLite takes the write lock as an enrollment begins: no other can commit inside it.
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_an_enrollment_counts_only_the_executions_it_inserted(engine, journey, fake, monkeypatch):
    from careflow.engine import steps as st

    t0 = kst(2025, 3, 4)
    c = Clinic()
    for patient in ("p1", "p2", "p3"):
        c.completed(patient, t0 - timedelta(hours=5))
    c.load(engine)
    j = journey(chain("raced", ("a", "action", action())))
    insert_ignore = st.insert_ignore

    def another_enrollment_commits_first(conn, table, rows, keys, returning=None, **kw):  # type: ignore[no-untyped-def]
        if table is tables.executions and rows:
            with engine.begin() as other:  # the same events, enrolled by another worker meanwhile
                insert_ignore(other, table, rows[:2], keys, **kw)
        return insert_ignore(conn, table, rows, keys, returning, **kw)

    monkeypatch.setattr(st, "insert_ignore", another_enrollment_commits_first)
    report = j.node("t", t0, interval_start=t0 - timedelta(days=1))
    assert report.enrolled == 1
    assert len(executions(engine, "raced")) == 3


# ------------------------------------------------------------------ condition


def test_condition_follows_and_records_the_branch(engine, journey, fake):
    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("vip", t0 - timedelta(hours=3), attributes={"vip": True})
    c.completed("std", t0 - timedelta(hours=3), attributes={"vip": False})
    c.completed("unset", t0 - timedelta(hours=3))  # a missing fact is not equal to true
    c.load(engine)
    doc = chain(
        "condition-test",
        ("c", "condition", {"all": [{"field": "patient.attributes.vip", "op": "eq", "value": True}]}),
        ("yes", "action", action("VIP {{ patient.name }}")),
        ("no", "action", action("일반 {{ patient.name }}")),
        edges=[("t", "c", None), ("c", "yes", "true"), ("c", "no", "false")],
    )
    j = journey(doc)
    reports = j.run_at(t0)

    assert reports["c"].passed == 3
    steps = steps_of(engine, "condition-test")
    assert steps[("vip", "c")]["output"] == {"branch": "true"}
    assert steps[("std", "c")]["output"] == {"branch": "false"}
    assert steps[("unset", "c")]["output"] == {"branch": "false"}
    assert set(j.sent) == {"vip/yes", "std/no", "unset/no"}
    assert ("vip", "no") not in steps and ("std", "yes") not in steps
    assert [m["body"][:3] for m in fake.messages() if m["metadata"]["node_id"] == "yes"] == ["VIP"]


# ------------------------------------------------------------------ delay


def test_delay_by_duration_parks_then_releases_on_time(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 10, 15))
    c.load(engine)
    doc = chain(
        "delay-test",
        ("d", "delay", {"amount": 2, "unit": "hours"}),
        ("a", "action", action()),
        schedule="@hourly",
    )
    j = journey(doc)
    j.run_days(kst(2025, 3, 4, 10), kst(2025, 3, 4, 12))
    step = steps_of(engine, "delay-test")[("p1", "d")]
    assert (step["status"], step["due_at"]) == ("waiting", kst(2025, 3, 4, 12, 15))
    assert fake.stats()["received"] == 0

    j.run_days(kst(2025, 3, 4, 12), kst(2025, 3, 4, 15))
    assert j.sent == {"p1/a": (kst(2025, 3, 4, 12, 15), "wake")}  # not at the 13:00 run
    step = steps_of(engine, "delay-test")[("p1", "d")]
    assert step["status"] == "done"
    assert step["output"] == {"released_at": "2025-03-04T03:15:00+00:00"}
    assert ledger(engine, "delay-test")["p1"]["sent_at"] == kst(2025, 3, 4, 12, 15)


def test_delay_until_day_before_at_ten_goes_out_at_ten_via_a_wake_run(engine, journey, fake):
    doc = example("day-before-reminder")
    doc["nodes"][0]["data"]["schedule"] = "@daily"  # so that only a wake run can send at 10:00
    c = Clinic()
    c.patient("p1")
    aid = c.appointment(
        "p1-a", "p1", status="scheduled", scheduled_at=kst(2025, 3, 6, 15), created_at=kst(2025, 3, 3, 11, 20)
    )
    c.event("p1-e", aid, "appointment_created", kst(2025, 3, 3, 11, 20))
    c.load(engine)
    j = journey(doc)
    j.run_days(kst(2025, 3, 3), kst(2025, 3, 7))

    ten_kst = datetime(2025, 3, 5, 1, 0, tzinfo=UTC)  # 10:00 Asia/Seoul
    assert j.sent == {"p1/remind": (ten_kst, "wake")}
    assert (ten_kst, "wake") in j.runs
    row = ledger(engine, "day-before-reminder")["p1"]
    assert (row["status"], row["sent_at"], row["due_at"]) == ("sent", ten_kst, ten_kst)
    assert "내일" in fake.messages()[0]["body"]


# ------------------------------------------------------------------ time window


def test_time_window_passes_inside_and_parks_until_the_opening(engine, journey, fake):
    c = Clinic()
    c.completed("inside", kst(2025, 3, 5, 10, 10))  # Wednesday morning
    c.completed("friday", kst(2025, 3, 7, 17, 40))  # Friday 18:00 run: closed until Monday 09:00
    c.completed("london", kst(2025, 3, 7, 17, 40), timezone="Europe/London")  # 08:40 there: opens 09:00 GMT
    c.load(engine)
    doc = chain(
        "window-test",
        ("w", "timeWindow", {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}),
        ("a", "action", action()),
        schedule="@hourly",
    )
    j = journey(doc)
    j.run_days(kst(2025, 3, 5, 10), kst(2025, 3, 5, 12))
    assert j.sent == {"inside/a": (kst(2025, 3, 5, 11), "scheduled")}
    assert steps_of(engine, "window-test")[("inside", "w")]["output"] == {"window": "open"}

    j.run_days(kst(2025, 3, 7, 17), kst(2025, 3, 7, 19))
    step = steps_of(engine, "window-test")[("friday", "w")]
    assert (step["status"], step["due_at"]) == ("waiting", kst(2025, 3, 10, 9))
    assert "friday/a" not in j.sent
    assert j.sent["london/a"] == (kst(2025, 3, 7, 18), "scheduled")  # 09:00 in London

    j.run_days(kst(2025, 3, 10, 0), kst(2025, 3, 10, 10))
    assert j.sent["friday/a"] == (kst(2025, 3, 10, 9), "scheduled")
    assert_exactly_once(fake)


def test_a_patient_without_a_timezone_has_the_clinics_for_windows_and_the_age_filter(engine, journey, fake):
    berlin = ZoneInfo("Europe/Berlin")  # the clinic's; the workflow's is Asia/Seoul, 8 hours ahead
    c = Clinic()
    c.rows["clinics"][0]["timezone"] = "Europe/Berlin"
    # Wednesday 12:00 in Berlin (20:00 in Seoul): 65 that day on either calendar.
    c.completed("noon", datetime(2025, 3, 5, 12, 0, tzinfo=berlin), birth_date=date(1960, 3, 5))
    # Wednesday 23:30 in Berlin is already Thursday, the 65th birthday, in Seoul: 64 in Berlin.
    c.completed("late", datetime(2025, 3, 5, 23, 30, tzinfo=berlin), birth_date=date(1960, 3, 6))
    c.load(engine)
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    doc = chain(
        "clinic-zone",
        ("w", "timeWindow", {"days": every_day, "start": "09:00", "end": "18:00"}),
        ("a", "action", action()),
        filters={"min_age": 65},
        schedule="@hourly",
    )
    j = journey(doc)
    j.run_days(datetime(2025, 3, 5, 11, tzinfo=berlin), datetime(2025, 3, 6, 2, tzinfo=berlin))
    # Open in Berlin at the 13:00 run; on Seoul's clock it would have waited until 01:00 Berlin.
    assert j.sent == {"noon/a": (datetime(2025, 3, 5, 13, tzinfo=berlin), "scheduled")}
    assert set(executions(engine, "clinic-zone")) == {"noon"}


def test_time_window_opening_before_the_next_daily_run_is_a_wake_run(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 7, 17, 40))  # Friday evening; the daily run is at 00:00
    c.load(engine)
    doc = chain(
        "window-wake",
        ("w", "timeWindow", {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}),
        ("a", "action", action()),
    )
    j = journey(doc)
    j.run_days(kst(2025, 3, 8), kst(2025, 3, 11))
    assert j.sent == {"p1/a": (kst(2025, 3, 10, 9), "wake")}


def _three_days_then_weekdays(workflow_id: str) -> dict:
    """Three days' wait, then a weekday 09:00-18:00 window, then the message."""
    return chain(
        workflow_id,
        ("d", "delay", {"amount": 3, "unit": "days"}),
        ("w", "timeWindow", {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}),
        ("a", "action", action()),
    )


@pytest.mark.parametrize(
    ("back", "late_by"),
    [(kst(2025, 3, 7, 11), 25 * 60), (kst(2025, 3, 8, 11), 49 * 60)],
    ids=["friday-window-open", "saturday-window-closed"],
)
def test_a_step_the_window_saw_late_keeps_its_lateness_through_the_closed_days(
    engine, journey, fake, back, late_by
):
    """Surgery Monday 10:00, three days' wait: the step reaches the weekday window Thursday 10:00,
    while it is open. No run until Friday or Saturday 11:00 (paused, the scheduler down). Friday the
    window is open and the message, a day late, expires; Saturday the window is closed and the step
    waits for Monday, but the two days it was already late stay late: it expires too, never sent."""
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 10))
    c.load(engine)
    j = journey(_three_days_then_weekdays("window-late"))
    j.run_at(kst(2025, 3, 4))  # enrolls; the delay parks it until Thursday 10:00
    j.run_at(back)
    j.wakes(back, kst(2025, 3, 11))
    j.run_days(kst(2025, 3, 9), kst(2025, 3, 12))
    assert j.sent == {}
    row = ledger(engine, "window-late")["p1"]
    assert (row["status"], row["reason"]) == ("expired", f"late_by_{late_by}_min")


def test_a_step_the_window_saw_minutes_after_closing_goes_out_at_the_next_opening(engine, journey, fake):
    """The same wait, released Friday 17:58 and seen by the window at 18:01 (closed): the three
    minutes it was late are all it carries, and it goes out at Monday's opening."""
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 17, 58))
    c.load(engine)
    j = journey(_three_days_then_weekdays("window-lag"))
    j.run_at(kst(2025, 3, 5))
    j.run_at(kst(2025, 3, 7, 18, 1))
    j.run_days(kst(2025, 3, 8), kst(2025, 3, 11))
    assert j.sent == {"p1/a": (kst(2025, 3, 10, 9), "wake")}
    row = ledger(engine, "window-lag")["p1"]
    assert (row["status"], row["due_at"]) == ("sent", kst(2025, 3, 10, 8, 57))


# ------------------------------------------------------------------ action


@pytest.mark.parametrize("subject", ["안내", " ", "{{ patient.nmae }}님"])
def test_a_subject_on_a_channel_without_one_is_neither_rendered_nor_sent(engine, journey, fake, subject):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 15))
    c.load(engine)
    doc = chain("sms-subject", ("a", "action", action(channel="sms", subject=subject)))
    report = journey(doc).run_at(kst(2025, 3, 5))["a"]
    assert (report.sent, report.failed) == (1, 0)
    [message] = fake.messages()
    assert message["channel"] == "sms" and message["subject"] is None


def test_action_skips_with_a_reason_and_never_sends(engine, journey, fake):
    at = kst(2025, 3, 4, 9, 30)
    c = Clinic()
    c.completed("ok", at)
    c.completed("no_care", at, consent_messages=False)
    c.completed("no_phone", at, phone=None)
    c.completed("landline", at, phone="02-555-0101")
    c.completed("marketing_ok", at, consent_marketing=True)
    c.load(engine)
    doc = chain(
        "skip-test",
        ("care", "action", action("{{ patient.name }}님 진료 안내")),
        ("promo", "action", action("(광고) {{ patient.name }}님 이벤트", purpose="marketing")),
        schedule="@hourly",
        edges=[("t", "care", None), ("t", "promo", None)],
    )
    j = journey(doc)
    reports = j.run_at(kst(2025, 3, 4, 10))

    assert set(j.sent) == {"ok/care", "marketing_ok/care", "marketing_ok/promo"}
    steps = steps_of(engine, "skip-test")
    expected = {
        ("no_care", "care"): "no_consent_messages",
        ("no_phone", "care"): "no_phone",
        ("landline", "care"): "invalid_phone",
        ("ok", "promo"): "no_consent_marketing",
        ("no_care", "promo"): "no_consent_marketing",
    }
    for key, reason in expected.items():
        assert (steps[key]["status"], steps[key]["error"]) == ("skipped", reason), key
    assert reports["care"].reasons["no_consent_messages"] == 1
    assert reports["care"].skipped == 3 and reports["care"].sent == 2
    by_key = {
        (r["patient_id"], r["node_id"]): r for r in rows(engine, tables.messages, workflow_id="skip-test")
    }
    for key, reason in expected.items():
        assert (by_key[key]["status"], by_key[key]["reason"]) == ("skipped", reason), key
    assert executions(engine, "skip-test")["no_phone"]["status"] == "completed"  # skipped, not failed
    assert fake.stats()["received"] == 3


def test_marketing_in_quiet_hours_waits_instead_of_skipping(engine, journey, fake):
    c = Clinic()
    c.completed("day_only", kst(2025, 3, 4, 21, 30), consent_marketing=True)
    c.completed("night_ok", kst(2025, 3, 4, 21, 30), consent_marketing=True, consent_night_marketing=True)
    c.load(engine)
    doc = chain("quiet-test", ("promo", "action", action("(광고) 이벤트", purpose="marketing")))
    j = journey(doc)
    first = j.run_at(kst(2025, 3, 5))["promo"]
    assert first.waiting == 1 and first.skipped == 0
    assert first.reasons["marketing_quiet_hours"] == 1
    step = steps_of(engine, "quiet-test")[("day_only", "promo")]
    assert (step["status"], step["due_at"]) == ("waiting", kst(2025, 3, 5, 8))

    j.wakes(kst(2025, 3, 5))
    assert j.sent == {
        "night_ok/promo": (kst(2025, 3, 5), "scheduled"),
        "day_only/promo": (kst(2025, 3, 5, 8), "wake"),
    }
    assert ledger(engine, "quiet-test")["day_only"]["status"] == "sent"


def test_quiet_hours_that_end_past_max_lateness_expire_the_message(engine, journey, fake):
    c = Clinic()
    c.completed("night", kst(2025, 3, 4, 22, 50), consent_marketing=True)  # due 22:50, quiet until 08:00
    c.completed("dawn", kst(2025, 3, 5, 7, 30), consent_marketing=True)  # due 07:30, quiet for 30 min more
    c.load(engine)
    hour = {"amount": 1, "unit": "hours"}
    doc = chain(
        "quiet-late", ("promo", "action", action("(광고) 이벤트", purpose="marketing", max_lateness=hour))
    )
    j = journey(doc)
    j.run_at(kst(2025, 3, 4, 23))
    rows = ledger(engine, "quiet-late")
    assert (rows["night"]["status"], rows["night"]["reason"]) == ("expired", "quiet_hours_past_max_lateness")
    j.run_at(kst(2025, 3, 5, 7, 45))
    assert steps_of(engine, "quiet-late")[("dawn", "promo")]["status"] == "waiting"
    j.wakes(kst(2025, 3, 5, 7, 45))
    assert set(j.sent) == {"dawn/promo"}  # at 08:00, within its hour
    assert fake.stats()["received"] == 1


def test_quiet_hours_do_not_restart_the_lateness_of_a_parked_message(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 4, 21, 30), consent_marketing=True)  # due 21:30, quiet until 08:00
    c.load(engine)
    doc = chain("quiet-missed", ("promo", "action", action("(광고) 이벤트", purpose="marketing")))
    j = journey(doc)
    assert j.run_at(kst(2025, 3, 4, 21, 31))["promo"].waiting == 1
    # The 08:00 wake run did not happen (the scheduler was down); the next run is 26.5 h after
    # the message was due, past the default max_lateness of 24 h.
    report = j.run_at(kst(2025, 3, 6))["promo"]
    assert (report.sent, report.expired, report.waiting) == (0, 1, 0)
    row = ledger(engine, "quiet-missed")["p1"]
    assert (row["status"], row["reason"]) == ("expired", "late_by_1590_min")
    j.wakes(kst(2025, 3, 6))
    assert j.sent == {} and fake.stats()["received"] == 0


def test_message_past_max_lateness_expires_and_is_never_sent(engine, journey, fake):
    c = Clinic()
    c.completed("late", kst(2025, 3, 4, 10))  # 14 h before the daily run
    c.completed("fresh", kst(2025, 3, 4, 23, 30))  # 30 min before it
    c.load(engine)
    doc = chain("lateness-test", ("a", "action", action(max_lateness={"amount": 1, "unit": "hours"})))
    j = journey(doc)
    report = j.run_at(kst(2025, 3, 5))["a"]

    assert (report.sent, report.expired) == (1, 1)
    assert set(j.sent) == {"fresh/a"}
    row = ledger(engine, "lateness-test")["late"]
    assert (row["status"], row["reason"]) == ("expired", "late_by_840_min")
    step = steps_of(engine, "lateness-test")[("late", "a")]
    assert (step["status"], step["error"]) == ("skipped", "late_by_840_min")
    j.run_at(kst(2025, 3, 6))
    assert fake.stats()["received"] == 1


def test_template_failing_for_one_patient_fails_only_that_patient(engine, journey, fake):
    at = kst(2025, 3, 4, 10)
    c = Clinic()
    c.completed("p1", at, attributes={"nickname": "민지"})
    c.completed("p2", at)  # no nickname: the template cannot render for this patient
    c.completed("p3", at, attributes={"nickname": "서연"})
    c.load(engine)
    doc = chain(
        "template-test", ("a", "action", action("{{ patient.attributes.nickname }}님, 경과는 어떠신가요?"))
    )
    j = journey(doc)
    report = j.run_at(kst(2025, 3, 5))["a"]

    assert (report.sent, report.failed) == (2, 1)
    assert sorted(m["body"] for m in fake.messages()) == [
        "민지님, 경과는 어떠신가요?",
        "서연님, 경과는 어떠신가요?",
    ]
    row = ledger(engine, "template-test")["p2"]
    assert (row["status"], row["reason"]) == ("failed", "TEMPLATE_UNKNOWN_VARIABLE")
    assert "patient.attributes.nickname" in row["last_error"]  # what to fix, without a value
    assert "환자p2" not in row["last_error"] and "010" not in row["last_error"]
    step = steps_of(engine, "template-test")[("p2", "a")]
    assert (step["status"], step["error"]) == ("failed", "TEMPLATE_UNKNOWN_VARIABLE")
    status = {p: e["status"] for p, e in executions(engine, "template-test").items()}
    assert status == {"p1": "completed", "p2": "failed", "p3": "completed"}
    j.run_at(kst(2025, 3, 5, 0, 30))  # a retry does not resend nor retry the failure
    assert fake.stats()["received"] == 2


def test_executions_ended_past_the_retention_are_purged_and_never_enrolled_again(engine, journey, fake):
    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("old", t0 - timedelta(days=40) - timedelta(hours=5))
    c.completed("waiting", t0 - timedelta(days=40) - timedelta(hours=4))
    c.completed("recent", t0 - timedelta(hours=5))
    c.load(engine)
    doc = chain(
        "retention",
        ("a", "action", action()),
        settings={"retention_days": 30},
    )
    j = journey(doc)
    # 40 days ago everybody was enrolled and sent, but one execution is still running (a later step).
    j.run_at(t0 - timedelta(days=40))
    with engine.begin() as conn:
        ex = tables.executions
        conn.execute(ex.update().where(ex.c.patient_id == "waiting").values(status="waiting"))
    assert set(executions(engine, "retention")) == {"old", "waiting"}

    report = j.run_at(t0)["t"]
    assert report.reasons["purged_past_retention"] == 1
    assert set(executions(engine, "retention")) == {"waiting", "recent"}  # a live one is kept
    assert "old" not in {p for p, _ in steps_of(engine, "retention")}
    assert "old" not in ledger(engine, "retention")
    # A backfill over the old interval does not enroll the purged event again, nor send twice.
    again = j.node("t", t0, interval_start=t0 - timedelta(days=41))
    assert again.enrolled == 0
    assert set(executions(engine, "retention")) == {"waiting", "recent"}
    assert fake.stats()["accepted_twice"] == 0 and fake.stats()["accepted"] == 3


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has one writer at a time
def test_a_workflow_another_run_is_purging_is_left_to_that_run(engine, journey, fake):
    """Published active again after a pause, a workflow may be purged by another workflow's run
    (its purge lock held) as its own run starts: that run leaves the rows to it, the next purges."""
    from sqlalchemy import func, select

    from careflow.engine import nodes

    t0 = kst(2025, 3, 4)
    c = Clinic()
    c.completed("old", t0 - timedelta(days=40) - timedelta(hours=5))
    c.load(engine)
    j = journey(chain("retention", ("a", "action", action()), settings={"retention_days": 30}))
    j.run_at(t0 - timedelta(days=40))
    with engine.connect() as other, other.begin():
        other.execute(select(func.pg_advisory_xact_lock(nodes._purge_lock_key("retention"))))
        report = j.run_at(t0)["t"]
        assert report.reasons["purged_past_retention"] == 0
        assert set(executions(engine, "retention")) == {"old"}
    assert j.run_at(t0 + timedelta(hours=1))["t"].reasons["purged_past_retention"] == 1
    assert executions(engine, "retention") == {}
