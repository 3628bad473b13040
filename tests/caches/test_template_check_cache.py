"""Publish-time template checks are cached across processes; the sandbox still decides at render."""

from __future__ import annotations

import pytest

from careflow.exceptions import TemplateError
from careflow.resilience.cache import TEMPLATES, cache_stats
from careflow.templates import check_cache, check_template, render_message
from careflow.templates import render as render_module
from careflow.workflow.facts import sample_context

from .conftest import another_process

GOOD = "{{ patient.name }}님, 내일 {{ appointment.scheduled_at | korean_time }} 예약입니다."
UNSAFE = "{{ patient.__class__.__mro__[1].__subclasses__() }}"


def stats() -> dict:
    return next(s for s in cache_stats() if s["name"] == TEMPLATES)


def _poison(redis_client, prefix: str, key: str, value: str) -> None:
    redis_client.set(f"{prefix}:cache:{{{TEMPLATES}}}:v:{key}", b"s" + value.encode("utf-8"))


@pytest.fixture
def context():
    return sample_context()


def test_a_second_check_in_another_process_is_a_hit(shared, monkeypatch):
    assert check_template(GOOD, channel="kakao") == []
    problems = check_template(UNSAFE, channel="kakao")
    assert [p.code for p in problems] and all(p.code == "TEMPLATE_UNSAFE" for p in problems)
    another_process()
    calls: list = []
    original = render_module._check_template
    monkeypatch.setattr(
        render_module, "_check_template", lambda *a, **kw: calls.append(a) or original(*a, **kw)
    )
    assert check_template(GOOD, channel="kakao") == []
    assert check_template(UNSAFE, channel="kakao") == problems
    assert calls == [] and (stats()["hits"], stats()["misses"]) == (2, 2)  # counted by every worker
    # Another channel or subject is another question.
    check_template(GOOD, channel="sms")
    check_template(GOOD, channel="email", subject="안내")
    assert stats()["misses"] == 4


def test_a_check_that_ran_out_of_time_is_not_cached(shared, monkeypatch):
    from careflow.templates import limits

    monkeypatch.setattr(limits, "RENDER_BUDGET_SECONDS", -1.0)
    assert [p.code for p in check_template(GOOD + " 시간", channel="kakao")] == ["TEMPLATE_RENDER_TIMEOUT"]
    monkeypatch.setattr(limits, "RENDER_BUDGET_SECONDS", 1.0)
    assert check_template(GOOD + " 시간", channel="kakao") == []


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        '0\n{"format": 1, "key": "x", "problems": []}',  # wrong checksum
    ],
)
def test_an_unsound_entry_is_ignored(shared, redis_client, value):
    key = check_cache.key(UNSAFE, "kakao", None)
    _poison(redis_client, shared, key, value)
    assert [p.code for p in check_template(UNSAFE, channel="kakao")][0] == "TEMPLATE_UNSAFE"


def test_a_sound_answer_filed_under_another_key_is_ignored(shared, redis_client):
    unsafe_key = check_cache.key(UNSAFE, "kakao", None)
    good_key = check_cache.key(GOOD, "kakao", None)
    _poison(redis_client, shared, unsafe_key, check_cache.encode_entry(good_key, []))
    assert [p.code for p in check_template(UNSAFE, channel="kakao")][0] == "TEMPLATE_UNSAFE"


def test_a_forged_clean_answer_never_gets_a_template_past_the_sandbox(shared, redis_client, context):
    # Someone who can write to Redis can seal a "no problem" for an unsafe template: the check
    # then passes, but rendering compiles and polices the template itself and refuses it.
    key = check_cache.key(UNSAFE, "kakao", None)
    _poison(redis_client, shared, key, check_cache.encode_entry(key, []))
    assert check_template(UNSAFE, channel="kakao") == []
    with pytest.raises(TemplateError) as err:
        render_message(UNSAFE, context, channel="kakao")
    assert err.value.code == "TEMPLATE_UNSAFE"
