"""``careflow workflows list``: what is published, what the factory sees, and what is broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from careflow.cli import main
from careflow.publishing import publish_paths
from support import EXAMPLES

UNREACHABLE = "postgresql+psycopg2://careflow@127.0.0.1:1/careflow"


@pytest.fixture(autouse=True)
def _embedded_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREFLOW_REDIS_URL", "")


@pytest.fixture
def published(engine: Engine, workflows_dir: Path) -> Path:
    """Every example published, and a corrupt snapshot file next to them."""
    results = publish_paths(sorted(EXAMPLES.glob("*.json")), engine=engine, workflows_dir=workflows_dir)
    assert {r.action for r in results} == {"published"}
    (workflows_dir / "corrupt.json").write_bytes(b"\x00\x01 not json")
    return workflows_dir


def _list_json(capsys: pytest.CaptureFixture[str], workflows_dir: Path) -> dict[str, dict]:
    assert main(["workflows", "list", "--json", "--workflows-dir", str(workflows_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return {item["workflow_id"]: item for item in json.loads(out)}


def test_list_shows_versions_hashes_validation_and_broken_snapshots(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = _list_json(capsys, published)
    ids = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert sorted(items) == sorted([*ids, "corrupt"])
    for wid in ids:
        snap = json.loads((published / f"{wid}.json").read_text(encoding="utf-8"))
        item = items[wid]
        assert item["version"] == 1
        assert item["content_hash"] == snap["content_hash"]
        assert item["snapshot"] == "ok"
        assert item["validation"].startswith("ok")
        assert item["problem"] is None
    assert items["scaling-whitening-offer"]["status"] == "draft"
    assert items["implant-aftercare"]["status"] == "active"
    assert items["corrupt"]["snapshot"] == "broken"
    assert "corrupt.json" in items["corrupt"]["problem"]

    assert main(["workflows", "list", "--workflows-dir", str(published)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["workflow", "ver", "status", "hash", "validation", "snapshot"]
    implant = next(line for line in table if line.startswith("implant-aftercare "))
    assert implant.split()[:4] == [
        "implant-aftercare",
        "1",
        "active",
        items["implant-aftercare"]["content_hash"][:12],
    ]
    corrupt = next(line for line in table if line.startswith("corrupt "))
    assert "broken" in corrupt and "not a readable JSON snapshot" in corrupt


def test_list_marks_a_stale_or_missing_snapshot(
    published: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))
    changed["name"] = "changed"
    source = published.parent / "implant-v2.json"
    source.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")
    other_dir = published.parent / "elsewhere"
    publish_paths([source], engine=engine, workflows_dir=other_dir)  # v2 stored, snapshot written elsewhere
    (published / "day-before-reminder.json").unlink()
    items = _list_json(capsys, published)
    assert items["implant-aftercare"]["version"] == 2
    assert items["implant-aftercare"]["snapshot"] == "stale"
    assert items["day-before-reminder"]["snapshot"] == "missing"


def test_list_works_without_the_database(
    published: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from careflow.store.db import dispose_engines

    dispose_engines()
    monkeypatch.setenv("CAREFLOW_DB_URL", UNREACHABLE)
    assert main(["workflows", "list", "--json", "--workflows-dir", str(published)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(
        "careflow: only the snapshots on disk are listed: cannot connect to careflow's database "
        f"{UNREACHABLE} (from CAREFLOW_DB_URL): connection to server at "
    )
    items = {item["workflow_id"]: item for item in json.loads(out)}
    assert sorted(items) == sorted([*(p.stem for p in EXAMPLES.glob("*.json")), "corrupt"])
    for wid in (p.stem for p in EXAMPLES.glob("*.json")):
        assert items[wid]["version"] == 1
        assert items[wid]["snapshot"] == "ok"
        assert len(items[wid]["content_hash"]) == 64
    assert items["corrupt"]["snapshot"] == "broken"

    assert main(["workflows", "list", "--workflows-dir", str(published)]) == 2
    out, err = capsys.readouterr()
    assert "implant-aftercare" in out and "broken" in out and "cannot read" not in out
    assert len(out.splitlines()) == 2 + len(list(EXAMPLES.glob("*.json"))) + 1
    # one line: the database's multi-line error does not run over several
    assert err.startswith(
        "careflow: only the snapshots on disk are listed: cannot connect to careflow's database"
    )
    assert len(err.splitlines()) == 1


def test_list_before_db_upgrade_says_to_run_it_and_exits_2(
    empty_db_url: str, workflows_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    elsewhere = get_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    upgrade(elsewhere)
    publish_paths([EXAMPLES / "implant-aftercare.json"], engine=elsewhere, workflows_dir=workflows_dir)
    missing = (
        f"careflow's tables do not exist in this database ({empty_db_url}: careflow_workflow_versions "
        "is missing): run `careflow db upgrade` first"
    )
    assert main(["workflows", "list", "--workflows-dir", str(workflows_dir)]) == 2
    out, err = capsys.readouterr()
    assert err == f"careflow: only the snapshots on disk are listed: {missing}\n"
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["implant-aftercare", "1"]]

    assert main(["workflows", "list", "--json", "--workflows-dir", str(workflows_dir)]) == 2
    out, err = capsys.readouterr()
    assert err == f"careflow: only the snapshots on disk are listed: {missing}\n"
    assert [item["workflow_id"] for item in json.loads(out)] == ["implant-aftercare"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_workflows_dir_this_user_may_not_list_is_said_not_shown_as_missing_snapshots(
    engine: Engine,
) -> None:
    """An operator whose user may not list the workflows directory (an umask of 077 where another
    user published): the database's versions are listed with their snapshot unknown, not missing,
    and stderr names the directory and the user; exit 2. No row stands for the directory."""
    import contextlib
    import io
    import os

    from careflow.store.db import dispose_engines
    from support import as_nobody, open_directory

    def list_workflows() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["workflows", "list", "--json", "--workflows-dir", str(workflows_dir)])
        return code, out.getvalue(), err.getvalue()

    with open_directory() as top:
        workflows_dir = top / "workflows"
        publish_paths([EXAMPLES / "implant-aftercare.json"], engine=engine, workflows_dir=workflows_dir)
        os.chmod(workflows_dir, 0o700)
        dispose_engines()  # the child opens connections of its own
        code, out, err = as_nobody(list_workflows)
    assert code == 2
    assert [(item["workflow_id"], item["version"], item["snapshot"]) for item in json.loads(out)] == [
        ("implant-aftercare", 1, "unknown")
    ]
    assert err == (
        f"careflow: no snapshot could be read: {workflows_dir} ([careflow] workflows_dir): this user "
        "(nobody, uid 65534) may not list it, so no workflow is loaded: let the user the DAG processor "
        "and the workers run as read and enter it and the directories above it\n"
    )


def test_a_workflows_dir_that_holds_no_published_snapshot_is_said_on_stderr(
    published: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the directory: every workflow "missing", and why, where each was said alone."""
    typo = tmp_path / "workflow"
    assert main(["workflows", "list", "--json", "--workflows-dir", str(typo)]) == 0
    out, err = capsys.readouterr()
    assert {item["snapshot"] for item in json.loads(out)} == {"missing"}
    examples = len(list(EXAMPLES.glob("*.json")))
    assert err == (
        f"careflow: {typo} does not exist, so it holds no snapshot of the {examples} workflow(s) "
        f"careflow_db has published ({examples - 1} active), and the DAG factory builds a DAG from a "
        "snapshot there alone: is --workflows-dir the directory publish wrote them to?\n"
    )
    assert main(["workflows", "list", "--workflows-dir", str(published)]) == 0
    assert capsys.readouterr().err == ""  # the directory publish wrote to: nothing to say
