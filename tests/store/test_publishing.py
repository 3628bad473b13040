"""``careflow workflows publish``: validated, versioned by content, snapshot written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from careflow.cli import main
from careflow.publishing import publish_paths
from careflow.store import tables
from support import EXAMPLES, REPO

IMPLANT = EXAMPLES / "implant-aftercare.json"
BROKEN = REPO / "include" / "broken" / "graph-cycle.json"


@pytest.fixture(autouse=True)
def _embedded_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")


def _versions(engine: Engine, workflow_id: str) -> list[tuple[int, str]]:
    v = tables.workflow_versions
    with engine.connect() as conn:
        rows = conn.execute(
            select(v.c.version, v.c.content_hash).where(v.c.workflow_id == workflow_id).order_by(v.c.version)
        )
        return [(r.version, r.content_hash) for r in rows]


def _publish(workflows_dir: Path, *files: Path) -> tuple[int, list[dict]]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["workflows", "publish", "--json", "--workflows-dir", str(workflows_dir), *map(str, files)]
        )
    return code, json.loads(out.getvalue())


def _leftovers(workflows_dir: Path) -> list[str]:
    return sorted(
        p.name for p in workflows_dir.iterdir() if not p.name.endswith(".json") or p.name.startswith(".")
    )


def test_publish_stores_version_1_and_writes_the_snapshot(engine: Engine, workflows_dir: Path) -> None:
    code, results = _publish(workflows_dir, IMPLANT)
    assert code == 0
    (result,) = results
    assert result["action"] == "published" and result["version"] == 1
    assert _versions(engine, "implant-aftercare") == [(1, result["content_hash"])]

    path = workflows_dir / "implant-aftercare.json"
    assert result["snapshot"] == str(path)
    snap = json.loads(path.read_text(encoding="utf-8"))
    assert snap["snapshot_format"] == 1
    assert snap["workflow_id"] == "implant-aftercare"
    assert snap["version"] == 1
    assert snap["content_hash"] == result["content_hash"] and len(snap["content_hash"]) == 64
    assert snap["workflow"]["nodes"][0]["id"] == "t1"
    assert _leftovers(workflows_dir) == []
    # the DAG processor may run as another user than the publisher: the snapshot must be readable
    assert os.stat(path).st_mode & 0o044 == 0o044


def test_same_content_again_is_a_no_op(engine: Engine, workflows_dir: Path) -> None:
    _publish(workflows_dir, IMPLANT)
    path = workflows_dir / "implant-aftercare.json"
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert code == 0
    assert result["action"] == "unchanged" and result["version"] == 1
    assert len(_versions(engine, "implant-aftercare")) == 1
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime

    # UI-only fields (positions, viewport) do not make a new version either
    moved = json.loads(IMPLANT.read_text(encoding="utf-8"))
    moved["viewport"] = {"x": 10, "y": 20, "zoom": 1.5}
    for i, node in enumerate(moved["nodes"]):
        node["position"] = {"x": i * 100, "y": 0}
        node["selected"] = i == 0
    moved_file = workflows_dir.parent / "moved.json"
    moved_file.write_text(json.dumps(moved, ensure_ascii=False), encoding="utf-8")
    _, (again,) = _publish(workflows_dir, moved_file)
    assert again["action"] == "unchanged"


def test_changed_content_is_version_2_and_keeps_the_first_start_date(
    engine: Engine, workflows_dir: Path
) -> None:
    _publish(workflows_dir, IMPLANT)
    first = json.loads((workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8"))
    changed = json.loads(IMPLANT.read_text(encoding="utf-8"))
    changed["nodes"][1]["data"]["amount"] = 5
    changed_file = workflows_dir.parent / "implant-v2.json"
    changed_file.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")

    code, (result,) = _publish(workflows_dir, changed_file)
    assert code == 0 and result["action"] == "published" and result["version"] == 2
    versions = _versions(engine, "implant-aftercare")
    assert [v for v, _ in versions] == [1, 2]
    assert versions[0][1] != versions[1][1] == result["content_hash"]
    snap = json.loads((workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8"))
    assert snap["version"] == 2 and snap["content_hash"] == result["content_hash"]
    assert snap["workflow"]["nodes"][1]["data"]["amount"] == 5
    assert snap["start_date"] == first["start_date"]
    assert _leftovers(workflows_dir) == []


def test_nodes_and_edges_in_another_order_are_the_same_content(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    _, (first,) = _publish(workflows_dir, IMPLANT)
    snapshot = (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8")
    reordered = json.loads(IMPLANT.read_text(encoding="utf-8"))
    reordered["nodes"].reverse()
    reordered["edges"].reverse()
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(reordered, ensure_ascii=False), encoding="utf-8")

    code, (again,) = _publish(workflows_dir, path)
    assert code == 0 and again["action"] == "unchanged" and again["version"] == 1
    assert again["content_hash"] == first["content_hash"]
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]
    assert (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8") == snapshot

    reordered["nodes"][0]["data"]["label"] = "바뀐 이름"  # a real change is still a new version
    path.write_text(json.dumps(reordered, ensure_ascii=False), encoding="utf-8")
    _, (changed,) = _publish(workflows_dir, path)
    assert changed["action"] == "published" and changed["version"] == 2


def test_refused_file_exits_1_and_writes_nothing(engine: Engine, workflows_dir: Path) -> None:
    code, (result,) = _publish(workflows_dir, BROKEN)
    assert code == 1
    assert result["action"] == "refused" and result["version"] is None
    assert any(d["code"] == "GRAPH_CYCLE" for d in result["diagnostics"])
    assert list(workflows_dir.iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(select(tables.workflow_versions)).first() is None

    # a refused file never stops the others, but the command still says something was refused
    code, results = _publish(workflows_dir, BROKEN, IMPLANT)
    assert code == 1
    assert [r["action"] for r in results] == ["refused", "published"]
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]


def test_a_workflow_id_published_for_another_clinic_is_refused(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    _publish(workflows_dir, IMPLANT)
    snapshot = (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8")
    other = json.loads(IMPLANT.read_text(encoding="utf-8"))
    other["clinic_id"] = "busan-02"
    other["name"] = "부산 임플란트"
    path = tmp_path / "busan.json"
    path.write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")

    code, (result,) = _publish(workflows_dir, path)
    assert code == 1 and result["action"] == "refused" and result["version"] is None
    (refusal,) = [d for d in result["diagnostics"] if d["severity"] == "error"]
    assert refusal["code"] == "WF_ID_OF_ANOTHER_CLINIC" and refusal["field"] == "clinic_id"
    assert "published for clinic gangnam-01" in refusal["message"] and "busan-02" in refusal["message"]
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]
    assert (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8") == snapshot


def test_refused_output_names_the_error(
    engine: Engine, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["workflows", "publish", "--workflows-dir", str(workflows_dir), str(BROKEN)])
    out = capsys.readouterr().out
    assert code == 1
    assert "refused" in out and "GRAPH_CYCLE" in out


def test_snapshot_write_is_atomic(
    engine: Engine, workflows_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the new snapshot is written leaves the old file whole and no temp file."""
    _publish(workflows_dir, IMPLANT)
    path = workflows_dir / "implant-aftercare.json"
    before = path.read_bytes()
    changed = json.loads(IMPLANT.read_text(encoding="utf-8"))
    changed["name"] = "임플란트 수술 후 관리 v2"
    changed_file = workflows_dir.parent / "implant-v2.json"
    changed_file.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")

    def crash(src: str, dst: str) -> None:
        assert Path(src).parent == workflows_dir and Path(src).read_bytes()  # fully written temp file
        raise OSError("disk went away")

    monkeypatch.setattr("careflow.snapshots.os.replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        publish_paths([changed_file], engine=engine, workflows_dir=workflows_dir)
    assert path.read_bytes() == before
    assert _leftovers(workflows_dir) == []

    # no version without its snapshot: the failed publish stored nothing, the next one is version 2
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]
    monkeypatch.undo()
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")
    (result,) = publish_paths([changed_file], engine=engine, workflows_dir=workflows_dir)
    assert result.action == "published" and result.version == 2
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 2


