"""Rendering at send time, checking at publish time, bounds and the compile cache."""

from __future__ import annotations

import pytest

from careflow.exceptions import TemplateError
from careflow.templates import (
    cache_info,
    check_template,
    compile_template,
    limits,
    render_message,
    render_subject,
)
from careflow.templates.render import clear_cache

DESIGN_TEMPLATE = (
    "{{ patient.name }}님, {{ appointment.scheduled_at | date('%m월 %d일') }} 수술 후 경과는 어떠신가요?"
    "{% if clinic.phone %} 문의: {{ clinic.phone }}{% endif %}"
)


def test_the_design_example_renders_with_the_sample_context(render, context):
    assert check_template(DESIGN_TEMPLATE, channel="kakao") == []
    assert render(DESIGN_TEMPLATE) == "김민지님, 03월 14일 수술 후 경과는 어떠신가요? 문의: 02-555-0101"
    context["clinic"]["phone"] = None
    assert render(DESIGN_TEMPLATE) == "김민지님, 03월 14일 수술 후 경과는 어떠신가요?"


def test_a_misspelt_variable_is_refused_at_publish_with_a_suggestion():
    problems = check_template("{{ patient.nmae }}님 안녕하세요", channel="kakao")
    assert [p.code for p in problems] == ["TEMPLATE_UNKNOWN_VARIABLE"]
    assert "'patient.nmae'" in problems[0].message
    assert "did you mean 'patient.name'" in problems[0].message


def test_a_misspelt_variable_is_refused_at_send(context):
    with pytest.raises(TemplateError) as err:
        render_message("{{ appointmnet.type }}", context, channel="kakao")
    assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"
    assert "did you mean 'appointment'" in err.value.message


def test_a_value_missing_for_one_recipient_fails_at_send_naming_it(context):
    del context["clinic"]["phone"]
    context["patient"]["email"] = None
    for source, path in [
        ("문의 {{ clinic.phone }}", "clinic.phone"),
        ("\n{{ patient.email }}", "patient.email"),
    ]:
        with pytest.raises(TemplateError) as err:
            render_message(source, context, channel="kakao")
        assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"
        assert f"'{path}' has no value" in err.value.message
    assert "line 2: " in err.value.message


def test_clinic_attributes_publish_without_a_sample_value():
    source = (
        "{{ patient.attributes.grade }} 등급, 포인트 {{ patient.attributes.points | number }}점, "
        "다음 방문 {{ patient.attributes.next.visit | korean_date }}"
        "{% for t in patient.attributes.teeth %}{{ t }}{% endfor %}"
        "{% if patient.attributes.visits > 3 and patient.attributes.tier != 'gold' %}단골{% endif %}"
    )
    assert check_template(source, channel="lms") == []


def test_sms_counts_cp949_bytes():
    hangul_45 = "가" * 45  # 90 bytes
    assert check_template(hangul_45, channel="sms") == []
    problems = check_template(hangul_45 + "A", channel="sms")
    assert [p.code for p in problems] == ["TEMPLATE_CHANNEL_LIMIT"]
    assert "91 bytes" in problems[0].message and "90 bytes" in problems[0].message
    assert check_template(hangul_45 + "A", channel="lms") == []


def test_send_time_channel_limit_depends_on_the_recipient(context):
    source = "{{ patient.name }}님 안녕하세요. 내일 오전 10시 임플란트 수술이 예정되어 있습니다."
    assert render_message(source, context, channel="sms").startswith("김민지님")
    context["patient"]["name"] = "가" * 30
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="sms")
    assert err.value.code == "TEMPLATE_CHANNEL_LIMIT"


def test_kakao_counts_characters():
    assert check_template("가" * 1000, channel="kakao") == []
    assert [p.code for p in check_template("가" * 1001, channel="kakao")] == ["TEMPLATE_CHANNEL_LIMIT"]


def test_email_needs_a_subject_checked_by_the_same_rules():
    assert [(p.code, p.field) for p in check_template("본문", channel="email")] == [
        ("TEMPLATE_SUBJECT_REQUIRED", "subject")
    ]
    assert check_template("본문", channel="email", subject="{{ clinic.name }} 안내") == []
    problems = check_template("본문", channel="email", subject="{{ config }}")
    assert [(p.code, p.field) for p in problems] == [("TEMPLATE_UNSAFE", "subject")]
    problems = check_template("본문", channel="email", subject="가" * 201)
    assert [(p.code, p.field) for p in problems] == [("TEMPLATE_CHANNEL_LIMIT", "subject")]


