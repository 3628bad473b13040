"""Validation reports are cached by the input's sha256, equal to fresh ones, and never trusted blindly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from unittest import mock

import pytest

from careflow.resilience.cache import VALIDATION, cache_stats
from careflow.workflow import report_cache, validation
from careflow.workflow.validation import validate_path, validate_workflow
from support import EXAMPLES

from .conftest import another_process

BROKEN = sorted((EXAMPLES.parent / "broken").glob("*.json"))
FILES = sorted(EXAMPLES.glob("*.json")) + BROKEN


def stats(name: str) -> dict:
    return next(s for s in cache_stats() if s["name"] == name)


def fresh(raw: bytes, source: str):
    return validation._validate(raw, source)  # the stages themselves, no cache


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_cached_report_equals_a_fresh_one(shared, path: Path):
    raw = path.read_bytes()
    first = validate_path(path)
    another_process()  # the hit must come from Redis, as it would for another worker
    second = validate_path(path)
    assert stats(VALIDATION)["hits"] == 1
    expected = fresh(raw, str(path))
    for report in (first, second):
        assert report.to_dict() == expected.to_dict()
        assert report.workflow == expected.workflow


def test_second_validation_is_a_hit_and_a_change_is_a_miss(shared):
    raw = (EXAMPLES / "implant-aftercare.json").read_bytes()
    validate_workflow(raw)
    validate_workflow(raw)
    validate_workflow(raw, source="elsewhere.json")
    assert (stats(VALIDATION)["hits"], stats(VALIDATION)["misses"]) == (2, 1)
    changed = raw.replace(b'"amount": 3', b'"amount": 4')
    assert changed != raw
    report = validate_workflow(changed, source="changed.json")
    assert (stats(VALIDATION)["hits"], stats(VALIDATION)["misses"]) == (2, 2)
    assert report.source == "changed.json" and report.workflow is not None
    assert report.workflow.model_dump() != validate_workflow(raw).workflow.model_dump()


def test_parsed_dicts_are_not_cached(shared):
    document = json.loads((EXAMPLES / "implant-aftercare.json").read_bytes())
    validate_workflow(document)
    validate_workflow(document)
    assert (stats(VALIDATION)["hits"], stats(VALIDATION)["misses"]) == (0, 0)


def test_the_key_changes_with_the_validator(monkeypatch):
    raw = b'{"id": "x"}'
    key = report_cache.input_key(raw, 1000)
    assert key == report_cache.input_key(raw.decode(), 1000)
    assert report_cache.input_key(raw, len(raw) - 1) is None  # refused for its size: not worth a hash
    report_cache.validator_fingerprint.cache_clear()
    monkeypatch.setattr(report_cache, "SCHEMA_VERSION", "9.9")
    try:
        assert report_cache.input_key(raw, 1000) != key
    finally:
        report_cache.validator_fingerprint.cache_clear()


# --- a corrupted or foreign entry is detected and ignored ----------------------------------------


def _entry_for(raw: bytes) -> tuple[str, str]:
    key = report_cache.input_key(raw, 10**7)
    assert key is not None
    report = fresh(raw, "x")
    digest = None
    if report.workflow is not None:
        from careflow.compiler.hashing import content_hash

        digest = content_hash(report.workflow)
    return key, report_cache.encode_entry(key, report.workflow_id, report.diagnostics, digest)


def _poison(redis_client, prefix: str, key: str, value: str) -> None:
    redis_client.set(f"{prefix}:cache:{{{VALIDATION}}}:v:{key}", b"s" + value.encode("utf-8"))


def _reseal(text: str, change) -> str:
    body = json.loads(text.partition("\n")[2])
    change(body)
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest() + "\n" + encoded


GOOD = (EXAMPLES / "implant-aftercare.json").read_bytes()
BAD = (EXAMPLES.parent / "broken" / "action-template-unsafe.json").read_bytes()


def _flip_severity(body):
    body["diagnostics"][0]["severity"] = "info"


def _drop_diagnostics(body):
    body["diagnostics"] = []


def _unknown_code(body):
    body["diagnostics"][0]["code"] = "ALL_GOOD"


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: text.replace('"error"', '"info"', 1), id="bit-flip-without-checksum"),
        pytest.param(lambda text: "not an entry", id="garbage"),
        pytest.param(lambda text: _reseal(text, _flip_severity), id="severity-not-the-codes"),
        pytest.param(lambda text: _reseal(text, _unknown_code), id="unknown-code"),
        pytest.param(lambda text: _reseal(text, _drop_diagnostics), id="ok-without-content-hash"),
        pytest.param(lambda text: _reseal(text, lambda b: b.update(format=99)), id="other-format"),
    ],
)
def test_a_corrupted_entry_is_ignored_and_dropped(shared, redis_client, corrupt):
    key, text = _entry_for(BAD)
    _poison(redis_client, shared, key, corrupt(text))
    report = validate_workflow(BAD)
    assert not report.ok and "ACTION_TEMPLATE_UNSAFE" in report.codes
    assert report.to_dict() == fresh(BAD, "<input>").to_dict()
    # The unsound entry went, and the sound one that replaced it is served next time.
    assert report_cache.lookup(key) is not None


def test_another_inputs_report_filed_under_this_key_is_ignored(shared, redis_client):
    bad_key = report_cache.input_key(BAD, 10**7)
    _, good_entry = _entry_for(GOOD)  # a sound entry, but for the good workflow's key
    _poison(redis_client, shared, bad_key, good_entry)
    report = validate_workflow(BAD)
    assert not report.ok and "ACTION_TEMPLATE_UNSAFE" in report.codes


def test_an_ok_entry_is_not_trusted_for_the_workflow_itself(shared, redis_client):
    # A sound "ok" entry for this key, but naming another workflow's content hash: the workflow
    # is rebuilt from the raw input, its hash does not match, and validation runs again.
    key, text = _entry_for(GOOD)
    _poison(redis_client, shared, key, _reseal(text, lambda b: b.update(content_hash="0" * 64)))
    report = validate_workflow(GOOD)
    assert report.ok and report.workflow == fresh(GOOD, "<input>").workflow
    assert report_cache.decode_entry(key, text) is not None


def test_a_refused_report_is_not_cached_when_validation_could_not_answer(shared):
    raw = b'{"id": "crash", "name": "x", "clinic_id": "c", "nodes": []}'
    with mock.patch.object(validation, "_validate", side_effect=RuntimeError("boom")):
        assert validate_workflow(raw).codes == ["WF_INTERNAL_ERROR"]
    assert validate_workflow(raw).codes != ["WF_INTERNAL_ERROR"]
