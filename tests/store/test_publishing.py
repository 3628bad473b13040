"""``careflow workflows publish``: validated, versioned by content, snapshot written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from careflow.cli import main
from careflow.exceptions import ConfigurationError
from careflow.publishing import publish_paths
from careflow.store import tables
from support import EXAMPLES, REPO, fill, remount_read_only, upgraded

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


def _told(workflows_dir: Path, path: Path, code: str) -> list[tuple[str | None, str | None, str]]:
    """Publish ``path`` (which must publish): the node, field and message of each ``code`` it told."""
    exit_code, (result,) = _publish(workflows_dir, path)
    assert exit_code == 0
    return [(d["node_id"], d["field"], d["message"]) for d in result["diagnostics"] if d["code"] == code]


def _not_published(workflows_dir: Path, *files: Path) -> str:
    """What ``careflow workflows publish`` says on stderr where a file could not be published (exit 2)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["workflows", "publish", "--workflows-dir", str(workflows_dir), *map(str, files)])
    assert code == 2, err.getvalue()
    return err.getvalue()


def _leftovers(workflows_dir: Path) -> list[str]:
    return sorted(
        p.name for p in workflows_dir.iterdir() if not p.name.endswith(".json") or p.name.startswith(".")
    )


def _implant_v2(folder: Path) -> Path:
    """implant-aftercare with another name (another content), written in ``folder``."""
    changed = json.loads(IMPLANT.read_text(encoding="utf-8"))
    changed["name"] = "임플란트 수술 후 관리 v2"
    path = folder / "implant-v2.json"
    path.write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")
    return path


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


def _refused_after_implant(workflows_dir: Path, tmp_path: Path, **changes: str) -> dict[str, Any]:
    """implant-aftercare's document with ``changes``, published: refused, its one error."""
    document = {**json.loads(IMPLANT.read_text(encoding="utf-8")), **changes}
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    code, (result,) = _publish(workflows_dir, path)
    assert code == 1 and result["action"] == "refused" and result["version"] is None
    (refusal,) = [d for d in result["diagnostics"] if d["severity"] == "error"]
    return refusal


def test_a_workflow_id_that_differs_from_a_published_one_in_case_alone_is_refused(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    """On a filesystem that does not tell case apart (Docker Desktop's bind mounts) the two
    snapshots would be one file, and one workflow would run as the other."""
    _publish(workflows_dir, IMPLANT)
    refusal = _refused_after_implant(workflows_dir, tmp_path, id="Implant-Aftercare")
    assert (refusal["code"], refusal["field"]) == ("WF_ID_CASE_CLASH", "id")
    assert refusal["message"].startswith(
        "Workflow implant-aftercare is published, and Implant-Aftercare differs from it in upper and lower case alone"
    )
    assert _versions(engine, "Implant-Aftercare") == []
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]
    code, (result,) = _publish(workflows_dir, IMPLANT)  # the published id itself: as ever
    assert (code, result["action"]) == (0, "unchanged")