def test_subject_whitespace_is_collapsed(context):
    context["clinic"]["name"] = "강남\r\nBcc: x@example.com"
    assert render_subject("[{{ clinic.name }}]\n안내 ", context) == "[강남 Bcc: x@example.com] 안내"


def test_an_unknown_channel_is_a_problem_not_a_crash(context):
    assert [p.code for p in check_template("안녕", channel="fax")] == ["TEMPLATE_UNKNOWN_CHANNEL"]
    with pytest.raises(TemplateError) as err:
        render_message("안녕", context, channel="fax")
    assert err.value.code == "TEMPLATE_UNKNOWN_CHANNEL"


def test_an_empty_message_is_not_sent(context):
    context["clinic"]["phone"] = None
    with pytest.raises(TemplateError) as err:
        render_message("{% if clinic.phone %}{{ clinic.phone }}{% endif %}", context, channel="sms")
    assert err.value.code == "TEMPLATE_EMPTY"


def test_check_template_never_raises_for_bad_input():
    for source in (None, 42, "{% if %}", "{{ patient.name | date('%') }}"):
        problems = check_template(source, channel="sms")  # type: ignore[arg-type]
        assert problems and problems[0].code in {"TEMPLATE_SYNTAX", "TEMPLATE_UNSAFE"}


def test_a_template_nested_too_deeply_is_a_problem_not_a_crash(context):
    source = "{{ patient.attributes" + ".a" * 1000 + " }}"
    [problem] = check_template(source, channel="sms")
    assert problem.code == "TEMPLATE_SYNTAX" and "nests too deeply" in problem.message
    with pytest.raises(TemplateError) as refused:
        render_message(source, context, channel="sms")
    assert refused.value.code == "TEMPLATE_SYNTAX"


def test_a_long_loop_is_refused(context):
    context["patient"]["attributes"] = {"items": ["x"] * (limits.MAX_LOOP_ITEMS + 1)}
    with pytest.raises(TemplateError) as err:
        render_message("{% for i in patient.attributes.items %}{{ i }}{% endfor %}", context, channel="lms")
    assert err.value.code == "TEMPLATE_OUTPUT_TOO_LARGE"


def test_nested_loops_share_one_iteration_budget(context):
    row = ["x"] * limits.MAX_LOOP_ITEMS
    context["patient"]["attributes"] = {"rows": [row] * limits.MAX_LOOP_ITEMS}
    source = "{% for r in patient.attributes.rows %}{% for c in r %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="email")
    assert err.value.code == "TEMPLATE_OUTPUT_TOO_LARGE"
    assert str(limits.MAX_LOOP_ITERATIONS) in err.value.message


def test_output_is_capped_while_rendering(context):
    context["patient"]["attributes"] = {"notes": ["가" * 5_000] * 50}  # 250,000 characters
    with pytest.raises(TemplateError) as err:
        render_message("{% for n in patient.attributes.notes %}{{ n }}{% endfor %}", context, channel="email")
    assert err.value.code == "TEMPLATE_OUTPUT_TOO_LARGE"


def test_render_time_is_bounded(context, monkeypatch):
    monkeypatch.setattr(limits, "RENDER_BUDGET_SECONDS", -1.0)
    with pytest.raises(TemplateError) as err:
        render_message("{{ patient.name }}님", context, channel="sms")
    assert err.value.code == "TEMPLATE_RENDER_TIMEOUT"


def test_the_render_clock_leaves_out_garbage_collection():
    # A full collection in a worker that imported Airflow takes a large share of the render
    # budget; it must not fail the patient whose render it happened to interrupt.
    import gc
    import time

    from careflow.templates.budget import _clock

    junk = [[[] for _ in range(20)] for _ in range(20_000)]
    clock_before, cpu_before = _clock(), time.thread_time()
    gc.collect()
    cpu = time.thread_time() - cpu_before
    counted = _clock() - clock_before
    del junk
    assert cpu > 0.005, cpu  # the collection really cost something
    assert counted < cpu / 5, (counted, cpu)


def test_compiled_templates_are_cached_by_source():
    clear_cache()
    source = "{{ patient.name }}님 캐시 확인"
    first = compile_template(source)
    assert cache_info() == {"hits": 0, "misses": 1, "size": 1}
    assert compile_template(source) is first
    assert compile_template(source) is first
    assert cache_info() == {"hits": 2, "misses": 1, "size": 1}
    compile_template(source + " ")
    assert cache_info() == {"hits": 2, "misses": 2, "size": 2}


