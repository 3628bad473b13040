"""The DAG factory: one DAG per active published workflow, shaped as the workflow says (docs/contracts.md §4, §3)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from careflow.airflow.factory import WAKE_TASK_ID, build_dags
from careflow.airflow.operators import NODE_OPERATORS
from careflow.airflow.operators.action import PROVIDER_POOL
from careflow.airflow.operators.wake import WakeOperator
from support import as_nobody, open_directory, refuse_connections

from .sample_workflows import BRANCHING, CORRUPT, INVALID, PAUSED, sources_by_id

SOURCES = sources_by_id()
ACTIVE = sorted(wid for wid, doc in SOURCES.items() if doc.get("status", "active") == "active")


@pytest.fixture(scope="module")
def built(published_dir: Path) -> tuple[dict[str, Any], list[Any]]:
    """``build_dags`` over the published dir (once for the module)."""
    return build_dags(published_dir)


def _edges(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["source"], e["target"]) for e in doc["edges"]}


def _sinks(doc: dict[str, Any]) -> set[str]:
    sources = {e["source"] for e in doc["edges"]}
    return {n["id"] for n in doc["nodes"] if n["id"] not in sources}


def test_one_dag_per_active_workflow_and_broken_snapshots_are_reported(built: tuple[dict, list]) -> None:
    dags, problems = built
    assert "paused" in {d.get("status") for d in SOURCES.values()}
    assert "draft" in {d.get("status") for d in SOURCES.values()}
    assert sorted(dags) == [f"careflow__{wid}" for wid in ACTIVE]
    assert f"careflow__{PAUSED}" not in dags
    assert "careflow__scaling-whitening-offer" not in dags  # a draft
    broken = {p.path.stem: p.message for p in problems}
    assert set(broken) == {CORRUPT, INVALID}
    assert "not a readable JSON snapshot" in broken[CORRUPT]
    assert "does not compile" in broken[INVALID] and "teleport" in broken[INVALID]


@pytest.mark.parametrize("workflow_id", ACTIVE)
def test_tasks_mirror_the_graph(built: tuple[dict, list], workflow_id: str) -> None:
    dag = built[0][f"careflow__{workflow_id}"]
    doc = SOURCES[workflow_id]
    assert dag.dag_id == f"careflow__{workflow_id}"
    labels = {n["id"]: n["data"]["label"] for n in doc["nodes"]}
    assert set(dag.task_dict) == set(labels) | {WAKE_TASK_ID}
    for node in doc["nodes"]:
        task = dag.get_task(node["id"])
        assert task.task_display_name == node["data"]["label"]
        assert type(task) is NODE_OPERATORS[node["type"]]
        assert task.careflow_node_id == node["id"]
    wired = {(up, t.task_id) for t in dag.tasks if t.task_id != WAKE_TASK_ID for up in t.upstream_task_ids}
    assert wired == _edges(doc)
    wake = dag.get_task(WAKE_TASK_ID)
    assert isinstance(wake, WakeOperator)
    assert wake.upstream_task_ids == _sinks(doc)
    assert not wake.downstream_task_ids
    # a teardown without setups: it runs once its upstream tasks are done, in any state, and the
    # run's state is the node tasks'
    assert wake.is_teardown and not wake.on_failure_fail_dagrun
    assert wake.trigger_rule == "all_done_setup_success"
    assert not any(t.is_setup for t in dag.tasks)


def test_both_condition_branches_are_wired(built: tuple[dict, list]) -> None:
    dag = built[0][f"careflow__{BRANCHING}"]
    assert dag.get_task("c1").downstream_task_ids == {"w1", "a2"}
    assert dag.get_task(WAKE_TASK_ID).upstream_task_ids == {"a1", "a2"}


@pytest.mark.parametrize(
    ("workflow_id", "expression", "tz"),
    [
        ("implant-aftercare", "0 0 * * *", "Asia/Seoul"),
        ("day-before-reminder", "0 * * * *", "Asia/Seoul"),
        (BRANCHING, "30 8 * * 1-5", "America/New_York"),
    ],
)
def test_timetable_has_a_data_interval_in_the_workflow_timezone(
    built: tuple[dict, list], workflow_id: str, expression: str, tz: str
) -> None:
    from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

    dag = built[0][f"careflow__{workflow_id}"]
    assert type(dag.timetable) is CronDataIntervalTimetable
    assert dag.timetable.expression == expression
    assert str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == tz
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def test_dag_docs_tags_owner_and_params(built: tuple[dict, list], published_dir: Path) -> None:
    import json

    dag = built[0]["careflow__implant-aftercare"]
    snap = json.loads((published_dir / "implant-aftercare.json").read_text(encoding="utf-8"))
    doc = dag.doc_md
    assert "임플란트 수술 후 관리" in doc
    assert f"version **{snap['version']}**" in doc
    assert snap["content_hash"][:12] in doc
    for node in SOURCES["implant-aftercare"]["nodes"]:  # the outline names every node
        assert f"`{node['id']}`" in doc and node["data"]["label"] in doc
    assert "→ w1 (true)" in doc
    assert set(dag.tags) == {"careflow", "clinic:gangnam-01"}
    assert dag.owner == "careflow"
    # Nothing in the Trigger DAG form moves the clock or keeps a run from sending (simulate's own)
    assert not set(dag.params) & {"careflow_clock", "careflow_dry_run", "careflow_simulated"}
    # names go through html escaping; user text never becomes markup in the UI
    branching = built[0][f"careflow__{BRANCHING}"]
    assert "&lt;b&gt;cron&lt;/b&gt;" in branching.doc_md and "<b>" not in branching.doc_md


def test_task_settings_come_from_the_workflow(built: tuple[dict, list]) -> None:
    dag = built[0][f"careflow__{BRANCHING}"]
    assert dag.owner == "clinic-ops"
    assert dag.max_active_tasks == 7
    for node_id in ("t1", "d1", "c1", "w1", "a1", "a2"):
        task = dag.get_task(node_id)
        assert task.retries == 5
        assert task.retry_delay == timedelta(seconds=12)
        assert task.retry_exponential_backoff
        assert task.execution_timeout == timedelta(seconds=120)
        assert task.owner == "clinic-ops"
    default = built[0]["careflow__implant-aftercare"].get_task("d1")
    assert default.retries == 3
    assert default.retry_delay == timedelta(seconds=30)
    assert default.execution_timeout == timedelta(seconds=3600)


def test_actions_run_in_the_messaging_pool_and_nothing_is_templated(built: tuple[dict, list]) -> None:
    for dag in built[0].values():
        for task in dag.tasks:
            if task.task_id == WAKE_TASK_ID:
                assert task.pool != PROVIDER_POOL
            elif task.careflow_node_id and type(task).node_type == "action":
                assert task.pool == PROVIDER_POOL, (dag.dag_id, task.task_id)
            else:
                assert task.pool != PROVIDER_POOL, (dag.dag_id, task.task_id)
            # user-written templates must never reach Airflow's Jinja (its context holds secrets)
            assert tuple(task.template_fields) == (), (dag.dag_id, task.task_id)
    assert "{{ patient.name }}" in built[0]["careflow__implant-aftercare"].get_task("a1").doc_md


def test_parsing_context_builds_only_the_running_dag(
    published_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "careflow__implant-aftercare")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "a1")
    dags, problems = build_dags(published_dir)
    assert list(dags) == ["careflow__implant-aftercare"]
    assert problems == []  # the corrupt snapshots are not even read

    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "careflow__no-such-workflow")
    dags, problems = build_dags(published_dir)
    assert dags == {}
    assert len(problems) == 1 and "no published snapshot" in problems[0].message


def test_a_task_whose_workflow_or_node_is_gone_is_told_why_it_finds_no_dag(
    published_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task of a run in flight (a wait that ends in the triggerer) started after its workflow was
    published paused, or after a version without its node: Airflow says only that the DAG or the
    task is not found; the worker's log says why, and what becomes of the executions."""
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", f"careflow__{PAUSED}")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", WAKE_TASK_ID)
    with caplog.at_level("WARNING", logger="careflow.airflow.factory"):
        dags, problems = build_dags(published_dir)
    assert (dags, problems) == ({}, [])
    assert [r.getMessage() for r in caplog.records] == [
        f"careflow: workflow {PAUSED} is paused since version 1, so its DAG is not built: task "
        f"{WAKE_TASK_ID} of a run started before ends here, and its executions wait in careflow's "
        "tables until a version published active takes them on"
    ]

    caplog.clear()
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "careflow__implant-aftercare")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "a0")
    with caplog.at_level("WARNING", logger="careflow.airflow.factory"):
        dags, _ = build_dags(published_dir)
    assert list(dags) == ["careflow__implant-aftercare"]
    assert [r.getMessage() for r in caplog.records] == [
        "careflow: version 1 of workflow implant-aftercare has no node a0: its task, waiting since "
        "before that version was published, ends here; the executions at that node exit with "
        "node_removed_in_version_1 when the next run reaches them"
    ]

    caplog.clear()  # a task the DAG has: nothing to say
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "a1")
    with caplog.at_level("WARNING", logger="careflow.airflow.factory"):
        build_dags(published_dir)
    assert caplog.records == []

    # Another DAG's task: every active workflow is built, and the paused one is nobody's business.
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "reports_nightly")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", WAKE_TASK_ID)
    with caplog.at_level("WARNING", logger="careflow.airflow.factory"):
        dags, _ = build_dags(published_dir)
    assert sorted(dags) == [f"careflow__{wid}" for wid in ACTIVE]
    assert not [r for r in caplog.records if PAUSED in r.getMessage()]


