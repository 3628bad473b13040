"""Template-injection payloads are refused at publish time and never reach a send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from careflow.exceptions import TemplateError
from careflow.publishing import publish_report
from careflow.snapshots import load_all
from careflow.store import tables
from careflow.templates import render_message
from careflow.workflow.facts import sample_context
from careflow.workflow.validation import validate_workflow

from . import make_corpus

PAYLOADS: list[dict[str, str]] = json.loads(
    (Path(__file__).parent / "corpus" / "templates.json").read_text(encoding="utf-8")
)


def with_template(template: str) -> bytes:
    return make_corpus.mutate(lambda w: make_corpus.data(w, "a1").update(template=template))


def test_the_payload_corpus_is_large_and_covers_the_known_shapes():
    names = " ".join(p["name"] for p in PAYLOADS)
    assert len(PAYLOADS) >= 20
    for shape in ("class walk", "cycler", "lipsum", "Airflow connection", "include", "format", "billion"):
        assert shape in names, shape


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p["name"])
def test_a_payload_is_refused_with_an_action_template_error(payload):
    report = validate_workflow(with_template(payload["template"]), source=payload["name"])
    assert not report.ok and report.workflow is None
    assert report.errors and all(d.code.startswith("ACTION_TEMPLATE_") for d in report.errors), report.codes
    assert all(d.node_id == "a1" and d.field in ("data.template", "data.subject") for d in report.errors)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p["name"])
def test_the_sandbox_refuses_a_payload_even_if_it_were_asked_to_render_it(payload):
    with pytest.raises(TemplateError) as err:
        render_message(payload["template"], sample_context(), channel="email")
    assert err.value.code.startswith("TEMPLATE_")


def test_refused_payloads_leave_nothing_to_send(engine, workflows_dir):
    for payload in PAYLOADS:
        result = publish_report(
            validate_workflow(with_template(payload["template"]), source=payload["name"]),
            engine=engine,
            workflows_dir=workflows_dir,
        )
        assert result.action == "refused" and result.version is None and result.snapshot is None
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.workflow_versions)).scalar() == 0
    assert load_all(workflows_dir) == ([], [])  # no snapshot: no DAG, no run, no send


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("lone surrogate escape", "{{ patient.name }}님 내일 예약입니다 {{ '\\ud83d' }}"),
        ("5,000-digit integer", "{{ " + "9" * 5000 + " }}"),
        ("20,000-bit hexadecimal", "{{ 0x" + "f" * 5000 + " }}"),
        ("float overflowing to infinity", "{{ 1e999 }}"),
    ],
)
def test_text_no_provider_can_send_and_unreadable_numbers_are_syntax_errors(name, template):
    report = validate_workflow(with_template(template), source=name)
    assert not report.ok and report.workflow is None
    assert [(d.code, d.node_id, d.field) for d in report.errors] == [
        ("ACTION_TEMPLATE_SYNTAX", "a1", "data.template")
    ]