def test_refused_templates_are_not_cached():
    clear_cache()
    for _ in range(2):
        with pytest.raises(TemplateError):
            compile_template("{{ conn }}")
    assert cache_info()["size"] == 0


@pytest.fixture
def cpu_clock_reads(monkeypatch):
    """A list that grows by one at every read of the CPU clock by the render budget."""
    import time

    from careflow.templates import budget

    reads: list[int] = []
    real = time.thread_time
    monkeypatch.setattr(budget.time, "thread_time", lambda: reads.append(1) or real())
    return reads


def test_a_render_reads_the_cpu_clock_only_once_its_budget_could_be_spent(
    context, monkeypatch, cpu_clock_reads
):
    # The CPU clock is a system call; a render well within its budget reads it at most once (at
    # the start), however many chunks it writes. A render past its budget is still stopped.
    import gc

    from careflow.templates import budget

    source = "".join(f"{{{{ patient.name }}}} {i} " for i in range(50))
    gc.disable()  # a full collection reads the clock too (to leave its time out)
    try:
        render_message(source, context, channel="email")
    finally:
        gc.enable()
    assert len(cpu_clock_reads) <= 1
    # At most CPU_READ_REUSED_FOR_SECONDS past the budget: a budget that much below nothing stops it.
    monkeypatch.setattr(limits, "RENDER_BUDGET_SECONDS", -budget.CPU_READ_REUSED_FOR_SECONDS)
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="email")
    assert err.value.code == "TEMPLATE_RENDER_TIMEOUT"


def test_renders_back_to_back_share_a_cpu_clock_read(context, cpu_clock_reads):
    # A batch renders hundreds of messages in a row on one thread: the CPU clock is read once
    # every CPU_READ_REUSED_FOR_SECONDS of wall time, not once a render.
    import gc
    import time

    from careflow.templates import budget

    renders = 200
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(renders):
            render_message("{{ patient.name }}님, 내일 뵙겠습니다", context, channel="sms")
        wall = time.perf_counter() - started
    finally:
        gc.enable()
    assert len(cpu_clock_reads) <= wall / budget.CPU_READ_REUSED_FOR_SECONDS + 1, (len(cpu_clock_reads), wall)
    assert len(cpu_clock_reads) < renders / 4, (len(cpu_clock_reads), wall)


def test_a_shared_cpu_clock_read_never_starts_a_budget_early():
    # The reused read plus the wall time since is at or above the CPU clock at the render's start:
    # the budget may run a little late, never early, even when the thread worked since the read.
    import time

    from careflow.templates import budget
    from careflow.templates.budget import RenderBudget, _clock

    budget._last_read.wall = float("-inf")
    RenderBudget.start()  # a fresh read
    spin_until = time.thread_time() + budget.CPU_READ_REUSED_FOR_SECONDS / 2
    while time.thread_time() < spin_until:  # CPU spent after the read, before the next start
        pass
    before = _clock()
    started = RenderBudget.start()
    assert started.deadline - limits.RENDER_BUDGET_SECONDS >= before - 1e-6


def test_a_forked_child_reads_its_own_cpu_clock():
    # The child's thread starts its CPU clock from zero: starting from its parent's read would
    # leave its renders without a budget for as long as the parent had run.
    import os
    import time

    from careflow.templates import budget

    budget._last_read.wall, budget._last_read.cpu = time.perf_counter(), 1_000.0
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it read its own clock
        os._exit(0 if budget._cpu_at(time.perf_counter()) < 1_000.0 else 1)
    _, status = os.waitpid(pid, 0)
    budget._last_read.wall = float("-inf")
    assert os.waitstatus_to_exitcode(status) == 0


# --- clinic attributes a recipient does not have ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% if patient.attributes.vip %}VIP 라운지{% else %}일반 대기실{% endif %}", "일반 대기실"),
        ("안내{% if not patient.attributes.vip %} 일반 대기실{% endif %}", "안내 일반 대기실"),
        ("안내{% if patient.attributes.vip and patient.attributes.vip > 3 %} VIP{% endif %}", "안내"),
        ("{{ patient.attributes.nickname or patient.name }}님", "김민지님"),
        ("{{ 'VIP' if appointment.attributes.vip else '일반' }}", "일반"),
        (
            "안내{% if patient.attributes.grade.level or patient.attributes.visits[1].day %}!{% endif %}",
            "안내",
        ),
        (
            "{% for v in patient.attributes.visits %}{% if v.doctor %}{{ v.doctor }} {% endif %}"
            "{{ v.day }}{% endfor %}",
            "3월 14일",
        ),
    ],
)
def test_a_clinic_attribute_the_recipient_lacks_is_false_in_a_test(context, source, expected):
    context["patient"]["attributes"] = {"grade": "silver", "visits": [{"day": "3월 14일"}]}
    assert check_template(source, channel="kakao") == []
    assert render_message(source, context, channel="kakao") == expected


