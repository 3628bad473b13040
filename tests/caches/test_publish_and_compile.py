"""Compiled snapshots are reused by content hash; publishing a change is never served stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from careflow.exceptions import SnapshotError
from careflow.publishing import publish_paths
from careflow.resilience.cache import VALIDATION, VALIDATION_TTL, get_cache, workflow_key
from careflow.snapshots import compile_cache_info, load_one
from careflow.workflow.validation import validate_path
from support import EXAMPLES


def _edit(path: Path, amount: int) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    next(n for n in doc["nodes"] if n["type"] == "delay")["data"]["amount"] = amount
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def test_second_compile_is_a_hit_and_a_new_version_compiles_afresh(shared, engine, tmp_path, workflows_dir):
    source = tmp_path / "implant-aftercare.json"
    source.write_bytes((EXAMPLES / "implant-aftercare.json").read_bytes())
    [first] = publish_paths([source], engine=engine, workflows_dir=workflows_dir)
    assert first.action == "published"

    before = compile_cache_info()
    _, compiled = load_one(workflows_dir, "implant-aftercare")
    _, again = load_one(workflows_dir, "implant-aftercare")
    after = compile_cache_info()
    assert again is compiled
    assert after["hits"] - before["hits"] >= 1

    # Validation of the unchanged file is a hit; the edited file is a new key, validated afresh.
    assert validate_path(source).ok
    hits = get_cache(VALIDATION, 600).stats()["hits"]
    _edit(source, 9)
    report = validate_path(source)
    assert get_cache(VALIDATION, 600).stats()["hits"] == hits
    [second] = publish_paths([source], engine=engine, workflows_dir=workflows_dir)
    assert (second.action, second.version) == ("published", 2)
    assert second.content_hash != first.content_hash and report.ok

    _, newer = load_one(workflows_dir, "implant-aftercare")
    assert newer is not compiled and (newer.version, newer.content_hash) == (2, second.content_hash)
    delay = next(n for n in newer.nodes.values() if n.type == "delay")
    assert delay.config.amount == 9


def test_publishing_drops_what_the_shared_caches_hold_about_the_workflow(
    shared, engine, tmp_path, workflows_dir
):
    source = tmp_path / "implant-aftercare.json"
    source.write_bytes((EXAMPLES / "implant-aftercare.json").read_bytes())
    validation_cache = get_cache(VALIDATION, VALIDATION_TTL)
    old = workflow_key("implant-aftercare", "0" * 64)
    validation_cache.set(old, "an entry about an older version")
    [result] = publish_paths([source], engine=engine, workflows_dir=workflows_dir)
    assert result.action == "published"
    assert validation_cache.get(old) is None


def test_an_edited_snapshot_is_refused_not_served_from_the_compile_cache(engine, tmp_path, workflows_dir):
    source = tmp_path / "no-show-recovery.json"
    source.write_bytes((EXAMPLES / "no-show-recovery.json").read_bytes())
    publish_paths([source], engine=engine, workflows_dir=workflows_dir)
    snap, _ = load_one(workflows_dir, "no-show-recovery")
    raw = json.loads(snap.path.read_text(encoding="utf-8"))
    raw["workflow"]["name"] = "edited by hand"
    snap.path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(SnapshotError, match="content hash"):
        load_one(workflows_dir, "no-show-recovery")


def test_a_snapshot_holding_a_nul_is_reported_and_the_others_still_load(engine, tmp_path, workflows_dir):
    """A snapshot published before validation refused NULs (its hash agrees with its content) would
    build a DAG Airflow cannot write on Postgres, and with it every DAG of the file: it is a problem."""
    from careflow.snapshots import document_hash, load_all

    for name in ("no-show-recovery.json", "implant-aftercare.json"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    publish_paths(
        [tmp_path / "no-show-recovery.json", tmp_path / "implant-aftercare.json"],
        engine=engine,
        workflows_dir=workflows_dir,
    )
    snap, _ = load_one(workflows_dir, "no-show-recovery")
    raw = json.loads(snap.path.read_text(encoding="utf-8"))
    raw["workflow"]["nodes"][0]["data"]["label"] = "미내원\x00"
    raw["content_hash"] = document_hash(raw["workflow"])
    snap.path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    good, problems = load_all(workflows_dir)
    assert [s.workflow_id for s, _ in good] == ["implant-aftercare"]
    [problem] = problems
    assert problem.path.name == snap.path.name
    assert "'nodes[0].data.label'" in problem.message and "NUL character" in problem.message