def test_parsing_touches_no_database_and_no_network(
    published_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREFLOW_DB_URL", "postgresql+psycopg2://careflow@127.0.0.1:1/unreachable")
    attempts = refuse_connections(monkeypatch)
    started = time.perf_counter()
    dags, _ = build_dags(published_dir)
    elapsed = time.perf_counter() - started
    assert attempts == [], "the DAG factory opened a connection while parsing"
    assert sorted(dags) == [f"careflow__{wid}" for wid in ACTIVE]
    assert elapsed < 2.0, f"parsing {len(dags)} workflows took {elapsed:.2f}s"


def test_a_missing_workflows_dir_gives_no_dags_and_no_error(tmp_path: Path) -> None:
    assert build_dags(tmp_path / "nowhere") == ({}, [])


def test_a_workflows_dir_the_dag_processor_may_not_list_is_a_problem_not_an_empty_list(
    published_dir: Path,
) -> None:
    """Published by an operator whose umask left the directory to them alone (0700), read by the
    DAG processor as another user: pathlib's glob would find nothing and say nothing, every DAG
    gone; the factory names the directory, the user and what to do."""
    import os
    import shutil

    def build() -> tuple[list[str], list[tuple[str, str]]]:
        dags, problems = build_dags(workflows_dir)
        return sorted(dags), [(str(p.path), p.message) for p in problems]

    with open_directory() as top:
        workflows_dir = top / "workflows"
        shutil.copytree(published_dir, workflows_dir)
        os.chmod(workflows_dir, 0o700)
        dags, problems = as_nobody(build)
        os.chmod(workflows_dir, 0o755)  # the same directory, readable: every DAG is back
        assert as_nobody(build)[0] == [f"careflow__{wid}" for wid in ACTIVE]
    assert dags == []
    assert problems == [
        (
            str(workflows_dir),
            f"{workflows_dir} ([careflow] workflows_dir): this user (nobody, uid 65534) may not list it, "
            "so no workflow is loaded: let the user the DAG processor and the workers run as read and "
            "enter it and the directories above it",
        )
    ]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            {"snapshot_format": 2},
            "implant-aftercare.json: written by a newer careflow (snapshot format 2; this careflow reads "
            "format 1): run the same careflow release on every Airflow component and wherever workflows "
            "are published",
        ),
        ({"snapshot_format": "1"}, "implant-aftercare.json: not a careflow snapshot (format 1 expected)"),
        (
            {"start_date": "yesterday"},
            "implant-aftercare.json: snapshot field missing or malformed (Invalid isoformat string: 'yesterday')",
        ),
    ],
)
def test_a_snapshot_this_careflow_cannot_read_says_why(
    published_dir: Path, tmp_path: Path, change: dict[str, Any], said: str
) -> None:
    """A newer careflow's snapshot (a DAG processor left on the old release while the new one
    publishes) says so, and a start date that is not a date is a malformed field, not an
    unexpected error; the other workflows load."""
    import json
    import shutil

    for name in ("implant-aftercare.json", "day-before-reminder.json"):
        shutil.copy(published_dir / name, tmp_path / name)
    snap = json.loads((tmp_path / "implant-aftercare.json").read_text(encoding="utf-8"))
    (tmp_path / "implant-aftercare.json").write_text(json.dumps({**snap, **change}), encoding="utf-8")
    dags, problems = build_dags(tmp_path)
    assert list(dags) == ["careflow__day-before-reminder"]
    assert [p.message for p in problems] == [said]