def test_a_workflow_id_published_for_another_clinic_is_refused(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    _publish(workflows_dir, IMPLANT)
    snapshot = (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8")
    refusal = _refused_after_implant(workflows_dir, tmp_path, clinic_id="busan-02", name="부산 임플란트")
    assert refusal["code"] == "WF_ID_OF_ANOTHER_CLINIC" and refusal["field"] == "clinic_id"
    assert "published for clinic gangnam-01" in refusal["message"] and "busan-02" in refusal["message"]
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]
    assert (workflows_dir / "implant-aftercare.json").read_text(encoding="utf-8") == snapshot


@pytest.mark.parametrize(
    ("db_url", "query"),
    [("postgres EUC_KR", ""), ("postgres SQL_ASCII", "?client_encoding=EUC_KR")],
    indirect=["db_url"],
)
def test_a_name_the_databases_encoding_cannot_store_is_refused_naming_the_character(
    db_url: str, query: str, workflows_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EUC_KR is the database's own, or the one careflow_db's URL names for a SQL_ASCII database.
    from careflow.store.db import dispose_engines, get_engine

    monkeypatch.setenv("CAREFLOW_DB_URL", db_url + query)
    dispose_engines()
    engine = get_engine()
    document = json.loads(IMPLANT.read_text(encoding="utf-8"))
    path = tmp_path / "implant.json"
    document["name"] = "임플란트 관리 \U0001f9b7"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")

    code, (result,) = _publish(workflows_dir, path)
    assert code == 1 and result["action"] == "refused"
    (refusal,) = [d for d in result["diagnostics"] if d["severity"] == "error"]
    assert refusal["code"] == "WF_TEXT_UNSTORABLE" and refusal["field"] == "name"
    assert "'\U0001f9b7' (U+1F9B7)" in refusal["message"] and "in EUC_KR" in refusal["message"]
    assert _versions(engine, "implant-aftercare") == [] and list(workflows_dir.iterdir()) == []

    document["name"] = "임플란트 관리"  # Korean the encoding holds: stored, and read back as written
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    code, (result,) = _publish(workflows_dir, path)
    assert code == 0 and result["action"] == "published"
    with engine.connect() as conn:
        assert conn.execute(select(tables.workflow_versions.c.name)).scalar_one() == "임플란트 관리"


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
    changed_file = _implant_v2(workflows_dir.parent)

    def crash(src: str, dst: str) -> None:
        assert Path(src).parent == workflows_dir and Path(src).read_bytes()  # fully written temp file
        raise OSError("disk went away")

    monkeypatch.setattr("careflow.snapshots.os.replace", crash)
    with pytest.raises(
        ConfigurationError, match="implant-aftercare.json .*: disk went away; nothing was published"
    ):
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


@contextmanager
def _failing_at_commit(engine: Engine) -> Iterator[None]:
    """Every transaction that stores a version fails as it commits (after the snapshot is
    written), as on a full disk, until the block ends. Postgres raises its own disk-full error
    from a deferred constraint trigger; SQLite has a deferred foreign key the insert breaks."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION careflow_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION USING ERRCODE = 'disk_full', "
                    "MESSAGE = 'could not extend file: No space left on device'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER full_at_commit AFTER INSERT ON careflow_workflow_versions "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION careflow_test_disk_full()"
                )
            )
            undo = [
                "DROP TRIGGER full_at_commit ON careflow_workflow_versions",
                "DROP FUNCTION careflow_test_disk_full()",
            ]
        else:
            conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            conn.execute(
                text(
                    "CREATE TABLE orphan (parent_id INTEGER REFERENCES parent (id) "
                    "DEFERRABLE INITIALLY DEFERRED)"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER fail_at_commit AFTER INSERT ON careflow_workflow_versions "
                    "BEGIN INSERT INTO orphan VALUES (1); END"
                )
            )
            undo = ["DROP TRIGGER fail_at_commit", "DROP TABLE orphan", "DROP TABLE parent"]

    try:
        yield
    finally:
        with engine.begin() as conn:
            for statement in undo:
                conn.execute(text(statement))


def test_a_clinic_the_clinic_data_does_not_hold_is_told_at_publish_not_stored(
    engine: Engine, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The workflow's clinic_id spelt otherwise than in the clinic's data (or the data not loaded
    yet): its trigger would enroll nobody. The publish goes on and says so; the version keeps only
    what the document earned, and once the clinic is there nothing is said."""
    from sqlalchemy import text

    from careflow.publishing import read_workflows
    from careflow.store.db import database_name

    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO clinics (id, name, timezone) VALUES ('gangnam_01', '강남', 'Asia/Seoul')")
        )
    assert main(["workflows", "publish", "--workflows-dir", str(workflows_dir), str(IMPLANT)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{IMPLANT}: published implant-aftercare v1 ")
    assert out[1:] == [
        "  warning WF_CLINIC_UNKNOWN            workflow [clinic_id]: No clinic gangnam-01 in the clinics "
        f"table of {database_name(engine)} (it holds gangnam_01): the trigger enrolls the events of clinic "
        "gangnam-01; check the workflow's clinic_id against the clinic's data"
    ]
    (listed,) = read_workflows(engine=engine, workflows_dir=workflows_dir).workflows
    assert listed.validation == "ok"  # not stored with the version

    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO clinics (id, name, timezone) VALUES ('gangnam-01', '강남', 'Asia/Seoul')")
        )
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert (code, result["action"]) == (0, "unchanged")
    assert [d["code"] for d in result["diagnostics"] if d["code"] == "WF_CLINIC_UNKNOWN"] == []


@pytest.mark.parametrize(("named", "told"), [("KST", True), (" Asia/Seoul ", False), ("", False)])
def test_a_clinic_timezone_careflow_does_not_know_is_told_at_publish(
    named: str, told: bool, engine: Engine, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``KST`` in the clinic's data is no IANA name: the workflow's timezone stands in for it,
    and the publish says so (an empty one stands in as documented, said nothing of)."""
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO clinics (id, name, timezone) VALUES ('gangnam-01', '강남', :named)"),
            {"named": named},
        )
    assert main(["workflows", "publish", "--workflows-dir", str(workflows_dir), str(IMPLANT)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{IMPLANT}: published implant-aftercare v1 ")
    assert out[1:] == (
        [
            "  warning WF_CLINIC_TIMEZONE_UNKNOWN   workflow [clinic_id]: Clinic gangnam-01's timezone in the "
            "clinics table, 'KST', is not a timezone careflow knows: its patients without a timezone of "
            "their own are timed by the workflow's, Asia/Seoul (their ages, days and windows); write an "
            "IANA name such as 'Asia/Seoul' in the clinic's data"
        ]
        if told
        else []
    )


def test_a_draft_published_over_the_active_version_is_told_it_stops_the_workflow(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    """The builder exports a workflow being edited as a draft: published, it takes the active
    version's place and the workflow stops. Said; a pause (stopping on purpose) is not."""
    document = json.loads(IMPLANT.read_text(encoding="utf-8"))

    def published(status: str, name: str) -> list[str]:
        path = tmp_path / f"{status}.json"
        path.write_text(json.dumps({**document, "status": status, "name": name}), encoding="utf-8")
        code, (result,) = _publish(workflows_dir, path)
        assert (code, result["action"]) == (0, "published")
        return [d["message"] for d in result["diagnostics"] if d["code"] == "WF_DRAFT_STOPS_ACTIVE"]

    assert _publish(workflows_dir, IMPLANT)[0] == 0
    assert published("draft", "임플란트 (수정 중)") == [
        "Version 1 of implant-aftercare is active and version 2, this one, is a draft: only an active "
        "workflow becomes a DAG, so the workflow stops running now, and its executions in flight wait "
        "where they are until a version is published active. To change what runs, publish the edit "
        "with status active; to undo this, publish the active document again"
    ]
    assert published("draft", "임플란트 (또 수정 중)") == []  # a draft over a draft stops nothing
    assert published("active", "임플란트") == []
    assert published("paused", "임플란트 (휴가)") == []


def test_appointment_statuses_the_clinic_spells_its_own_way_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """``booked`` for ``scheduled``: nobody would have an upcoming appointment, and a condition on
    the status would take the other branch for every patient, silently."""
    from datetime import datetime, timezone

    from sqlalchemy import insert

    at = datetime(2026, 3, 2, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            insert(tables.appointments),
            [
                {"id": f"a{n}", "patient_id": "p1", "clinic_id": clinic, "type": "checkup", "status": status,
                 "scheduled_at": at, "created_at": at}
                for n, (clinic, status) in enumerate(
                    [("gangnam-01", "booked"), ("gangnam-01", "done"), ("gangnam-01", "scheduled"),
                     ("busan-02", "예약")]
                )
            ],
        )  # fmt: skip
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert code == 0
    assert [d["message"] for d in result["diagnostics"] if d["code"] == "APPOINTMENT_STATUS_UNKNOWN"] == [
        "The clinic's appointments of clinic gangnam-01 hold statuses careflow does not know: booked, "
        "done. careflow reads scheduled, completed, cancelled, no_show: an upcoming appointment "
        "(patient.has_upcoming_appointment) is a scheduled one, and a condition on appointment.status "
        "compares with these; map the clinic's statuses in the view careflow reads (docs/contracts.md §2)"
    ]

    with engine.begin() as conn:
        a = tables.appointments
        conn.execute(a.update().where(a.c.status == "booked").values(status="scheduled"))
        conn.execute(a.update().where(a.c.status == "done").values(status="completed"))
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert (code, result["action"]) == (0, "unchanged")
    assert [d for d in result["diagnostics"] if d["code"] == "APPOINTMENT_STATUS_UNKNOWN"] == []


def test_appointment_types_the_trigger_filter_spells_otherwise_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """The trigger enrolls ``implant_surgery`` appointments, and the clinic's system calls them
    ``임플란트``: nobody would be enrolled, silently. Said once the trigger's events are there, none
    of them of the filter's types; not once one is."""
    from datetime import datetime, timezone

    at = datetime(2026, 3, 2, tzinfo=timezone.utc)
    with engine.begin() as conn:
        for n, type_ in enumerate(("임플란트", "스케일링")):
            conn.execute(
                tables.appointments.insert().values(
                    id=f"a{n}",
                    patient_id="p1",
                    clinic_id="gangnam-01",
                    type=type_,
                    status="completed",
                    scheduled_at=at,
                    created_at=at,
                )
            )
            conn.execute(
                tables.appointment_events.insert().values(
                    id=f"e{n}", appointment_id=f"a{n}", patient_id="p1", clinic_id="gangnam-01",
                    type="appointment_completed", occurred_at=at,
                )
            )  # fmt: skip

    def told() -> list[tuple[str | None, str | None, str]]:
        return _told(workflows_dir, IMPLANT, "TRIGGER_TYPE_UNSEEN")

    assert told() == [
        (
            "t1",
            "data.filters.appointment_types",
            "None of the clinic's appointment_completed events of clinic gangnam-01 is of an appointment of "
            "type implant_surgery: their appointments are of types 스케일링, 임플란트. The trigger enrolls "
            "the appointments of the types it lists alone: spell them as the clinic's data does",
        )
    ]
    with engine.begin() as conn:
        a = tables.appointments
        conn.execute(a.update().where(a.c.type == "임플란트").values(type="implant_surgery"))
    assert told() == []


def test_an_age_filter_where_no_patient_has_a_birth_date_is_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """A view that leaves birth_date empty: an age-filtered trigger would enroll nobody. Said,
    not for a clinic with no patients yet, and not once one birth date can be read."""
    from datetime import date

    offer = EXAMPLES / "scaling-whitening-offer.json"  # its trigger: min_age 19

    def told() -> list[tuple[str | None, str | None, str]]:
        return _told(workflows_dir, offer, "TRIGGER_AGE_UNKNOWN")

    assert told() == []  # no patients yet
    with engine.begin() as conn:
        conn.execute(
            tables.patients.insert(),
            [
                {"id": f"p{n}", "clinic_id": "gangnam-01", "name": "환자", "birth_date": None}
                for n in range(3)
            ],
        )
    assert told() == [
        (
            "t1",
            "data.filters",
            "The trigger enrolls patients of an age, and none of clinic gangnam-01's patients (of the first "
            "1,000 read) has a birth date careflow can read: a patient without one is never enrolled, so "
            "nobody would be; give the view careflow reads the clinic's birth dates (docs/contracts.md §2), "
            "or drop the age filter",
        )
    ]
    with engine.begin() as conn:
        p = tables.patients
        conn.execute(p.update().where(p.c.id == "p1").values(birth_date=date(1990, 5, 1)))
    assert told() == []


def test_patients_without_an_address_the_actions_can_reach_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """A view that hands out landlines, numbers without their leading 0, or no e-mail: each message
    of the actions on that channel would be skipped. Said once a channel kind, naming the actions;
    not for a clinic with no patients yet, and not once one patient can be sent to."""
    welcome = EXAMPLES / "new-patient-welcome.json"  # welcome_kakao (kakao), welcome_email (email)

    def told() -> list[tuple[str | None, str | None, str]]:
        return _told(workflows_dir, welcome, "ACTION_RECIPIENT_UNSEEN")

    assert told() == []  # no patients yet
    p = tables.patients
    with engine.begin() as conn:
        conn.execute(
            p.insert(),
            [
                {
                    "id": "p0",
                    "clinic_id": "gangnam-01",
                    "name": "환자",
                    "phone": "02-555-0101",
                    "email": None,
                },
                {
                    "id": "p1",
                    "clinic_id": "gangnam-01",
                    "name": "환자",
                    "phone": "1012345678",
                    "email": "a@b",
                },
                {"id": "p2", "clinic_id": "gangnam-01", "name": "환자", "phone": " ", "email": None},
            ],
        )
    assert told() == [
        (
            "welcome_kakao",
            "data.channel",
            "None of clinic gangnam-01's patients (of the first 1,000 read) has a mobile number careflow "
            "can send to (+821012345678, 010-1234-5678): 2 have one careflow cannot read, 1 none. The "
            "messages of action welcome_kakao (kakao) would each be skipped (invalid_phone, no_phone): "
            "give the view careflow reads the patients' mobile numbers (docs/contracts.md §2)",
        ),
        (
            "welcome_email",
            "data.channel",
            "None of clinic gangnam-01's patients (of the first 1,000 read) has an e-mail address "
            "careflow can send to: 1 has one careflow cannot read, 2 none. The messages of action "
            "welcome_email (email) would each be skipped (invalid_email, no_email): give the view "
            "careflow reads the patients' e-mail addresses (docs/contracts.md §2)",
        ),
    ]
    with engine.begin() as conn:
        conn.execute(p.update().where(p.c.id == "p1").values(phone="821012345678"))
    assert [node for node, _, _ in told()] == ["welcome_email"]
    with engine.begin() as conn:
        conn.execute(p.update().where(p.c.id == "p2").values(email="minji@example.com"))
    assert told() == []


def test_patients_none_of_whom_consents_to_an_actions_purpose_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """No patient consents to marketing (the clinic has not collected it yet), or the view hands out
    false for care messages for all: each message of those actions would be skipped."""
    from datetime import date

    offer = EXAMPLES / "scaling-whitening-offer.json"  # a1: kakao, marketing

    def told(path: Path) -> list[tuple[str | None, str | None, str]]:
        return _told(workflows_dir, path, "ACTION_CONSENT_UNSEEN")

    p = tables.patients
    with engine.begin() as conn:
        conn.execute(
            p.insert(),
            [
                {"id": f"p{n}", "clinic_id": "gangnam-01", "name": "환자", "phone": "010-1234-5678",
                 "birth_date": date(1990, 5, 1), "consent_messages": False, "consent_marketing": False}
                for n in range(3)
            ],
        )  # fmt: skip
    assert told(offer) == [
        (
            "a1",
            "data.purpose",
            "None of clinic gangnam-01's patients (of the first 1,000 read) consents to marketing messages "
            "(consent_marketing, false where the clinic's data leaves it empty). The messages of action a1 "
            "(kakao) would each be skipped (no_consent_marketing): check the patients' consent_marketing in "
            "the view careflow reads (docs/contracts.md §2)",
        )
    ]
    assert [(node, field) for node, field, _ in told(IMPLANT)] == [("a1", "data.purpose")]  # a care action
    with engine.begin() as conn:
        conn.execute(p.update().where(p.c.id == "p2").values(consent_messages=True, consent_marketing=True))
    assert told(offer) == [] and told(IMPLANT) == []


def test_appointment_times_read_hours_off_are_told_at_publish(engine: Engine, workflows_dir: Path) -> None:
    """Seoul wall times kept without a zone are read as UTC: 10:00 becomes 19:00 in Seoul, and every
    reminder and time in a message is nine hours off. Said from the first 1,000 appointments read;
    not once the times are as the contract has them."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    a = tables.appointments

    def appointments(tz: timezone | ZoneInfo) -> None:
        """10:00 to 17:00 on the clock of ``tz``, three days."""
        with engine.begin() as conn:
            conn.execute(a.delete())
            conn.execute(
                a.insert(),
                [
                    {
                        "id": f"a{n}", "patient_id": "p1", "clinic_id": "gangnam-01", "type": "checkup",
                        "status": "scheduled",
                        "scheduled_at": datetime(2025, 3, 3, 10, tzinfo=tz) + timedelta(days=n // 8, hours=n % 8),
                        "created_at": datetime(2025, 3, 1, tzinfo=timezone.utc),
                    }
                    for n in range(24)
                ],
            )  # fmt: skip

    appointments(timezone.utc)  # Seoul's wall times written without a zone: read as UTC
    (told,) = _told(workflows_dir, IMPLANT, "APPOINTMENT_TIMES_SHIFTED")
    assert told[:2] == (None, "clinic_id")
    assert told[2] == (
        "Clinic gangnam-01's appointments fall outside 08:00-20:00 Asia/Seoul as careflow reads their "
        "times, 88% of the 24 with a time (of the first 1,000 read); 9 hours earlier, 100% would be within "
        "it. They look like Asia/Seoul wall times kept without a zone, which careflow reads as UTC (a "
        "column of type timestamp without time zone, or a view's AT TIME ZONE 'Asia/Seoul' that made "
        "one): in the view careflow reads, write scheduled_at AT TIME ZONE 'Asia/Seoul' for such a "
        "column. Each wait until an appointment, and each time a message gives, would be 9 hours off "
        "(docs/contracts.md §2)"
    )
    appointments(ZoneInfo("Asia/Seoul"))
    assert _told(workflows_dir, IMPLANT, "APPOINTMENT_TIMES_SHIFTED") == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_view_that_hands_out_seoul_wall_times_without_a_zone_is_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """The mistake the contract warns of, made in a view: ``AT TIME ZONE`` on a column with a zone
    gives the Seoul wall time without one, which careflow reads as UTC."""
    from datetime import datetime, timedelta, timezone

    with engine.begin() as conn:
        conn.execute(
            tables.appointments.insert(),
            [
                {
                    "id": f"a{n}", "patient_id": "p1", "clinic_id": "gangnam-01", "type": "checkup",
                    "status": "scheduled",  # 10:00 to 17:00 in Seoul
                    "scheduled_at": datetime(2025, 3, 3, 1, tzinfo=timezone.utc) + timedelta(days=n // 8, hours=n % 8),
                    "created_at": datetime(2025, 3, 1, tzinfo=timezone.utc),
                }
                for n in range(24)
            ],
        )  # fmt: skip
        columns = [
            c for (c,) in conn.exec_driver_sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'appointments' "
                "AND table_schema = current_schema() ORDER BY ordinal_position"
            )
        ]  # fmt: skip
        conn.exec_driver_sql("ALTER TABLE appointments RENAME TO appointments_stored")

    def view(scheduled_at: str) -> None:
        kept = ", ".join(scheduled_at if c == "scheduled_at" else c for c in columns)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP VIEW IF EXISTS appointments")
            conn.exec_driver_sql(f"CREATE VIEW appointments AS SELECT {kept} FROM appointments_stored")

    try:
        view("scheduled_at AT TIME ZONE 'Asia/Seoul' AS scheduled_at")
        (told,) = _told(workflows_dir, IMPLANT, "APPOINTMENT_TIMES_SHIFTED")
        assert "9 hours earlier, 100% would be within it. They look like Asia/Seoul wall times" in told[2]
        view("scheduled_at")
        assert _told(workflows_dir, IMPLANT, "APPOINTMENT_TIMES_SHIFTED") == []
    finally:  # the table back, as the next test's database expects it
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP VIEW IF EXISTS appointments")
            conn.exec_driver_sql("ALTER TABLE appointments_stored RENAME TO appointments")


def test_events_whose_appointment_and_patient_the_clinic_data_lacks_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """The clinic's views hand out ids another way than its events (``A-1`` for ``1``): the
    enrollment's join leaves every event out, and nobody would be enrolled. Said, naming how many
    lack which; not once one event names an appointment and a patient the data holds."""
    from datetime import datetime, timezone

    at = datetime(2026, 3, 2, 1, tzinfo=timezone.utc)
    with engine.begin() as conn:
        for n in range(3):
            conn.execute(
                tables.appointment_events.insert().values(
                    id=f"e{n}", appointment_id=str(n), patient_id=str(n), clinic_id="gangnam-01",
                    type="appointment_completed", occurred_at=at,
                )
            )  # fmt: skip
            conn.execute(
                tables.appointments.insert().values(
                    id=f"A-{n}", patient_id=str(n), clinic_id="gangnam-01", type="implant_surgery",
                    status="completed", scheduled_at=at, created_at=at,
                )
            )  # fmt: skip
        conn.execute(tables.patients.insert().values(id="1", clinic_id="gangnam-01", name="환자"))

    def told() -> list[tuple[str | None, str | None, str]]:
        return _told(workflows_dir, IMPLANT, "TRIGGER_EVENTS_UNMATCHED")

    assert told() == [
        (
            "t1",
            "data.event",
            "None of clinic gangnam-01's appointment_completed events (of the first 1,000 read, 3) names an "
            "appointment and a patient that the clinic's appointments and patients hold: 3 name no "
            "appointment they hold, 2 no patient. The trigger enrolls none of them: check that the views "
            "careflow reads hand out the same ids as its appointment_events (docs/contracts.md §2)",
        )
    ]
    with engine.begin() as conn:
        a = tables.appointments
        conn.execute(a.update().where(a.c.id == "A-1").values(id="1"))
    assert told() == []


def test_event_types_the_clinic_spells_its_own_way_are_told_at_publish(
    engine: Engine, workflows_dir: Path
) -> None:
    """The clinic's system writes ``completed`` where careflow reads ``appointment_completed``: the
    trigger would enroll nobody. Said at publish, with the types it found; not once the clinic's
    events hold the trigger's (the view maps them), nor for a type simply not seen yet."""
    from datetime import datetime, timezone

    def events(*types: str) -> None:
        with engine.begin() as conn:
            for type_ in types:
                conn.execute(
                    tables.appointment_events.insert().values(
                        id=f"e-{type_}", appointment_id="a1", patient_id="p1", clinic_id="gangnam-01",
                        type=type_, occurred_at=datetime(2026, 3, 2, tzinfo=timezone.utc),
                    )
                )  # fmt: skip

    def told(path: Path) -> list[dict]:
        code, (result,) = _publish(workflows_dir, path)
        assert code == 0
        return [d for d in result["diagnostics"] if d["code"] == "TRIGGER_EVENT_UNSEEN"]

    no_show = EXAMPLES / "no-show-recovery.json"  # its trigger: appointment_no_show
    events("appointment_cancelled", "appointment_completed")
    assert told(no_show) == []  # no no-shows yet, and every type is careflow's

    with engine.begin() as conn:
        conn.execute(tables.appointment_events.delete())
    events("appointment_cancelled", "completed", "checked_out")
    (warning,) = told(IMPLANT)
    assert (warning["severity"], warning["node_id"], warning["field"], warning["message"]) == (
        "warning",
        "t1",
        "data.event",
        "The clinic's appointment_events hold no appointment_completed event of clinic gangnam-01, and "
        "types careflow does not know: checked_out, completed. The trigger enrolls appointment_completed "
        "events: map the clinic's types to careflow's in the view careflow reads (docs/contracts.md §2)",
    )
    events("appointment_completed")
    assert told(IMPLANT) == []


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_commit_that_fails_puts_the_snapshot_back(
    engine: Engine, workflows_dir: Path, hard_links: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is written before the commit; where the commit then fails, the DAG factory must
    not see a version the database did not keep and the publish reported as not published: the
    file it replaced is back (the same file, where the filesystem has hard links), and a new
    workflow's is gone."""
    _publish(workflows_dir, IMPLANT)
    path = workflows_dir / "implant-aftercare.json"
    before, inode = path.read_bytes(), path.stat().st_ino
    changed_file = _implant_v2(workflows_dir.parent)
    welcome = EXAMPLES / "new-patient-welcome.json"

    if not hard_links:  # as a file owned by another user is under fs.protected_hardlinks

        def refused(src: str, dst: str) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("careflow.snapshots.os.link", refused)
    with _failing_at_commit(engine):
        code = main(
            ["workflows", "publish", "--workflows-dir", str(workflows_dir), str(changed_file), str(welcome)]
        )
    assert code != 0
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode or not hard_links  # the old file itself, where it could be kept
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]  # nothing else left
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]
    assert _versions(engine, "new-patient-welcome") == []

    code, results = _publish(workflows_dir, changed_file, welcome)
    assert code == 0 and [(r["action"], r["version"]) for r in results] == [
        ("published", 2),
        ("published", 1),
    ]
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 2
    assert sorted(p.name for p in workflows_dir.iterdir()) == [
        "implant-aftercare.json",
        "new-patient-welcome.json",
    ]


def test_a_snapshot_that_cannot_be_put_back_is_named(
    engine: Engine, workflows_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the commit fails and the old snapshot cannot be put back either, the command says
    which file now holds a version the database did not keep, and what to do."""
    import careflow.snapshots

    _publish(workflows_dir, IMPLANT)
    changed_file = _implant_v2(workflows_dir.parent)
    replace = careflow.snapshots.os.replace

    def refused_for_the_old_file(src: str, dst: str) -> None:
        if str(src).endswith(".kept"):
            raise OSError(5, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr("careflow.snapshots.os.replace", refused_for_the_old_file)
    with _failing_at_commit(engine):
        err = _not_published(workflows_dir, changed_file)
    assert (
        f"not published: {workflows_dir / 'implant-aftercare.json'}: could not be put back as it was before "
        "this publish (Input/output error): it holds a version the database did not keep; publish the "
        "workflow again"
    ) in err
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_full_disk_is_named(engine: Engine, workflows_dir: Path) -> None:
    """Postgres' disk-full error, raised as the publish commits, is told in careflow's words."""
    with _failing_at_commit(engine):
        err = _not_published(workflows_dir, IMPLANT)
    assert "implant-aftercare.json: not published: careflow's database" in err
    assert "has no space left: could not extend file: No space left on device; free space on the disk" in err
    assert list(workflows_dir.iterdir()) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_embedded_database_is_named(db_url: str, engine: Engine, workflows_dir: Path) -> None:
    """SQLite's own "database or disk is full" (here: its page limit reached), told in careflow's words."""
    from sqlalchemy import event

    engine.dispose()

    def no_new_pages(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    event.listen(engine, "connect", no_new_pages)
    try:
        err = _not_published(workflows_dir, *sorted(EXAMPLES.glob("*.json")))
    finally:
        event.remove(engine, "connect", no_new_pages)
        engine.dispose()
    assert (
        f"not published: careflow's database {db_url} (from CAREFLOW_DB_URL) has no space left: database or disk is full; free space"
        in err
    )
    published = [p.stem for p in workflows_dir.glob("*.json")]
    for stem in published:  # what fit is published whole; what did not left no snapshot
        assert _versions(engine, stem)
    assert len(published) < len(list(EXAMPLES.glob("*.json")))


def test_an_embedded_database_on_a_full_disk_is_named(
    small_disk: Path, workflows_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite in WAL mode cannot even open its database on a full disk (its shared-memory file
    cannot be made), and says only "disk I/O error": careflow says the disk is full."""
    from careflow.store.db import dispose_engines

    url = f"sqlite:///{small_disk / 'careflow.db'}"
    for _ in upgraded(url, monkeypatch):
        break
    dispose_engines()  # its WAL and shared-memory files go with the last connection
    fill(small_disk / "filler")

    err = _not_published(workflows_dir, IMPLANT)
    assert (
        f"not published: careflow's database {url} (from CAREFLOW_DB_URL) has no space left: "
        "disk I/O error; free space on the disk that holds it"
    ) in err
    assert list(workflows_dir.iterdir()) == []

    (small_disk / "filler").unlink()
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert code == 0 and result["action"] == "published"


def test_a_snapshot_that_cannot_be_written_is_named_and_publishes_nothing(
    small_disk: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflows directory on a full disk, then on a read-only one: the command names the
    directory and what to do, and the version is not stored (no version without its snapshot)."""
    workflows_dir = small_disk / "workflows"
    _publish(workflows_dir, EXAMPLES / "day-before-reminder.json")
    fill(small_disk / "filler")

    err = _not_published(workflows_dir, IMPLANT)
    assert (
        f"implant-aftercare.json: not published: cannot write its snapshot {workflows_dir / 'implant-aftercare.json'} "
        "(in [careflow] workflows_dir): No space left on device: free space on the disk that holds it; "
        "nothing was published"
    ) in err
    assert _versions(engine, "implant-aftercare") == []
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["day-before-reminder.json"]

    (small_disk / "filler").unlink()
    remount_read_only(small_disk)
    err = _not_published(workflows_dir, IMPLANT)
    assert (
        f"not published: cannot write its snapshot {workflows_dir / 'implant-aftercare.json'} "
        "(in [careflow] workflows_dir): Read-only file system: mount it writable where careflow publishes; "
        "nothing was published"
    ) in err
    assert _versions(engine, "implant-aftercare") == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("statement_timeout", [None, "300ms"])
def test_a_publish_held_up_by_a_stuck_one_names_the_session_that_holds_it(
    db_url: str,
    engine: Engine,
    workflows_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    statement_timeout: str | None,
) -> None:
    """Another publish of the same workflow left open in a transaction (its terminal suspended, a
    session killed half-way through a pooler): the next one waits no longer than the lock timeout
    (60 s; half a second here), or a shorter ``statement_timeout`` of the role's or the database's,
    then names that session and how to end it."""
    from sqlalchemy import create_engine

    from careflow import publishing
    from careflow.store.db import dispose_engines

    if statement_timeout is None:
        monkeypatch.setattr(publishing, "PUBLISH_LOCK_TIMEOUT_S", 0.5)
        held = "has held its lock for over 0.5 s"
    else:  # as ALTER ROLE … SET statement_timeout gives every session of the role
        monkeypatch.setenv("PGOPTIONS", f"-c statement_timeout={statement_timeout}")
        dispose_engines()
        held = "held its lock until this publish's wait was cancelled, after 0."
    stuck_engine = create_engine(db_url, connect_args={"application_name": "stuck publish"})
    try:
        with stuck_engine.connect() as stuck:
            stuck.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('careflow publish implant-aftercare'))")
            )  # and the transaction stays open
            pid = stuck.execute(text("SELECT pg_backend_pid()")).scalar_one()
            err = _not_published(workflows_dir, IMPLANT, EXAMPLES / "day-before-reminder.json")
            stuck.rollback()
    finally:
        stuck_engine.dispose()
    assert (
        f"implant-aftercare.json: not published: another publish of workflow implant-aftercare {held}"
    ) in err
    if statement_timeout is not None:
        assert f" s (statement_timeout is {statement_timeout}): Postgres backend {pid} " in err
    assert (
        f"Postgres backend {pid} (application 'stuck publish', client 127.0.0.1, "
        "idle in transaction, in a transaction since "
    ) in err
    assert (
        "; nothing was published. Wait for it to end, or end that session if it is stuck "
        f"(SELECT pg_terminate_backend({pid}))"
    ) in err
    assert _versions(engine, "implant-aftercare") == []
    assert [v for v, _ in _versions(engine, "day-before-reminder")] == [1]  # the next file went on
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert code == 0 and result["version"] == 1


def test_directories_made_for_snapshots_are_readable_by_every_user_whatever_the_umask(
    engine: Engine, tmp_path: Path
) -> None:
    """An operator's umask of 077 would leave a new workflows directory to them alone, and the DAG
    processor, running as another user, would find no workflow; careflow makes it (and any parent
    it makes) 0755, as it makes each snapshot 0644. A directory that exists keeps its mode."""
    import stat

    workflows_dir = tmp_path / "airflow" / "careflow" / "workflows"
    os.chmod(tmp_path, 0o711)
    previous = os.umask(0o077)
    try:
        (result,) = publish_paths([IMPLANT], engine=engine, workflows_dir=workflows_dir)
    finally:
        os.umask(previous)
    assert result.action == "published"
    modes = {
        str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
        for path in (
            tmp_path,
            tmp_path / "airflow",
            workflows_dir.parent,
            workflows_dir,
            Path(str(result.snapshot)),
        )
    }
    assert modes == {
        ".": 0o711,
        "airflow": 0o755,
        "airflow/careflow": 0o755,
        "airflow/careflow/workflows": 0o755,
        "airflow/careflow/workflows/implant-aftercare.json": 0o644,
    }


def test_a_session_another_role_holds_is_named_by_its_pid_alone() -> None:
    """What pg_stat_activity shows a role without pg_read_all_stats of another role's session."""
    from careflow.publishing import _session

    assert _session(4242, None, None, None, None) == "Postgres backend 4242"
    assert (
        _session(4242, "", None, "idle in transaction", None) == "Postgres backend 4242 (idle in transaction)"
    )


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


def _with_password(url: str) -> str:
    """``url`` with a password in it (Postgres trusts local connections: any password works)."""
    return url.replace("postgresql+psycopg2://postgres@", "postgresql+psycopg2://postgres:s3cret@")


def _live_snapshot_v2(workflows_dir: Path, tmp_path: Path) -> bytes:
    """implant-aftercare published twice through another (the live) database; the snapshot's bytes."""
    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    live = get_engine(f"sqlite:///{tmp_path / 'live.db'}")
    upgrade(live)
    changed_file = _implant_v2(tmp_path)
    results = [
        publish_paths([path], engine=live, workflows_dir=workflows_dir)[0] for path in (IMPLANT, changed_file)
    ]
    assert [(r.action, r.version) for r in results] == [("published", 1), ("published", 2)]
    return (workflows_dir / "implant-aftercare.json").read_bytes()


def test_publishing_through_another_database_never_rolls_the_snapshot_back(
    db_url: str,
    engine: Engine,
    workflows_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from careflow.store.db import dispose_engines

    before = _live_snapshot_v2(workflows_dir, tmp_path)
    monkeypatch.setenv("CAREFLOW_DB_URL", _with_password(db_url))  # upgraded, but not the live one
    dispose_engines()

    code = main(["workflows", "publish", "--workflows-dir", str(workflows_dir), str(IMPLANT)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "the snapshot on disk is v2 but this database knows no version of it: " in err
    assert "is careflow_db the right database?" in err
    shown = db_url.replace("postgres@", "postgres:***@")
    assert shown in err and "s3cret" not in err
    assert err.startswith(f"careflow: {IMPLANT}: ") and "unexpected error" not in err
    assert (workflows_dir / "implant-aftercare.json").read_bytes() == before
    assert _versions(engine, "implant-aftercare") == []  # the version it stored is rolled back

    # the database knows v1 and the snapshot is v2: still refused
    (result,) = publish_paths([IMPLANT], engine=engine, workflows_dir=tmp_path / "elsewhere")
    assert result.version == 1
    code, (failed,) = _publish(workflows_dir, IMPLANT)
    assert code == 2 and failed["action"] == "failed" and failed["version"] is None
    assert "the snapshot on disk is v2 but this database knows v1: is careflow_db" in failed["error"]
    assert (workflows_dir / "implant-aftercare.json").read_bytes() == before
    assert [v for v, _ in _versions(engine, "implant-aftercare")] == [1]


def test_the_same_version_with_other_content_on_disk_is_not_overwritten(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    from careflow.store.db import get_engine
    from careflow.store.migrations import upgrade

    live = get_engine(f"sqlite:///{tmp_path / 'live.db'}")
    upgrade(live)
    other = json.loads(IMPLANT.read_text(encoding="utf-8"))
    other["name"] = "다른 내용"
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    publish_paths([other_file], engine=live, workflows_dir=workflows_dir)
    before = (workflows_dir / "implant-aftercare.json").read_bytes()

    code, (failed,) = _publish(workflows_dir, IMPLANT)
    assert code == 2 and failed["action"] == "failed"
    assert "the snapshot on disk is v1 but this database knows no version of it" in failed["error"]
    assert (workflows_dir / "implant-aftercare.json").read_bytes() == before
    assert _versions(engine, "implant-aftercare") == []


def test_publish_output_names_the_database_without_its_password(
    db_url: str, workflows_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from careflow.store.db import dispose_engines

    monkeypatch.setenv("CAREFLOW_DB_URL", _with_password(db_url))
    dispose_engines()
    shown = db_url.replace("postgres@", "postgres:***@")
    assert main(["workflows", "publish", "--workflows-dir", str(workflows_dir), str(IMPLANT)]) == 0
    out = capsys.readouterr().out
    assert "published implant-aftercare v1 (" in out and f" in {shown} -> " in out and "s3cret" not in out
    code, (result,) = _publish(workflows_dir, IMPLANT)
    assert code == 0 and result["action"] == "unchanged" and result["database"] == shown


def test_a_file_that_fails_does_not_hide_those_published_before_it_nor_stop_the_next(
    engine: Engine, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, failing, last = (
        EXAMPLES / f"{name}.json" for name in ("day-before-reminder", "implant-aftercare", "no-show-recovery")
    )
    (workflows_dir / "implant-aftercare.json").mkdir()  # its snapshot cannot be written

    code = main(
        ["workflows", "publish", "--workflows-dir", str(workflows_dir), *map(str, (first, failing, last))]
    )
    out, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in out.splitlines() if not line.startswith("  ")]  # not the warnings under them
    assert len(lines) == 2
    assert lines[0].startswith(f"{first}: published day-before-reminder v1 (")
    assert lines[1].startswith(f"{last}: published no-show-recovery v1 (")
    assert err.startswith(
        f"careflow: {failing}: not published: cannot write its snapshot {workflows_dir / 'implant-aftercare.json'} "
        "(in [careflow] workflows_dir): Is a directory; nothing was published"
    )
    assert len(err.splitlines()) == 1
    assert _versions(engine, "implant-aftercare") == []
    assert [v for v, _ in _versions(engine, "no-show-recovery")] == [1]

    code, results = _publish(workflows_dir, first, failing, last)
    assert code == 2
    assert [(r["workflow_id"], r["action"]) for r in results] == [
        ("day-before-reminder", "unchanged"),
        ("implant-aftercare", "failed"),
        ("no-show-recovery", "unchanged"),
    ]
    assert (
        results[1]["source"] == str(failing)
        and "Is a directory; nothing was published" in results[1]["error"]
    )


def _killed_after_writing_the_snapshot(workflows_dir: Path, path: Path) -> None:
    """``careflow workflows publish path`` in a process of its own, killed (SIGKILL: nothing of it
    runs after) once it has written the snapshot, before its commit."""
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "import careflow.publishing as publishing\n"
        "write = publishing.write_snapshot\n"
        "def written_then_killed(*args):\n"
        "    write(*args)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "publishing.write_snapshot = written_then_killed\n"
        "from careflow.cli import main\n"
        "main(['workflows', 'publish', '--workflows-dir', sys.argv[1], sys.argv[2]])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(workflows_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_publish_killed_before_its_commit_is_healed_by_the_next_publish(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    """Killed between writing its snapshot and its commit, a publish leaves the DAG factory a version
    the database does not have, and beside it the old snapshot it kept aside. ``list`` says the
    snapshot is ahead and why; the next publish, whatever its content, sees what the kept file holds
    (this database's latest version) and takes that version's place, leaving no kept file."""
    from careflow.publishing import read_workflows

    (v1,) = publish_paths([IMPLANT], engine=engine, workflows_dir=workflows_dir)
    _killed_after_writing_the_snapshot(workflows_dir, _implant_v2(tmp_path))
    snapshot = workflows_dir / "implant-aftercare.json"
    assert json.loads(snapshot.read_text(encoding="utf-8"))["version"] == 2
    assert len(list(workflows_dir.glob(".implant-aftercare.*.kept"))) == 1
    assert _versions(engine, "implant-aftercare") == [(1, v1.content_hash)]
    (listed,) = read_workflows(engine=engine, workflows_dir=workflows_dir).workflows
    assert (listed.version, listed.snapshot, listed.problem) == (
        1,
        "ahead",
        "the snapshot on disk is v2: a publish stopped after writing it and before storing its version "
        "(publish again), or another database published it",
    )

    other = json.loads(IMPLANT.read_text(encoding="utf-8"))
    other["name"] = "임플란트 수술 후 관리 v3"
    (tmp_path / "implant-v3.json").write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    code, (result,) = _publish(workflows_dir, tmp_path / "implant-v3.json")
    assert (code, result["action"], result["version"]) == (0, "published", 2)
    assert _versions(engine, "implant-aftercare") == [(1, v1.content_hash), (2, result["content_hash"])]
    on_disk = json.loads(snapshot.read_text(encoding="utf-8"))
    assert (on_disk["version"], on_disk["content_hash"]) == (2, result["content_hash"])
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]


def test_a_new_workflows_publish_killed_before_its_commit_is_healed_by_the_next_publish(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    """A new workflow's killed publish leaves the DAG factory a snapshot the database never stored
    and, beside it, an empty kept file: there was none before. ``list`` says the snapshot is ahead;
    the next publish, whatever its content, stores v1 in its place and removes the kept file."""
    from careflow.publishing import read_workflows

    _killed_after_writing_the_snapshot(workflows_dir, IMPLANT)
    snapshot = workflows_dir / "implant-aftercare.json"
    (kept,) = workflows_dir.glob(".implant-aftercare.*.kept")
    assert snapshot.is_file() and kept.stat().st_size == 0
    (listed,) = read_workflows(engine=engine, workflows_dir=workflows_dir).workflows
    assert (listed.version, listed.snapshot, listed.problem) == (
        1,
        "ahead",
        "the snapshot on disk is v1, and this database has no version of it: a publish stopped after "
        "writing it and before storing its version (publish again)",
    )

    code, (result,) = _publish(workflows_dir, _implant_v2(tmp_path))
    assert (code, result["action"], result["version"]) == (0, "published", 1)
    assert _versions(engine, "implant-aftercare") == [(1, result["content_hash"])]
    assert json.loads(snapshot.read_text(encoding="utf-8"))["content_hash"] == result["content_hash"]
    assert sorted(p.name for p in workflows_dir.iterdir()) == ["implant-aftercare.json"]


def test_a_new_workflows_snapshot_nothing_explains_is_refused_with_what_to_do(
    engine: Engine, workflows_dir: Path, tmp_path: Path
) -> None:
    """Where nothing says a publish of this database wrote the snapshot (the kept file could not be
    made, or another database published it), the next publish of other content is refused and says
    what to do for both."""
    _killed_after_writing_the_snapshot(workflows_dir, IMPLANT)
    for kept in workflows_dir.glob(".implant-aftercare.*.kept"):
        kept.unlink()
    err = _not_published(workflows_dir, _implant_v2(tmp_path))
    assert (
        "if it is the right one, a publish was stopped after writing the snapshot and before storing its "
        f"version: remove {workflows_dir / 'implant-aftercare.json'} and publish again"
    ) in err
    (workflows_dir / "implant-aftercare.json").unlink()
    code, (result,) = _publish(workflows_dir, _implant_v2(tmp_path))
    assert (code, result["action"], result["version"]) == (0, "published", 1)


def test_only_files_kept_by_publishes_that_no_longer_run_are_left_over(tmp_path: Path) -> None:
    """A kept file whose process still runs here belongs to a publish that may yet put it back."""
    import subprocess

    from careflow.snapshots import left_kept

    gone = subprocess.Popen(["true"])
    gone.wait()
    names = [
        f".implant-aftercare.{gone.pid}.0123abcd.kept",  # its publish ended
        f".implant-aftercare.{os.getpid()}.0123abcd.kept",  # this process: running
        f".implant-aftercare.v2.{gone.pid}.0123abcd.kept",  # another workflow's (ids may hold dots)
        f".implant-aftercare.{gone.pid}.kept",  # not a name careflow gives
    ]
    for name in names:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    assert left_kept(tmp_path / "implant-aftercare.json") == [tmp_path / names[0]]
