"""Each allow-listed filter, rendered through the real sandbox."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from careflow.exceptions import TemplateError
from careflow.templates.filters import FILTERS, format_datetime


def test_the_allow_list_is_exactly_the_documented_filters():
    assert set(FILTERS) == {
        "date", "time", "korean_date", "korean_time", "weekday_ko", "default", "upper", "lower",
        "trim", "truncate", "mask_phone", "mask_name", "phone", "number", "length", "join", "round",
    }  # fmt: skip


def test_date_converts_to_the_patients_timezone(render, context):
    # 2026-03-14 01:30 UTC is 10:30 in Seoul, and still 13 March (20:30) in New York.
    assert render("{{ appointment.scheduled_at | date('%Y.%m.%d %H:%M') }}") == "2026.03.14 10:30"
    context["patient"]["timezone"] = "America/New_York"
    assert render("{{ appointment.scheduled_at | date('%Y.%m.%d %H:%M') }}") == "2026.03.13 21:30"


def test_date_falls_back_to_the_clinic_timezone(render, context):
    context["patient"]["timezone"] = None
    context["clinic"]["timezone"] = "Europe/London"
    assert render("{{ appointment.scheduled_at | date('%H:%M') }}") == "01:30"


def test_date_directives(render, context):
    context["appointment"]["scheduled_at"] = datetime(2026, 3, 2, 5, 7, 9, tzinfo=timezone.utc)  # 14:07 KST
    src = "{{ appointment.scheduled_at | date('%-m월 %-d일 %a %A %p %I:%M:%S %-I시 %y %%') }}"
    assert render(src) == "3월 2일 월 월요일 오후 02:07:09 2시 26 %"
    assert render("{{ appointment.scheduled_at | date }}") == "2026-03-02"


def test_date_accepts_dates_naive_datetimes_and_iso_text(render, context):
    assert render("{{ patient.birth_date | date('%Y/%m/%d') }}") == "1990/05/17"
    context["appointment"]["scheduled_at"] = datetime(2026, 3, 14, 9, 0)  # naive: already local
    assert render("{{ appointment.scheduled_at | time }}") == "09:00"
    context["patient"]["attributes"] = {"next_visit": "2026-04-01T00:30:00Z"}
    assert render("{{ patient.attributes.next_visit | date('%m/%d %H:%M') }}") == "04/01 09:30"


def test_date_on_something_that_is_not_a_date_fails_the_render(render, context):
    context["patient"]["attributes"] = {"next_visit": "soon"}
    with pytest.raises(TemplateError) as err:
        render("{{ patient.attributes.next_visit | korean_date }}")
    assert err.value.code == "TEMPLATE_RENDER_FAILED"
    assert "line 1" in err.value.message


def test_date_format_never_reaches_strftime():
    with pytest.raises(TemplateError) as err:
        format_datetime(datetime(2026, 1, 1), "%c")
    assert "'%c' is not supported" in err.value.message


def test_time_default_and_format(render):
    assert render("{{ appointment.scheduled_at | time }}") == "10:30"
    assert render("{{ appointment.scheduled_at | time('%p %-I시') }}") == "오전 10시"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2026, 3, 14, 5, 30, tzinfo=timezone.utc), "오후 2시 30분"),
        (datetime(2026, 3, 14, 1, 0, tzinfo=timezone.utc), "오전 10시"),
        (datetime(2026, 3, 14, 3, 0, tzinfo=timezone.utc), "오후 12시"),
        (datetime(2026, 3, 13, 15, 5, tzinfo=timezone.utc), "오전 12시 5분"),
    ],
)
def test_korean_time(render, context, when, expected):
    context["appointment"]["scheduled_at"] = when
    assert render("{{ appointment.scheduled_at | korean_time }}") == expected


def test_korean_date_and_weekday(render, context):
    assert render("{{ appointment.scheduled_at | korean_date }}") == "2026년 3월 14일 (토)"
    assert render("{{ appointment.scheduled_at | weekday_ko }}") == "토"
    context["appointment"]["scheduled_at"] = date(2026, 3, 16)
    assert render("{{ appointment.scheduled_at | weekday_ko }}요일") == "월요일"


def test_default_replaces_missing_none_and_empty(render, context):
    context["patient"]["email"] = None
    context["clinic"]["phone"] = ""
    assert render("{{ patient.email | default('없음') }}") == "없음"
    assert render("{{ clinic.phone | default('02-000-0000') }}") == "02-000-0000"
    assert render("{{ patient.attributes.grade | default('일반') }}") == "일반"
    assert render("{{ patient.name | default('고객') }}") == "김민지"


def test_upper_lower_trim(render, context):
    context["clinic"]["name"] = "  Smile Dental  "
    assert render("[{{ clinic.name | trim | upper }}]") == "[SMILE DENTAL]"
    assert render("[{{ clinic.name | trim | lower }}]") == "[smile dental]"


def test_truncate(render, context):
    context["clinic"]["name"] = "가나다라마바사아자차"
    assert render("{{ clinic.name | truncate(5) }}") == "가나다라…"
    assert render("{{ clinic.name | truncate(5, '..') }}") == "가나다.."
    assert render("{{ clinic.name | truncate(10) }}") == "가나다라마바사아자차"


@pytest.mark.parametrize(
    ("number", "masked", "formatted"),
    [
        ("010-1234-5678", "010-****-5678", "010-1234-5678"),
        ("01012345678", "010-****-5678", "010-1234-5678"),
        ("+82 10-1234-5678", "010-****-5678", "010-1234-5678"),
        ("0111234567", "011-***-4567", "011-123-4567"),
        ("025550101", "02-***-0101", "02-555-0101"),
        ("15880000", "****-0000", "1588-0000"),
    ],
)
def test_phone_and_mask_phone(render, context, number, masked, formatted):
    context["patient"]["phone"] = number
    assert render("{{ patient.phone | mask_phone }}") == masked
    assert render("{{ patient.phone | phone }}") == formatted


def test_phone_leaves_foreign_numbers_alone(render, context):
    context["patient"]["phone"] = "+1 415 555 0100"
    assert render("{{ patient.phone | phone }}") == "+1 415 555 0100"
    assert render("{{ patient.phone | mask_phone }}") == "*******0100"


@pytest.mark.parametrize(
    ("name", "masked"), [("김민지", "김*지"), ("남궁민수", "남**수"), ("김민", "김*"), ("김", "*")]
)
def test_mask_name(render, context, name, masked):
    context["patient"]["name"] = name
    assert render("{{ patient.name | mask_name }}") == masked


def test_number(render, context):
    context["patient"]["attributes"] = {"points": 1234567, "balance": "98765", "rate": 1234.5}
    assert render("{{ patient.attributes.points | number }}") == "1,234,567"
    assert render("{{ patient.attributes.balance | number }}원") == "98,765원"
    assert render("{{ patient.attributes.rate | number }}") == "1,234.5"


def test_round(render, context):
    context["patient"]["attributes"] = {"score": 3.14159}
    assert render("{{ patient.attributes.score | round }}") == "3"
    assert render("{{ patient.attributes.score | round(2) }}") == "3.14"


def test_length_and_join(render, context):
    context["patient"]["attributes"] = {"teeth": ["11", "21", "36"]}
    assert render("{{ patient.attributes.teeth | length }}개") == "3개"
    assert render("{{ patient.name | length }}") == "3"
    assert render("{{ patient.attributes.teeth | join(', ') }}") == "11, 21, 36"
    assert render("{{ patient.attributes.teeth | join }}") == "11, 21, 36"


def test_a_filter_on_a_missing_value_is_an_unknown_variable(render, context):
    context["patient"]["email"] = None
    with pytest.raises(TemplateError) as err:
        render("{{ patient.email | upper }}")
    assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"
    assert "patient.email" in err.value.message
