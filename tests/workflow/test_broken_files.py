"""Every file in include/broken is refused with the expected code, naming the offending node or edge."""

from __future__ import annotations

import pytest

from careflow.workflow.validation import validate_path

from .builders import BROKEN, load
from .test_every_code import HAVE_TEMPLATES, TEMPLATE_CHECKER_CODES

#: file name -> (code, node id, edge id) the refusal must carry.
EXPECTED: dict[str, tuple[str, str | None, str | None]] = {
    "action-bad-purpose.json": ("ACTION_BAD_PURPOSE", "a1", None),
    "action-email-without-subject.json": ("ACTION_EMAIL_SUBJECT_MISSING", "a1", None),
    "action-empty-template.json": ("ACTION_TEMPLATE_MISSING", "a1", None),
    "action-sms-too-long.json": ("ACTION_TEMPLATE_CHANNEL_LIMIT", "a1", None),
    "action-template-syntax.json": ("ACTION_TEMPLATE_SYNTAX", "a1", None),
    "action-template-unknown-variable.json": ("ACTION_TEMPLATE_UNKNOWN_VARIABLE", "a1", None),
    "action-template-unsafe.json": ("ACTION_TEMPLATE_UNSAFE", "a1", None),
    "action-unknown-channel.json": ("ACTION_UNKNOWN_CHANNEL", "a1", None),
    "condition-all-and-any.json": ("CONDITION_BAD_GROUP", "c1", None),
    "condition-bad-handle.json": ("CONDITION_BAD_HANDLE", "c1", "e3"),
    "condition-bad-status-value.json": ("CONDITION_BAD_VALUE", "c1", None),
    "condition-gt-on-boolean.json": ("CONDITION_BAD_VALUE", "c1", None),
    "condition-in-without-list.json": ("CONDITION_BAD_VALUE", "c1", None),
    "condition-missing-handle.json": ("CONDITION_MISSING_HANDLE", "c1", "e3"),
    "condition-no-rules.json": ("CONDITION_BAD_GROUP", "c1", None),
    "condition-rule-without-op.json": ("CONDITION_BAD_RULE", "c1", None),
    "condition-unknown-field.json": ("CONDITION_UNKNOWN_FIELD", "c1", None),
    "condition-unknown-operator.json": ("CONDITION_UNKNOWN_OPERATOR", "c1", None),
    "delay-amount-as-text.json": ("DELAY_BAD_DURATION", "d1", None),
    "delay-bad-offset.json": ("DELAY_BAD_OFFSET", "d1", None),
    "delay-bad-time.json": ("DELAY_BAD_TIME", "d1", None),
    "delay-bad-unit.json": ("DELAY_BAD_UNIT", "d1", None),
    "delay-both-kinds.json": ("DELAY_BAD_DURATION", "d1", None),
    "delay-negative-amount.json": ("DELAY_BAD_DURATION", "d1", None),
    "delay-until-unknown-field.json": ("DELAY_BAD_UNTIL", "d1", None),
    "edge-bad-source-type.json": ("EDGE_BAD_FIELD", None, "e2"),
    "edge-duplicate-id.json": ("EDGE_DUPLICATE_ID", None, "e3"),
    "edge-duplicate-link.json": ("DUPLICATE_EDGE", "a1", "e5"),
    "edge-self-loop.json": ("EDGE_SELF_LOOP", "d1", "e5"),
    "edge-unknown-source.json": ("EDGE_UNKNOWN_SOURCE", None, "e1"),
    "edge-unknown-target.json": ("EDGE_UNKNOWN_TARGET", None, "e4"),
    "graph-cycle.json": ("GRAPH_CYCLE", "w1", "e5"),
    "node-bad-id.json": ("NODE_BAD_ID", "w 1", None),
    "node-duplicate-id.json": ("NODE_DUPLICATE_ID", "d1", None),
    "node-label-too-long.json": ("NODE_BAD_FIELD", "a1", None),
    "node-missing-data.json": ("NODE_MISSING_DATA", "d1", None),
    "node-missing-type.json": ("NODE_MISSING_TYPE", "w1", None),
    "node-unknown-field.json": ("NODE_UNKNOWN_FIELD", "d1", None),
    "node-unknown-type.json": ("NODE_UNKNOWN_TYPE", "w1", None),
    "trigger-age-filter-inverted.json": ("TRIGGER_BAD_FILTER", "t1", None),
    "trigger-has-incoming.json": ("TRIGGER_HAS_INCOMING", "t1", "e5"),
    "trigger-multiple.json": ("TRIGGER_MULTIPLE", "t2", None),
    "trigger-schedule-once.json": ("TRIGGER_BAD_SCHEDULE", "t1", None),
    "trigger-schedule-six-field-cron.json": ("TRIGGER_BAD_SCHEDULE", "t1", None),
    "trigger-unknown-event.json": ("TRIGGER_UNKNOWN_EVENT", "t1", None),
    "window-bad-day.json": ("WINDOW_BAD_DAY", "w1", None),
    "window-bad-time.json": ("WINDOW_BAD_TIME", "w1", None),
    "window-bad-timezone.json": ("WINDOW_BAD_TIMEZONE", "w1", None),
}


def test_every_broken_file_has_an_expectation_and_a_readme_line():
    files = sorted(p.name for p in BROKEN.glob("*.json"))
    assert len(files) >= 25
    assert files == sorted(EXPECTED)
    readme = (BROKEN / "README.md").read_text(encoding="utf-8")
    for name in files:
        assert f"`{name}`" in readme, f"{name} is not listed in include/broken/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_is_refused_where_it_is_broken(name: str):
    code, node_id, edge_id = EXPECTED[name]
    if code in TEMPLATE_CHECKER_CODES and not HAVE_TEMPLATES:
        pytest.skip("needs careflow.templates")
    report = validate_path(BROKEN / name)
    assert not report.ok and report.workflow is None
    assert report.workflow_id == load(BROKEN / name)["id"]
    hits = [d for d in report.errors if d.code == code]
    assert hits, f"{name}: expected {code}, got {report.codes}"
    assert any(d.node_id == node_id and d.edge_id == edge_id for d in hits), [
        (d.node_id, d.edge_id) for d in hits
    ]
    if node_id is not None:
        assert f"{node_id}" in hits[0].message  # the admin reads which node it is