def test_a_snapshot_edited_by_hand_is_refused(published_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    shutil.copy(published_dir / "implant-aftercare.json", tmp_path / "implant-aftercare.json")
    assert list(build_dags(tmp_path)[0]) == ["careflow__implant-aftercare"]  # now compiled and cached
    snap = json.loads((tmp_path / "implant-aftercare.json").read_text(encoding="utf-8"))
    snap["workflow"]["nodes"][1]["data"]["amount"] = 30
    (tmp_path / "implant-aftercare.json").write_text(json.dumps(snap, ensure_ascii=False), encoding="utf-8")
    dags, problems = build_dags(tmp_path)
    assert dags == {}
    assert len(problems) == 1 and "content hash" in problems[0].message


def test_problems_are_one_line_each(built: tuple[dict, list]) -> None:
    for problem in built[1]:
        assert "\n" not in problem.message, problem.message


def test_task_docs_show_the_node_configuration_as_readable_json(
    built: tuple[dict, list], published_dir: Path
) -> None:
    import json

    from careflow.snapshots import load_one

    dag = built[0]["careflow__implant-aftercare"]
    _, compiled = load_one(published_dir, "implant-aftercare")
    for node_id in compiled.order:
        config = compiled.node(node_id).config.model_dump(mode="json")
        expected = json.dumps(config, ensure_ascii=False, indent=2)
        assert f"```json\n{expected}\n```" in dag.get_task(node_id).doc_md
    assert "리마인드 알림톡" in dag.get_task("a1").doc_md  # Korean stays readable, not \\u-escaped
