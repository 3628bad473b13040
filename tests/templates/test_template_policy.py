"""The sandbox policy: the injection corpus is refused, the allowed constructs work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from careflow.exceptions import TemplateError
from careflow.templates import check_template, compile_template, render_message
from careflow.templates.sandbox import environment
from careflow.workflow.facts import sample_context

PAYLOADS = json.loads((Path(__file__).parent / "injection_payloads.json").read_text(encoding="utf-8"))
REFUSED = {"TEMPLATE_UNSAFE", "TEMPLATE_SYNTAX"}


def test_the_corpus_is_big_enough():
    assert len(PAYLOADS) >= 25
    assert len({p["name"] for p in PAYLOADS}) == len(PAYLOADS)


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p["name"] for p in PAYLOADS])
def test_payload_is_refused_at_publish_and_at_send(payload):
    problems = check_template(payload["template"], channel="lms")
    assert problems, "the payload was accepted"
    assert problems[0].code in REFUSED
    assert all(p.field == "template" for p in problems)
    with pytest.raises(TemplateError) as err:
        render_message(payload["template"], sample_context(), channel="lms")
    assert err.value.code in REFUSED


def test_the_environment_has_no_globals_and_only_allow_listed_filters():
    env = environment()
    assert env.globals == {}
    assert env.autoescape is False
    assert "attr" not in env.filters and "format" not in env.filters
    assert set(env.tests) == {"defined", "undefined", "none"}


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("{% include 'x' %}", "{% include %}"),
        ("{{ patient.__class__ }}", "'__class__'"),
        ("{{ patient|attr('x') }}", "filter 'attr'"),
        ("{{ patient.name.upper() }}", ".upper()"),
        ("{{ conn }}", "'conn'"),
        ("{{ 'a' * 3 }}", "'*'"),
        ("{{ patient }}", "'patient' on its own"),
    ],
)
def test_refusals_name_the_construct_and_the_line(source, words):
    with pytest.raises(TemplateError) as err:
        compile_template("첫 줄\n" + source)
    assert err.value.code == "TEMPLATE_UNSAFE"
    assert words in err.value.message
    assert err.value.message.startswith("line 2: ")


def test_check_template_lists_every_problem():
    problems = check_template("{{ conn }}\n{{ var }}\n{{ patient.nmae }}", channel="sms")
    assert [(p.code, p.message[:7]) for p in problems] == [
        ("TEMPLATE_UNSAFE", "line 1:"),
        ("TEMPLATE_UNSAFE", "line 2:"),
        ("TEMPLATE_UNKNOWN_VARIABLE", "line 3:"),
    ]


def test_too_long_a_template_is_refused_before_parsing():
    problems = check_template("가" * 20_001, channel="email", subject="안내")
    assert [p.code for p in problems] == ["TEMPLATE_TOO_LONG"]


def test_syntax_errors_carry_the_line():
    problems = check_template("안녕하세요\n{{ patient.name }", channel="sms")
    assert problems[0].code == "TEMPLATE_SYNTAX"
    assert problems[0].message.startswith("line 2: ")


def test_allowed_constructs_render(render, context):
    context["patient"]["attributes"] = {"teeth": ["11", "21"], "plan": {"name": "골드"}}
    source = (
        "{% if patient.age >= 65 and not patient.consent_marketing %}어르신"
        "{% elif patient.age > 30 or patient.name == '홍길동' %}고객"
        "{% else %}학생{% endif %}님 "
        "{{ patient.attributes.plan.name ~ ' 플랜' }} "
        "{% for t in patient.attributes.teeth %}{{ t }}{% if not loop.last %}/{% endif %}{% endfor %} "
        "{{ patient.attributes['teeth'][0] }}{{ patient.name[0:1] }} "
        "{{ '예약' if appointment.status in ['scheduled', 'completed'] else '취소' }}"
        "{% raw %} {{ 그대로 }}{% endraw %}"
    )
    assert render(source) == "고객님 골드 플랜 11/21 11김 예약 {{ 그대로 }}"


def test_a_loop_can_go_over_items_of_a_list_of_dicts(render, context):
    context["patient"]["attributes"] = {"visits": [{"day": "월", "slots": ["09:00", "10:00"]}]}
    source = (
        "{% for v in patient.attributes.visits %}{{ v.day }}: "
        "{% for s in v.slots %}{{ s }} {% endfor %}{% else %}없음{% endfor %}"
    )
    assert render(source) == "월: 09:00 10:00 "


def test_a_dicts_methods_are_never_reached(render, context):
    # Jinja normally prefers attributes; here a clinic attribute called "items" is the attribute.
    context["patient"]["attributes"] = {"items": "칫솔"}
    assert render("{{ patient.attributes.items }}") == "칫솔"
    context["patient"]["attributes"] = {}
    with pytest.raises(TemplateError) as err:
        render("{{ patient.attributes.keys }}")
    assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"


def test_a_whole_attribute_group_is_not_printed(render, context):
    context["patient"]["attributes"] = {"plan": {"name": "골드", "card": "1234"}}
    with pytest.raises(TemplateError) as err:
        render("{{ patient.attributes.plan }}")
    assert err.value.code == "TEMPLATE_RENDER_FAILED"


def test_unsupported_date_directive_is_refused_at_publish():
    problems = check_template("{{ appointment.scheduled_at | date('%B') }}", channel="sms")
    assert problems[0].code == "TEMPLATE_SYNTAX"
    assert "'%B'" in problems[0].message