def test_a_clinic_attribute_the_recipient_has_is_read_in_a_test(context):
    context["patient"]["attributes"] = {"vip": True}
    source = "{% if patient.attributes.vip %}VIP 라운지{% else %}일반 대기실{% endif %}"
    assert render_message(source, context, channel="kakao") == "VIP 라운지"


@pytest.mark.parametrize(
    "source",
    [
        "안내 {{ patient.attributes.vip }}",
        "안내 {{ patient.attributes.vip and '!' }}",
        "안내 {% for v in patient.attributes.vip %}{{ v }}{% endfor %}",
        "안내 {{ patient.attributes.vip | upper }}",
        "안내 {{ patient.attributes.vip | length }}",
        "안내{% if patient.attributes.vip == 'Y' %} VIP{% endif %}",
    ],
)
def test_a_missing_clinic_attribute_printed_looped_over_or_filtered_fails_the_message(context, source):
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="kakao")
    assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"
    assert "'patient.attributes.vip' has no value for this recipient" in err.value.message
    assert "guard it with {% if patient.attributes.vip %}" in err.value.message


def test_a_fact_missing_from_its_record_is_an_error_even_in_a_test(context):
    del context["clinic"]["phone"]
    with pytest.raises(TemplateError) as err:
        render_message("안내{% if clinic.phone %} {{ clinic.phone }}{% endif %}", context, channel="kakao")
    assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE"
    assert "guard it with {% if clinic.phone is defined and clinic.phone %}" in err.value.message


# --- lists in clinic attributes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("다음 방문은 {{ patient.attributes.visits[0].day }}입니다.", "다음 방문은 3월 14일입니다."),
        ("{{ patient.attributes.visits[0]['doctor'] }} 원장", "박 원장"),
        (
            "{% for v in patient.attributes.visits %}{{ v.day }} {{ v.doctor }} 원장 진료\n{% endfor %}",
            "3월 14일 박 원장 진료\n",
        ),
        (
            "{% for v in patient.attributes.visits %}{{ v.day }}{% endfor %}"
            " ({{ patient.attributes.visits[0].doctor }} 원장)",
            "3월 14일 (박 원장)",
        ),
        (
            "{% for t in patient.attributes.visits[0].teeth %}{{ t }}번 {% endfor %}치료",
            "11번 12번 치료",
        ),
    ],
)
def test_items_of_a_clinic_list_publish_and_render(context, source, expected):
    context["patient"]["attributes"] = {"visits": [{"day": "3월 14일", "doctor": "박", "teeth": [11, 12]}]}
    assert check_template(source, channel="kakao") == []
    assert render_message(source, context, channel="kakao") == expected


@pytest.mark.parametrize(
    "source",
    [
        "{% for v in patient.attributes.visits %}{% endfor %}",
        "{% for v in patient.attributes.visits %}  \n{% endfor %}",
        "{% for v in patient.attributes.visits %}{% else %} {% endfor %}",
    ],
)
def test_a_template_whose_loops_print_nothing_is_refused_as_empty(source):
    assert [p.code for p in check_template(source, channel="kakao")] == ["TEMPLATE_EMPTY"]


# --- text no provider can send, numbers Python cannot read ---------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ patient.name }}님 내일 예약입니다 {{ '\\ud83d' }}",
        "{{ patient.name }}님 내일 예약입니다 \ud83d",
        "{{ patient.name }}님 {{ patient.attributes.icon | default('\\udc00') }}",
        "{{ patient.name }}님{% if patient.attributes.icon == '\\ud83d\\ude00' %} 😀{% endif %}",
    ],
)
def test_a_lone_surrogate_in_the_template_is_refused_at_publish(context, source):
    source = "안내\n" + source
    [problem] = check_template(source, channel="kakao")
    assert problem.code == "TEMPLATE_SYNTAX"
    assert problem.message.startswith("line 2: ") and "lone surrogate" in problem.message
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="kakao")
    assert err.value.code == "TEMPLATE_SYNTAX"


