"""``careflow simulate`` and ``careflow metrics`` say what is missing and how to fix it, in one line."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from careflow.cli import main
from support import EXAMPLES, REPO, airflow_env, copy_airflow_db, run_careflow

SIMULATE = (
    "simulate",
    "--workflow",
    "implant-aftercare",
    "--start",
    "2026-03-02",
    "--days",
    "1",
    "--dry-run",
)


def test_simulate_before_airflow_db_migrate_says_to_run_it(published: dict[str, str]) -> None:
    result = run_careflow(published, *SIMULATE)
    assert result.returncode == 2
    assert result.stderr.startswith("careflow: Airflow's metadata database (sqlite:///")
    assert "is not migrated: run `airflow db migrate`" in result.stderr
    assert "unexpected error" not in result.stderr and "[SQL:" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_of_a_workflow_published_not_active_says_why_there_is_no_dag(
    published: dict[str, str], tmp_path: Path
) -> None:
    """Only active workflows become DAGs: simulating a draft said its DAG file "did not build" it,
    and to look for import errors."""
    draft = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))
    draft["status"] = "draft"
    (tmp_path / "draft.json").write_text(json.dumps(draft, ensure_ascii=False), encoding="utf-8")
    assert run_careflow(published, "workflows", "publish", str(tmp_path / "draft.json")).returncode == 0
    result = run_careflow(published, *SIMULATE)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "careflow: workflow implant-aftercare is published as draft (version 2): only an active "
        'workflow becomes a DAG, so there is none to simulate; publish it with "status": "active" '
        "where no real run reads its executions (the demo, or a copy of the database: "
        "CAREFLOW_DB_URL=… careflow simulate …)\n"
    )


@pytest.mark.airflow
def test_simulate_with_the_dags_folder_elsewhere_names_the_setting_and_the_dag_file(
    published: dict[str, str], airflow_home: Path
) -> None:
    home = Path(published["AIRFLOW_HOME"])
    copy_airflow_db(airflow_home, home / "airflow.db")
    (home / "dags").mkdir()
    env = {**published, "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags")}  # Airflow's default
    result = run_careflow(env, *SIMULATE)
    assert result.returncode == 2
    err = result.stderr
    assert "publish the workflow first" not in err and "unexpected error" not in err
    assert "workflow implant-aftercare is published" in err
    assert f"[core] dags_folder ({home / 'dags'})" in err
    assert "AIRFLOW__CORE__DAGS_FOLDER" in err
    assert str(REPO / "dags" / "careflow_workflows.py") in err


@pytest.mark.airflow
@pytest.mark.parametrize("runner", [(), ("--airflow-runner",)])
def test_simulate_json_stays_json_at_the_log_level_a_deployment_sets(
    published: dict[str, str], airflow_home: Path, runner: tuple[str, ...]
) -> None:
    """At ``INFO`` Airflow and careflow log each simulated task on stdout (594 lines among 2 of
    JSON for two days): with ``--json`` they go to stderr, stdout holds the JSON lines alone."""
    copy_airflow_db(airflow_home, Path(published["AIRFLOW_HOME"]) / "airflow.db")
    env = {**published, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    argv = [*SIMULATE[:-3], "--days", "2", "--dry-run", "--json", *runner]
    result = run_careflow(env, *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["type"] for line in lines][-1:] == ["summary"]
    assert {line["type"] for line in lines[:-1]} <= {"message"}
    assert "careflow implant-aftercare" in result.stderr  # the task lines, on stderr


@pytest.mark.airflow
@pytest.mark.parametrize(
    ("argv", "left", "said"),
    [
        (("setup",), 0, "disk I/O error"),  # SQLite's words where it cannot even start its journal
        ((*SIMULATE, "--airflow-runner"), 0, "disk I/O error"),  # storing the parsed DAG
        ((*SIMULATE, "--airflow-runner"), 200_000, "database or disk is full"),  # the DAG run itself
    ],
)
def test_an_airflow_database_out_of_space_is_named(
    published: dict[str, str], airflow_home: Path, tmp_path: Path, argv: tuple[str, ...], left: int, said: str
) -> None:
    """Airflow's metadata database (SQLite here) on a disk that filled up, with ``left`` bytes free:
    the commands that write to it name it and what to do; they said "unexpected error:
    OperationalError". With room for the parsed DAG, stored by a run before the disk filled, the
    simulated run's own writes are what fail."""
    import os

    from support import fill, tmpfs

    with tmpfs(tmp_path / "disk", "64m") as disk:
        copy_airflow_db(airflow_home, disk / "airflow.db")
        env = {**published, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{disk / 'airflow.db'}"}
        if left:
            before = run_careflow(env, *argv)
            assert before.returncode == 0, before.stderr
        fill(disk / "filler")
        os.truncate(disk / "filler", os.path.getsize(disk / "filler") - left)
        result = run_careflow(env, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"careflow: Airflow's metadata database (sqlite:///{disk / 'airflow.db'}) has no space left: "
        f"{said}; free space on the disk that holds it, then run this again\n"
    )


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("metrics", "--since", "2026-13-01"), "--since"),
        (("metrics", "--since", "yesterday"), "--since"),
        (("simulate", "--workflow", "implant-aftercare", "--start", "03/02/2026"), "--start"),
        (("simulate", "--workflow", "implant-aftercare", "--start", "2026-02-30"), "--start"),
    ],
)
def test_a_bad_date_names_the_option_and_what_is_expected(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], option: str
) -> None:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"careflow: {option} '{argv[-1]}': expected YYYY-MM-DD or an ISO 8601 time"), err
    assert "unexpected error" not in err


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2026-03-02", datetime(2026, 3, 2, tzinfo=timezone.utc)),
        ("2026-03-02T09:30", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)),
        ("2026-03-02T09:00+09:00", datetime(2026, 3, 2, tzinfo=timezone.utc)),
        ("2026-03-02T09:00:00Z", datetime(2026, 3, 2, 9, tzinfo=timezone.utc)),
        (" 2026-03-02 ", datetime(2026, 3, 2, tzinfo=timezone.utc)),
    ],
)
def test_a_date_is_midnight_utc_and_a_time_without_offset_is_utc(value: str, moment: datetime) -> None:
    from careflow.simulation import parse_day_or_time

    parsed = parse_day_or_time(value)
    assert parsed == moment and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("dags_folder", ["empty", "with_careflow_dag_file", "unpublished"])
