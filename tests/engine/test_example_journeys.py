"""Every example workflow end to end: which patients get which message, from which node, when.

Each test runs the scheduled runs (and the wake runs ``careflow_wake`` would start) of one
example from include/workflows over a small clinic, then checks what the fake provider accepted
and what careflow recorded. Times are Asia/Seoul wall times.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta

from sqlalchemy import insert, update

from careflow.store import tables

from .harness import CLINIC_ID, Clinic, assert_exactly_once, example, executions, kst, ledger, steps_of


def test_day_before_reminder(engine, journey, fake):
    c = Clinic()
    for pid in ("p1", "p2", "p3", "p4", "p5"):
        c.patient(pid)
    bookings = {
        # patient: (created, scheduled)
        "p1": (kst(2025, 3, 3, 11, 20), kst(2025, 3, 6, 15)),  # reminder Wed 10:00
        "p2": (kst(2025, 3, 3, 11, 40), kst(2025, 3, 6, 16)),  # cancelled on Tuesday
        # Booked on the day itself: its reminder's day (4 March) is over, so no "tomorrow" on the
        # day of the appointment, neither past max_lateness (p3) nor within it (p5, 22 h late).
        "p3": (kst(2025, 3, 5, 11), kst(2025, 3, 5, 16)),
        "p5": (kst(2025, 3, 5, 7), kst(2025, 3, 5, 16)),
        "p4": (kst(2025, 3, 5, 11), kst(2025, 3, 6, 9)),  # booked 1 h after 10:00: sent at once, late
    }
    for pid, (created, scheduled) in bookings.items():
        aid = c.appointment(
            f"{pid}-a", pid, type="checkup", status="scheduled", scheduled_at=scheduled, created_at=created
        )
        c.event(f"{pid}-e", aid, "appointment_created", created)
    c.load(engine)
    j = journey(example("day-before-reminder"))
    j.run_days(kst(2025, 3, 3, 12), kst(2025, 3, 4, 12))
    with engine.begin() as conn:  # facts are read when the execution reaches the condition
        conn.execute(
            update(tables.appointments).where(tables.appointments.c.id == "p2-a").values(status="cancelled")
        )
    j.run_days(kst(2025, 3, 4, 12), kst(2025, 3, 6, 12))

    assert j.sent == {
        "p1/remind": (kst(2025, 3, 5, 10), "scheduled"),
        "p4/remind": (kst(2025, 3, 5, 12), "scheduled"),
    }
    body = {m["metadata"]["node_id"] + m["to"]: m["body"] for m in fake.messages()}
    assert any("내일" in b and "강남 미소 치과" in b for b in body.values())
    steps = steps_of(engine, "day-before-reminder")
    assert steps[("p2", "still_booked")]["output"] == {"branch": "false"}
    assert ("p2", "remind") not in steps
    assert steps[("p1", "day_before")]["status"] == "done"
    assert steps[("p1", "day_before")]["output"] == {"released_at": "2025-03-05T01:00:00+00:00"}
    for pid in ("p3", "p5"):
        assert (steps[(pid, "day_before")]["status"], steps[(pid, "day_before")]["error"]) == (
            "skipped",
            "release_day_passed",
        )
    messages = ledger(engine, "day-before-reminder")
    assert set(messages) == {"p1", "p4"}
    assert messages["p4"]["status"] == "sent"
    ended = executions(engine, "day-before-reminder")
    assert {p: e["status"] for p, e in ended.items()} == {
        **dict.fromkeys(("p1", "p2", "p4"), "completed"),
        **dict.fromkeys(("p3", "p5"), "exited"),
    }
    assert ended["p5"]["exit_reason"] == "release_day_passed@day_before"
    assert_exactly_once(fake)


def _booked_checkup(c: Clinic, pid: str, scheduled_at: datetime) -> None:
    """Patient ``pid`` with a checkup at ``scheduled_at``, booked (and its event) on 4 March 11:00."""
    c.patient(pid)
    aid = c.appointment(
        f"{pid}-a",
        pid,
        type="checkup",
        status="scheduled",
        scheduled_at=scheduled_at,
        created_at=kst(2025, 3, 4, 11),
    )
    c.event(f"{pid}-e", aid, "appointment_created", kst(2025, 3, 4, 11))


def test_a_rescheduled_appointment_moves_its_reminder(engine, journey, fake):
    c = Clinic()
    for pid, scheduled in (("later", kst(2025, 3, 10, 14)), ("earlier", kst(2025, 3, 12, 14))):
        _booked_checkup(c, pid, scheduled)
    c.load(engine)
    j = journey(example("day-before-reminder"))
    j.run_days(kst(2025, 3, 4, 12), kst(2025, 3, 4, 13))
    moved = {"later-a": kst(2025, 3, 17, 14), "earlier-a": kst(2025, 3, 10, 14)}
    with engine.begin() as conn:  # both parked until the day before; then the clinic moves them
        for aid, when in moved.items():
            conn.execute(
                update(tables.appointments).where(tables.appointments.c.id == aid).values(scheduled_at=when)
            )
    j.run_days(kst(2025, 3, 4, 13), kst(2025, 3, 18))
    assert j.sent["later/remind"][0] == kst(2025, 3, 16, 10)  # the day before the new date
    # No appointment_rescheduled event was recorded: found at its old reminder time (11 March
    # 10:00), after the new appointment; the day its reminder was for (9 March) is over.
    assert "earlier/remind" not in j.sent
    assert "earlier" not in ledger(engine, "day-before-reminder")
    assert steps_of(engine, "day-before-reminder")[("earlier", "day_before")]["error"] == "release_day_passed"
    assert_exactly_once(fake)


def test_a_reminder_follows_its_appointment_moved_earlier_when_the_clinic_records_the_move(
    engine, journey, fake
):
    c = Clinic()
    for pid in ("moved", "stays", "same-day"):
        _booked_checkup(c, pid, kst(2025, 3, 14, 14))
    c.load(engine)
    j = journey(example("day-before-reminder"))

    def move(pid: str, to: datetime, at: datetime) -> None:
        with engine.begin() as conn:  # the clinic moves the appointment, and says so
            conn.execute(
                update(tables.appointments)
                .where(tables.appointments.c.id == f"{pid}-a")
                .values(scheduled_at=to)
            )
            conn.execute(
                insert(tables.appointment_events).values(
                    id=f"{pid}-r",
                    appointment_id=f"{pid}-a",
                    patient_id=pid,
                    clinic_id=CLINIC_ID,
                    type="appointment_rescheduled",
                    occurred_at=at,
                )
            )

    j.run_days(kst(2025, 3, 4, 12), kst(2025, 3, 5, 13))  # all parked until 13 March 10:00
    move("moved", kst(2025, 3, 10, 14), at=kst(2025, 3, 5, 13, 30))  # on 5 March, to 10 March
    j.run_days(kst(2025, 3, 5, 13), kst(2025, 3, 10, 8, 45))
    # On 10 March at 08:30, to that afternoon: the day before (9 March) is over. Sent at the
    # 09:00 run it would be 23 hours late, within max_lateness, and say "tomorrow" on the day.
    move("same-day", kst(2025, 3, 10, 15), at=kst(2025, 3, 10, 8, 30))
    j.run_days(kst(2025, 3, 10, 8, 45), kst(2025, 3, 16))
    # The day before the new date, at 10:00, not at the old time (13 March).
    assert j.sent["moved/remind"][0] == kst(2025, 3, 9, 10)
    assert j.sent["stays/remind"][0] == kst(2025, 3, 13, 10)
    messages = ledger(engine, "day-before-reminder")
    assert messages["moved"]["status"] == "sent"
    assert "same-day" not in messages
    ex = executions(engine, "day-before-reminder")["same-day"]
    assert (ex["status"], ex["exit_reason"]) == ("exited", "release_day_passed@day_before")
    assert_exactly_once(fake)


def test_implant_aftercare(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 14))  # Monday: Thursday 14:00
    c.completed("p2", kst(2025, 3, 5, 11))  # Wednesday: Saturday 11:00, window opens Monday 09:00
    c.completed("p3", kst(2025, 3, 3, 15))  # has a follow-up booked: no reminder
    c.appointment("p3-next", "p3", type="checkup", status="scheduled", scheduled_at=kst(2025, 3, 20, 10))
    c.completed("p4", kst(2025, 3, 3, 12), type="scaling")  # not an implant surgery
    c.patient("p5")
    c.appointment(
        "p5-a", "p5", clinic_id="other-01", scheduled_at=kst(2025, 3, 3, 9), completed_at=kst(2025, 3, 3, 10)
    )
    c.event("p5-e", "p5-a", "appointment_completed", kst(2025, 3, 3, 10))  # another clinic
    c.load(engine)
    j = journey(example("implant-aftercare"))
    j.run_days(kst(2025, 3, 3), kst(2025, 3, 11))

    assert j.sent == {
        "p1/a1": (kst(2025, 3, 6, 14), "wake"),
        "p2/a1": (kst(2025, 3, 10, 9), "wake"),
    }
    assert set(executions(engine, "implant-aftercare")) == {"p1", "p2", "p3"}
    steps = steps_of(engine, "implant-aftercare")
    assert steps[("p3", "c1")]["output"] == {"branch": "false"}
    assert steps[("p2", "c1")]["output"] == {"branch": "true"}
    assert steps[("p2", "w1")]["status"] == "done"
    assert [m["body"] for m in fake.messages()][0].endswith("문의: 02-555-0101")
    assert {p: e["status"] for p, e in executions(engine, "implant-aftercare").items()} == dict.fromkeys(
        ("p1", "p2", "p3"), "completed"
    )
    assert_exactly_once(fake)


def test_new_patient_welcome(engine, journey, fake):
    c = Clinic()
    c.patient("p1", attributes={"first_visit": True})
    c.patient("p2", attributes={"first_visit": True})
    c.patient("p3", attributes={"first_visit": False})
    c.patient("p4", attributes={"first_visit": True}, email=None)
    created = {
        "p1": kst(2025, 3, 3, 14, 10),
        "p2": kst(2025, 3, 3, 22, 30),
        "p3": kst(2025, 3, 3, 14),
        "p4": kst(2025, 3, 3, 14, 20),
    }
    for pid, at in created.items():
        aid = c.appointment(
            f"{pid}-a",
            pid,
            type="checkup",
            status="scheduled",
            scheduled_at=at + timedelta(days=3),
            created_at=at,
        )
        c.event(f"{pid}-e", aid, "appointment_created", at)
    c.load(engine)
    j = journey(example("new-patient-welcome"))
    j.run_days(kst(2025, 3, 3, 12), kst(2025, 3, 4, 12))

    assert j.sent == {
        "p1/welcome_kakao": (kst(2025, 3, 3, 15), "scheduled"),
        "p1/welcome_email": (kst(2025, 3, 3, 15), "scheduled"),
        "p4/welcome_kakao": (kst(2025, 3, 3, 15), "scheduled"),
        "p2/welcome_kakao": (kst(2025, 3, 4, 9), "scheduled"),  # arrived 22:30, window opens 09:00
        "p2/welcome_email": (kst(2025, 3, 4, 9), "scheduled"),
    }
    emails = [m for m in fake.messages() if m["channel"] == "email"]
    assert {m["subject"] for m in emails} == {"강남 미소 치과 첫 방문 안내"}
    assert {m["to"] for m in emails} == {"p1@example.com", "p2@example.com"}
    steps = steps_of(engine, "new-patient-welcome")
    assert steps[("p3", "c1")]["output"] == {"branch": "false"}
    assert steps[("p4", "welcome_email")]["status"] == "skipped"
    assert steps[("p4", "welcome_email")]["error"] == "no_email"
    assert steps[("p4", "welcome_kakao")]["status"] == "done"  # one branch's skip never stops the other
    assert_exactly_once(fake)


def test_no_show_recovery(engine, journey, fake):
    c = Clinic()
    for pid, at in {
        "p1": kst(2025, 3, 4, 10, 30),
        "p2": kst(2025, 3, 7, 17, 30),
        "p3": kst(2025, 3, 4, 10, 40),
    }.items():
        c.patient(pid)
        aid = c.appointment(
            f"{pid}-a", pid, type="checkup", status="no_show", scheduled_at=at - timedelta(minutes=30)
        )
        c.event(f"{pid}-e", aid, "appointment_no_show", at)
    c.appointment("p3-again", "p3", type="checkup", status="scheduled", scheduled_at=kst(2025, 3, 12, 10))
    c.load(engine)
    j = journey(example("no-show-recovery"))
    j.run_days(kst(2025, 3, 4, 10), kst(2025, 3, 4, 15))
    j.run_days(kst(2025, 3, 7, 17), kst(2025, 3, 10, 10))

    assert j.sent == {
        "p1/a1": (kst(2025, 3, 4, 12, 30), "wake"),  # two hours after the no-show, not at 13:00
        "p2/a1": (kst(2025, 3, 10, 9), "scheduled"),  # Friday 19:30 is outside the window
    }
    steps = steps_of(engine, "no-show-recovery")
    assert steps[("p3", "c1")]["output"] == {"branch": "false"}
    assert ledger(engine, "no-show-recovery")["p2"]["due_at"] == kst(2025, 3, 10, 9)
    assert all(m["channel"] == "sms" and "재예약" in m["body"] for m in fake.messages())
    assert_exactly_once(fake)


def test_scaling_recall_6m(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 11), type="scaling")  # 26 weeks: Monday 1 September 11:00
    c.completed("p2", kst(2025, 3, 3, 11), type="scaling", consent_messages=False)
    c.completed(
        "p3", kst(2025, 3, 8, 18, 30), type="scaling"
    )  # Saturday 18:30: window closed until Monday 10:00
    c.load(engine)
    j = journey(example("scaling-recall-6m"))
    j.run_days(kst(2025, 3, 3), kst(2025, 3, 10))
    steps = steps_of(engine, "scaling-recall-6m")
    assert steps[("p1", "d1")]["status"] == "waiting"
    assert steps[("p1", "d1")]["due_at"] == kst(2025, 9, 1, 11)
    j.run_days(kst(2025, 8, 30), kst(2025, 9, 10))

    assert j.sent == {
        "p1/a1": (kst(2025, 9, 1, 11), "wake"),
        "p3/a1": (kst(2025, 9, 8, 10), "wake"),
    }
    assert steps_of(engine, "scaling-recall-6m")[("p2", "c1")]["output"] == {"branch": "false"}
    assert all(m["channel"] == "lms" and "2025년 3월 3일" in m["body"] for m in fake.messages()[:1])
    assert_exactly_once(fake)


def test_scaling_whitening_offer(engine, journey, fake):
    c = Clinic()
    c.completed("p1", kst(2025, 3, 3, 11), type="scaling", consent_marketing=True)
    c.completed(
        "p2", kst(2025, 3, 3, 11), type="scaling", consent_marketing=True, birth_date=date(2010, 5, 5)
    )
    c.completed(
        "p3", kst(2025, 3, 3, 11), type="scaling", consent_marketing=True, attributes={"whitening_done": True}
    )
    c.completed("p4", kst(2025, 3, 3, 11), type="scaling", consent_marketing=False)
    c.completed("p5", kst(2025, 3, 7, 19, 30), type="scaling", consent_marketing=True)
    c.load(engine)
    j = journey(example("scaling-whitening-offer"))
    j.run_days(kst(2025, 3, 3), kst(2025, 3, 18))

    assert j.sent == {
        "p1/a1": (kst(2025, 3, 10, 11), "wake"),
        "p5/a1": (kst(2025, 3, 17, 10), "wake"),  # Friday 19:30 is past the 19:00 close
    }
    assert set(executions(engine, "scaling-whitening-offer")) == {"p1", "p3", "p4", "p5"}  # p2 is a minor
    enroll_reasons = sum(
        (r.reasons for _, r in j.reports if r.node_type == "trigger"),
        start=Counter(),
    )
    assert enroll_reasons["filtered_age"] == 1
    steps = steps_of(engine, "scaling-whitening-offer")
    assert steps[("p3", "c1")]["output"] == {"branch": "false"}
    assert steps[("p4", "c1")]["output"] == {"branch": "false"}
    assert all(m["body"].startswith("(광고)") for m in fake.messages())
    assert_exactly_once(fake)