def test_a_lone_surrogate_in_the_data_fails_that_recipient_as_a_template_error(context):
    source = "{{ patient.name }}님 {{ patient.attributes.icon }}"
    context["patient"]["attributes"] = {"icon": "\ud83d"}
    for render in (
        lambda: render_message(source, context, channel="kakao"),
        lambda: render_subject(source, context),
    ):
        with pytest.raises(TemplateError) as err:
            render()
        assert err.value.code == "TEMPLATE_RENDER_FAILED" and "lone surrogate" in err.value.message
    context["patient"]["attributes"] = {"icon": "\U0001f600"}
    assert render_message(source, context, channel="kakao") == "김민지님 😀"
    assert render_message("{{ '\\U0001F600' }}", context, channel="kakao") == "😀"


@pytest.mark.parametrize("number", ["9" * 5000, "1_" + "0" * 5000, "0x" + "f" * 5000, "1e999"])
def test_a_number_too_long_to_read_is_a_syntax_error(context, number):
    source = "안내\n{{ " + number + " }}"
    [problem] = check_template(source, channel="kakao")
    assert problem.code == "TEMPLATE_SYNTAX"
    assert problem.message.startswith("line 2: a number in the template is too")
    with pytest.raises(TemplateError) as err:
        render_message(source, context, channel="kakao")
    assert err.value.code == "TEMPLATE_SYNTAX"


def test_the_parts_of_a_join_print_as_they_would_alone(render, context):
    # Each part of `a ~ b` follows what `{{ }}` applies: a date in the recipient's timezone, a
    # missing value refused (never "None"), and so on however deep the join.
    assert render("{{ '예약: ' ~ appointment.scheduled_at }}") == "예약: 2026-03-14 10:30"
    assert render("{{ patient.name ~ '님' }}") == "김민지님"
    assert render("{{ ('(' ~ (patient.name ~ ')')) }}") == "(김민지)"
    context["patient"]["email"] = None
    context["patient"]["attributes"] = {"nickname": None}
    for source, path in [
        ("{{ patient.email ~ '' }}", "patient.email"),
        ("{{ '메일 ' ~ ('<' ~ patient.email) }}", "patient.email"),
        ("{{ patient.attributes.nickname ~ '님' }}", "patient.attributes.nickname"),
    ]:
        with pytest.raises(TemplateError) as err:
            render(source)
        assert err.value.code == "TEMPLATE_UNKNOWN_VARIABLE", source
        assert f"'{path}' has no value" in err.value.message


def test_a_list_is_not_printed_as_a_whole(render, context):
    context["patient"]["attributes"] = {"tags": ["임플란트", None], "visits": [{"d": 1}]}
    for source in (
        "{{ patient.attributes.tags }}",
        "{{ patient.attributes.visits }}",
        "{{ '태그: ' ~ patient.attributes.tags }}",
        "{{ patient.attributes.tags[1:] }}",
    ):
        with pytest.raises(TemplateError) as err:
            render(source)
        assert err.value.code == "TEMPLATE_RENDER_FAILED", source
        assert "| join(', ')" in err.value.message
    context["patient"]["attributes"] = {"tags": ["임플란트", "교정"]}
    assert render("{{ patient.attributes.tags | join(', ') }}") == "임플란트, 교정"
    assert render("{{ patient.attributes.tags[0] }}") == "임플란트"


def test_what_a_record_holds_is_read_as_the_sandbox_reads_it(render, context):
    """Facts of a record take a shortcut in the sandbox; what is not one of them still goes the long way."""
    from careflow.templates.sandbox import MissingAttribute, Record, environment

    class Name(str):  # a driver's own string type
        pass

    context["patient"]["name"] = Name("김민지")
    assert render("{{ patient.name }}님") == "김민지님"
    context["patient"] = {**context["patient"], "attributes": {"tags": ["임플란트"]}}
    assert render("{{ patient.attributes.tags[0] }}") == "임플란트"
    env = environment()
    record = Record({"name": "김민지", "_hidden": "x"})
    assert env.getattr(record, "name") == "김민지"
    for name in ("_hidden", "missing"):
        found = env.getattr(record, name)
        assert not isinstance(found, MissingAttribute) and found.__class__ is not str  # undefined
    assert isinstance(env.getattr({"other": 1}, "missing"), MissingAttribute)
    context["patient"] = Record(context["patient"])  # a record handed in as one stays one
    assert render("{{ patient.name }}님") == "김민지님"
