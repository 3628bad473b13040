"""Templates that only print text and facts are joined directly, exactly as the sandbox renders them."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timezone
from typing import Any

import pytest

from careflow.exceptions import TemplateError
from careflow.templates import compile_template, limits, render_message, render_subject
from careflow.templates.render import CompiledTemplate

PLAIN = [
    "{{ patient.name }}님, {{ clinic.name }}입니다. 내원해 주셔서 감사합니다.",
    "{{patient.name}}",
    "안내: {{ appointment.type }} / {{ event.type }}\n문의 {{ clinic.phone }}\n",
    "  {{ patient.name }}  \n\n",
    "{{ patient.name }}{{ patient.name }}",
    "{{- patient.name -}}  님  {{- clinic.name }}",
    "{# 메모 #}{{ patient.name }}님",
    "{% raw %}{{ 그대로 }}{% endraw %} {{ patient.name }}",
]

NOT_PLAIN = [
    "{{ patient.name | upper }}",
    "{{ patient['name'] }}",
    "{{ patient.attributes.vip }}",
    "{{ '안녕' }}",
    "{{ patient.name ~ '님' }}",
    "{% if clinic.phone %}{{ clinic.phone }}{% endif %}",
    "{% for n in patient.attributes.notes %}{{ n }}{% endfor %}",
]


def through_the_sandbox(compiled: CompiledTemplate) -> CompiledTemplate:
    """The same template rendered the general way (Jinja's render function)."""
    return dataclasses.replace(compiled, parts=None)


def outcome(compiled: CompiledTemplate, context: dict[str, Any]) -> tuple[str, str]:
    try:
        return "text", compiled.render(context)
    except TemplateError as exc:
        return exc.code, exc.message


@pytest.mark.parametrize("source", PLAIN)
def test_a_plain_template_is_rendered_without_jinja(source, context, monkeypatch):
    compiled = compile_template(source)
    assert compiled.parts is not None
    expected = through_the_sandbox(compiled).render(context)

    def jinja_called(*_: Any) -> Any:
        raise AssertionError("rendered through Jinja")

    monkeypatch.setattr(compiled.template, "root_render_func", jinja_called)
    assert compiled.render(context) == expected
    with pytest.raises(TemplateError, match="AssertionError"):  # the sandbox reports the kind only
        through_the_sandbox(compiled).render(context)


@pytest.mark.parametrize("source", NOT_PLAIN)
def test_any_other_template_goes_through_the_sandbox(source):
    assert compile_template(source).parts is None


TEXTS = ["김민지", "", " ", "{{ patient.name }}", "{% if %}", "줄\n바꿈", "😀 이모지", "\t탭 ", "a" * 2_000]


@pytest.mark.parametrize("source", PLAIN)
@pytest.mark.parametrize("text", TEXTS)
def test_the_text_is_the_sandboxs_for_any_text_value(source, text, context):
    context["patient"]["name"] = text
    context["clinic"]["name"] = text[::-1]
    compiled = compile_template(source)
    assert outcome(compiled, context) == outcome(through_the_sandbox(compiled), context)


class Name(str):
    """A text of a class of its own (the sandbox prints it; the plain join leaves it to it)."""

    def __str__(self) -> str:
        return "이름"


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        0,
        True,
        1.5,
        date(2026, 3, 14),
        datetime(2026, 3, 14, 1, 30, tzinfo=timezone.utc),
        {"a": 1},
        ["a"],
        Name("김민지"),
    ],
    ids=repr,
)
def test_a_fact_that_is_not_text_is_printed_or_refused_by_the_sandbox(value, context):
    context["patient"]["name"] = value
    compiled = compile_template("안녕하세요\n{{ patient.name }}님")
    assert compiled.parts is not None
    got = outcome(compiled, context)
    assert got == outcome(through_the_sandbox(compiled), context)
    if value is None:
        assert got[0] == "TEMPLATE_UNKNOWN_VARIABLE" and got[1].startswith("line 2: 'patient.name'")


def test_a_missing_fact_or_record_is_refused_as_by_the_sandbox(context):
    compiled = compile_template("문의 {{ clinic.phone }}")
    del context["clinic"]["phone"]
    missing_fact = outcome(compiled, context)
    assert missing_fact == outcome(through_the_sandbox(compiled), context)
    assert missing_fact[0] == "TEMPLATE_UNKNOWN_VARIABLE" and "'clinic.phone'" in missing_fact[1]
    del context["clinic"]
    assert outcome(compiled, context) == outcome(through_the_sandbox(compiled), context)


def test_the_caps_of_a_render_hold(context, monkeypatch):
    context["patient"]["name"] = "가" * (limits.MAX_RENDER_CHARS + 1)
    with pytest.raises(TemplateError) as err:
        render_message("{{ patient.name }}님", context, channel="email")
    assert err.value.code == "TEMPLATE_OUTPUT_TOO_LARGE"
    context["patient"]["name"] = "김민지"
    monkeypatch.setattr(limits, "RENDER_BUDGET_SECONDS", -1.0)
    with pytest.raises(TemplateError) as err:
        render_message("{{ patient.name }}님", context, channel="kakao")
    assert err.value.code == "TEMPLATE_RENDER_TIMEOUT"


def test_a_lone_surrogate_in_a_printed_fact_fails_that_recipient(context):
    context["patient"]["name"] = "김\ud83d"
    for render in (
        lambda: render_message("{{ patient.name }}님", context, channel="kakao"),
        lambda: render_subject("{{ patient.name }}님", context),
    ):
        with pytest.raises(TemplateError) as err:
            render()
        assert err.value.code == "TEMPLATE_RENDER_FAILED" and "lone surrogate" in err.value.message


def test_an_empty_message_and_the_channel_limit_are_checked_after_the_join(context):
    context["patient"]["name"] = "  "
    with pytest.raises(TemplateError) as err:
        render_message("{{ patient.name }}", context, channel="kakao")
    assert err.value.code == "TEMPLATE_EMPTY"
    context["patient"]["name"] = "가" * 100
    with pytest.raises(TemplateError) as err:
        render_message("{{ patient.name }}", context, channel="sms")
    assert err.value.code == "TEMPLATE_CHANNEL_LIMIT"