def test_a_dag_not_found_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workflows_dir: Path, dags_folder: str
) -> None:
    from careflow.simulation import _dag_not_found

    folder = tmp_path / "dags"
    folder.mkdir()
    if dags_folder == "with_careflow_dag_file":
        shutil.copyfile(REPO / "dags" / "careflow_workflows.py", folder / "careflow_workflows.py")
    if dags_folder != "unpublished":
        shutil.copyfile(EXAMPLES / "implant-aftercare.json", workflows_dir / "implant-aftercare.json")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    message = str(_dag_not_found("careflow__implant-aftercare"))
    if dags_folder == "unpublished":
        assert "publish the workflow first" in message
    elif dags_folder == "empty":
        assert f"[core] dags_folder ({folder})" in message and str(REPO / "dags") in message
    else:
        assert f"{folder / 'careflow_workflows.py'} did not build DAG careflow__implant-aftercare" in message
        assert "airflow dags list-import-errors" in message


def test_setup_before_airflow_db_migrate_says_to_run_it(tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_env(home, tmp_path / "workflows", AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR")
    result = run_careflow(env, "setup")
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"careflow: Airflow's metadata database (sqlite:///{home / 'airflow.db'})"
    )
    assert "is not migrated: run `airflow db migrate`" in result.stderr
    assert "unexpected error" not in result.stderr and "slot_pool" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_commands_that_reach_airflow_print_no_third_party_deprecation(tmp_path: Path) -> None:
    """Airflow's models import FastAPI's test client (through svcs), where Starlette warns of its
    HTTP client: at Airflow's default log level that line led every such command's output."""
    home = tmp_path / "airflow"
    home.mkdir()
    result = run_careflow(airflow_env(home, tmp_path / "workflows"), "setup")
    assert result.returncode == 2 and "is not migrated" in result.stderr
    assert "httpx" not in result.stdout + result.stderr


@pytest.mark.parametrize("argv", [("setup",), SIMULATE])
def test_an_airflow_database_that_does_not_answer_is_named(
    published: dict[str, str], argv: tuple[str, ...]
) -> None:
    """Airflow's metadata database down (or its name wrong): the commands that use it name it,
    password hidden, and where it is set, in one line; it was "unexpected error: OperationalError"."""
    from support import refusing_port

    with refusing_port() as port:
        env = {
            **published,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:secret@127.0.0.1:{port}/airflow",
        }
        result = run_careflow(env, *argv)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"careflow: Airflow's metadata database (postgresql+psycopg2://airflow:***@127.0.0.1:{port}/airflow) "
        f'cannot be read: connection to server at "127.0.0.1", port {port} failed: Connection refused: check '
        "[database] sql_alchemy_conn (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN) and that the database answers"
    ), result.stderr
    assert "secret" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_metrics_say_why_airflows_figures_are_left_out(published: dict[str, str]) -> None:
    """Airflow's figures are optional: careflow's are printed, and stderr names the database that
    could not be read and why (a log line on stdout said only "not readable (OperationalError)",
    before the report, and broke `--json`'s)."""
    from support import refusing_port

    with refusing_port() as port:
        url = f"postgresql+psycopg2://airflow:secret@127.0.0.1:{port}/airflow"
        env = {
            **published,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
        result = run_careflow(env, "metrics")
        as_json = run_careflow(env, "metrics", "--json")
    said = (
        "careflow metrics: Airflow's figures are left out: its metadata database "
        f"postgresql+psycopg2://airflow:***@127.0.0.1:{port}/airflow could not be read: OperationalError: "
        f'connection to server at "127.0.0.1", port {port} failed: Connection refused\n'
    )
    assert (result.returncode, result.stderr) == (0, said)
    assert result.stdout.startswith("careflow metrics (careflow)\n")
    assert (as_json.returncode, as_json.stderr) == (0, said)
    assert json.loads(as_json.stdout)["source"] == "careflow"


@pytest.mark.parametrize("argv", [(), ("--no-airflow",), ("--json",)])
def test_metrics_before_db_upgrade_says_to_run_it(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code = main(["metrics", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        f"careflow: careflow's tables do not exist in this database ({empty_db_url}: careflow_steps is "
        "missing): run `careflow db upgrade` first\n"
    )


def test_metrics_of_a_workflow_that_is_not_published_says_so(
    db_url: str, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["metrics", "--no-airflow", "--workflow", "implant-afercare"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        "careflow: --workflow implant-afercare: no such workflow is published; "
        "`careflow workflows list` shows the published ones\n"
    )

    from careflow.publishing import publish_paths

    publish_paths([EXAMPLES / "implant-aftercare.json"], workflows_dir=workflows_dir)
    assert main(["metrics", "--no-airflow", "--workflow", "implant-aftercare"]) == 0
    assert "no runs recorded" in capsys.readouterr().out