def test_every_example_publishes(engine: Engine, workflows_dir: Path) -> None:
    code, results = _publish(workflows_dir, *sorted(EXAMPLES.glob("*.json")))
    assert code == 0
    assert {r["action"] for r in results} == {"published"}
    assert sorted(p.stem for p in workflows_dir.glob("*.json")) == sorted(
        p.stem for p in EXAMPLES.glob("*.json")
    )


def test_two_publishes_at_once_take_turns(engine: Engine, workflows_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    from careflow import publishing
    from careflow.workflow.validation import validate_workflow

    source = json.loads(IMPLANT.read_text(encoding="utf-8"))

    def named(name: str):  # type: ignore[no-untyped-def]
        return validate_workflow({**source, "name": name})

    publishing.publish_report(named("v1"), engine=engine, workflows_dir=workflows_dir)
    write = publishing.write_snapshot

    def slow_for_a(where, snap):  # type: ignore[no-untyped-def]
        if snap.document["name"] == "A":  # A writes its snapshot late: B must not overtake it
            time.sleep(0.5)
        return write(where, snap)

    monkeypatch.setattr(publishing, "write_snapshot", slow_for_a)
    results: dict[str, tuple[str, int | None]] = {}

    def publish(name: str) -> None:
        result = publishing.publish_report(named(name), engine=engine, workflows_dir=workflows_dir)
        results[name] = (result.action, result.version)

    first = threading.Thread(target=publish, args=("A",))
    first.start()
    time.sleep(0.1)  # A holds the workflow's publish when B starts
    second = threading.Thread(target=publish, args=("B",))
    second.start()
    first.join(30)
    second.join(30)
    assert results == {"A": ("published", 2), "B": ("published", 3)}
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1, 2, 3]
    snapshot = json.loads((workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8"))
    assert (snapshot["version"], snapshot["workflow"]["name"]) == (3, "B")
