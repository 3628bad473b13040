"""``careflow check``: each part careflow needs, one line each, and exit 2 where one is a problem."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from careflow.providers.fake_server import FakeProviderServer
from careflow.workflow.models import TRIGGER_EVENTS
from support import CAREFLOW, EXAMPLES, airflow_env, copy_airflow_db, failure_output, refusing_port

AIRFLOW = str(Path(sys.executable).parent / "airflow")
REDIS_URL = os.environ.get("CAREFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _careflow(env: dict[str, str], *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAREFLOW, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _airflow(env: dict[str, str], *argv: str) -> None:
    done = subprocess.run([AIRFLOW, *argv], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, failure_output(done)


@pytest.fixture
def home(tmp_path: Path, airflow_home: Path) -> dict[str, str]:
    """An Airflow home of its own (the session's metadata database, copied, without the pool an
    earlier test may have made there) and its environment: careflow's embedded database not
    upgraded yet, no connection defined."""
    home = tmp_path / "airflow"
    home.mkdir()
    copy_airflow_db(airflow_home, home / "airflow.db")
    with closing(sqlite3.connect(home / "airflow.db")) as copy, copy:
        copy.execute("DELETE FROM slot_pool WHERE pool = 'careflow_messaging'")
        copy.execute("DELETE FROM job")  # no component has run with this database
    return airflow_env(
        home,
        tmp_path / "workflows",
        CAREFLOW_DB_URL=f"sqlite:///{tmp_path / 'careflow.db'}",
        CAREFLOW_REDIS_URL="",
        AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR",
    )


@pytest.fixture
def provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as fake:
        yield fake


def _messaging(provider: FakeProviderServer, token: str) -> str:
    """The ``careflow_messaging`` connection of ``provider`` with ``token``, as Airflow reads it from the environment."""
    return provider.url.replace("http://", f"http://:{token}@")


@pytest.mark.airflow
@pytest.mark.redis
def test_a_setup_careflow_can_work_with_says_ok_for_each_part(
    home: dict[str, str], provider: FakeProviderServer
) -> None:
    env = {
        **home,
        "CAREFLOW_REDIS_URL": REDIS_URL,
        "AIRFLOW_CONN_CAREFLOW_MESSAGING": _messaging(provider, provider.token),
        "AIRFLOW_CONN_CAREFLOW_ALERTS": json.dumps(
            {
                "conn_type": "http",
                "extra": {"webhook_url": "https://ops:pw-secret@hooks.slack.com/services/T0/B0/secret-part"},
            }
        ),
    }
    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES)), ("setup",)):
        done = _careflow(env, *argv)
        assert done.returncode == 0, done.stderr
    _airflow(env, "dags", "reserialize")  # what the dag processor does with careflow's DAG file
    examples = len(list(EXAMPLES.glob("*.json")))

    # The clinic's data not loaded yet: the published workflows' clinic is unknown (a warning), said
    # once for them all.
    _heartbeat(Path(env["AIRFLOW_HOME"]), "SchedulerJob", "DagProcessorJob", "TriggererJob")
    checked = _careflow(env, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    warned = [f for f in json.loads(checked.stdout) if f["verdict"] == "warning"]
    assert [f["subject"] for f in warned] == [
        "workflows " + ", ".join(path.stem for path in sorted(EXAMPLES.glob("*.json")))
    ]
    assert all(
        f["text"].startswith("WF_CLINIC_UNKNOWN: No clinic gangnam-01 in the clinics table") for f in warned
    )

    with sqlite3.connect(env["CAREFLOW_DB_URL"].removeprefix("sqlite:///")) as conn:
        conn.execute("INSERT INTO clinics (id, name, timezone) VALUES ('gangnam-01', '강남', 'Asia/Seoul')")
        conn.execute(  # one a workflow can reach, of an age, who consents to marketing too
            "INSERT INTO patients (id, clinic_id, name, phone, email, birth_date, consent_marketing) "
            "VALUES ('p1', 'gangnam-01', '환자', '010-1234-5678', 'minji@example.com', '1990-05-01', 1)"
        )
        an_hour_ago = f"{datetime.now(timezone.utc) - timedelta(hours=1):%Y-%m-%d %H:%M:%S}"
        conn.executemany(  # of the types the triggers enroll
            "INSERT INTO appointments (id, patient_id, clinic_id, type, status, scheduled_at, created_at) "
            "VALUES (?, 'p1', 'gangnam-01', ?, 'completed', ?, ?)",
            [(f"a-{kind}", kind, an_hour_ago, an_hour_ago) for kind in ("implant_surgery", "scaling")],
        )
        conn.executemany(  # each trigger's events keep coming
            "INSERT INTO appointment_events VALUES (?, ?, 'p1', 'gangnam-01', ?, ?)",
            [
                (f"e-{event}-{kind}", f"a-{kind}", event, an_hour_ago)
                for event in TRIGGER_EVENTS
                for kind in ("implant_surgery", "scaling")
            ],
        )
    _heartbeat(Path(env["AIRFLOW_HOME"]), "SchedulerJob", "DagProcessorJob", "TriggererJob")
    checked = _careflow(env, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "careflow_db"],
        ["ok", "workflows_dir"],
        ["ok", "careflow_messaging"],
        ["ok", "careflow_redis"],
        ["ok", "careflow_alerts"],
        ["ok", "careflow"],  # settings
        ["ok", "airflow"],
        ["ok", "airflow"],
        ["ok", "dags"],
    ]
    assert f"{examples} workflow(s) the DAG factory reads" in lines[1]
    active = sum(
        json.loads(path.read_text()).get("status", "active") == "active" for path in EXAMPLES.glob("*.json")
    )
    assert lines[5].endswith(
        "send_process on, prepare_nice 5, enrollment_lookback_minutes 60, allow_simulated_runs off"
    )
    assert lines[6].endswith(  # what the provider may see at once: the pool's slots by the connection's bound
        "pool careflow_messaging has 4 slot(s): up to 4 send task(s) at once, each with up to 50 request(s) "
        "in flight (careflow_messaging's max_concurrency): 200 at the provider at most"
    )
    assert lines[7].endswith("heartbeating: scheduler (host-a), dag processor (host-a), triggerer (host-a)")
    assert lines[8].endswith(f"{active} active workflow(s), each DAG parsed by Airflow and not paused")
    assert lines[2].endswith(f"the provider at {provider.url}: provider reachable, token accepted")
    assert lines[4].endswith("posts slack JSON to https://hooks.slack.com")  # not the webhook's secret path
    assert "secret-part" not in checked.stdout and "pw-secret" not in checked.stdout
    assert provider.token not in checked.stdout

    refused = _careflow({**env, "AIRFLOW_CONN_CAREFLOW_MESSAGING": _messaging(provider, "wrong")}, "check")
    assert refused.returncode == 2
    assert (
        f"problem  careflow_messaging  the provider at {provider.url}: provider refused the connection "
        "(unauthorized, HTTP 401)"
    ) in refused.stdout.splitlines()
    assert provider.messages() == []  # asked, never sent to

    _airflow(env, "pools", "set", "careflow_messaging", "-1", "unlimited")  # Airflow's pool without a limit
    unlimited = _careflow(env, "check", "--json")
    assert (
        "pool careflow_messaging has no limit on its slots: as many send tasks at once as Airflow runs, each "
        "with up to 50 request(s) in flight (careflow_messaging's max_concurrency)"
    ) in [f["text"] for f in json.loads(unlimited.stdout) if f["subject"] == "airflow"]


def test_what_keeps_careflow_from_working_is_named_with_what_to_do(home: dict[str, str]) -> None:
    with refusing_port() as port:
        env = {**home, "CAREFLOW_REDIS_URL": f"redis://:hidden@127.0.0.1:{port}/0"}
        checked = _careflow(env, "check", "--json")
    assert checked.returncode == 2, checked.stderr
    found = {f["subject"]: (f["verdict"], f["text"]) for f in json.loads(checked.stdout)}
    assert found["careflow_db"][0] == "problem"
    assert (
        "careflow's tables are at version 0, the code needs 6: run `careflow db upgrade`"
        in found["careflow_db"][1]
    )
    assert found["careflow_messaging"] == (
        "problem",
        "connection 'careflow_messaging' is not defined: add it (type http, host = provider base URL, "
        "password = bearer token), e.g. AIRFLOW_CONN_CAREFLOW_MESSAGING='http://:TOKEN@127.0.0.1:8025'",
    )
    assert found["careflow_redis"][0] == "problem" and f"127.0.0.1:{port}" in found["careflow_redis"][1]
    assert "hidden" not in checked.stdout
    assert found["careflow_alerts"] == ("warning", "not defined: alerts are only logged (docs/alerts.md)")
    airflow = [(f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "airflow"]
    assert airflow == [
        (
            "problem",
            "no pool careflow_messaging: Airflow never queues a send task without it; run `careflow setup`",
        ),
        (
            "problem",
            "no scheduler is running (none has ever run with this database): Airflow starts no run and "
            "queues no task; start `airflow scheduler`",
        ),
        (
            "problem",
            "no dag processor is running (none has ever run with this database): a workflow published from "
            "now on is not parsed, so never runs; start `airflow dag-processor`",
        ),
        (
            "warning",
            "no triggerer is running (none has ever run with this database): a wait careflow defers ends "
            "late: a due step's at the next scheduled run (with an alert), a breaker's cool-down five minutes "
            "after it (the task then sends on); start `airflow triggerer`",
        ),
    ]
    assert found["dags"] == (
        "ok",
        "no active workflow has a snapshot the DAG factory reads: no DAG to look for",
    )


def test_a_provider_in_plain_http_on_another_machine_is_warned(
    home: dict[str, str], provider: FakeProviderServer
) -> None:
    """The bearer token and the patients' messages would cross the network unencrypted; on this
    machine (a loopback address, localhost) nothing crosses it."""
    for url, warned in [
        ("http://:t@provider.invalid:8025", True),
        ("https://:t@provider.invalid", False),
        (_messaging(provider, provider.token), False),
        (_messaging(provider, provider.token).replace("127.0.0.1", "localhost"), False),
    ]:
        checked = _careflow({**home, "AIRFLOW_CONN_CAREFLOW_MESSAGING": url}, "check", "--json")
        said = [
            (f["verdict"], f["text"])
            for f in json.loads(checked.stdout)
            if f["subject"] == "careflow_messaging"
        ]
        plain = (
            "warning",
            "http://provider.invalid:8025 is plain HTTP to another machine: the bearer token and every "
            "message (its recipient and text) cross the network unencrypted; use the provider's https:// URL",
        )
        assert (plain in said) is warned, said
        assert len(said) == 1 + warned


def test_an_alerts_webhook_in_plain_http_on_another_machine_is_warned(home: dict[str, str]) -> None:
    """Its path (a chat webhook's secret) and headers (a receiver's key) would cross the network
    unencrypted; the warning names the host alone."""
    for url, warned in [
        ("http://hooks.invalid:8080/services/secret-path", True),
        ("https://hooks.invalid/services/secret-path", False),
        ("http://127.0.0.1:9/alerts", False),
    ]:
        conn = json.dumps({"conn_type": "http", "extra": {"webhook_url": url}})
        checked = _careflow({**home, "AIRFLOW_CONN_CAREFLOW_ALERTS": conn}, "check", "--json")
        said = [
            (f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "careflow_alerts"
        ]
        plain = (
            "warning",
            "http://hooks.invalid:8080 is plain HTTP to another machine: the webhook's URL (a chat "
            "webhook's path is its secret) and its headers cross the network unencrypted; use its https:// URL",
        )
        assert (plain in said) is warned, said
        assert len(said) == 1 + warned and "secret-path" not in checked.stdout


def test_careflow_settings_a_task_would_refuse_are_problems_before_it_does(home: dict[str, str]) -> None:
    env = {
        **home,
        "AIRFLOW__CAREFLOW__SEND_PROCESS": "flase",
        "AIRFLOW__CAREFLOW__ENROLLMENT_LOOKBACK_MINUTES": "2h",
        "AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS": "yes",
    }
    checked = _careflow(env, "check", "--json")
    assert checked.returncode == 2
    said = [
        (f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "careflow settings"
    ]
    assert said == [
        (
            "problem",
            "[careflow] send_process must be true or false, got 'flase': every action task (no message is "
            "sent) fails until it is mended",
        ),
        (
            "problem",
            "[careflow] enrollment_lookback_minutes must be a whole number of minutes from 0 to 10080 (a "
            "week), got '2h': every trigger task (nobody is enrolled) fails until it is mended",
        ),
        (
            "warning",
            "[careflow] allow_simulated_runs is on: a worker with this configuration follows a run whose conf "
            "asks for a simulated clock or a dry run (anyone who may trigger a DAG can write one), moving real "
            "executions on a made-up clock or recording messages as sent without sending them; turn it off "
            "(`careflow simulate` turns it on in its own process)",
        ),
    ]


def test_the_embedded_parts_with_workers_on_other_machines_are_warned(home: dict[str, str]) -> None:
    """The embedded default database is refused there; an SQLite URL given on purpose may serve
    workers that all run on one machine, so it is a warning, as breakers kept machine by machine are."""
    assert _careflow(home, "db", "upgrade").returncode == 0
    env = {**home, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CELERY__BROKER_URL": REDIS_URL}
    checked = _careflow(env, "check", "--json")
    said = [(f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "careflow_db"]
    url = home["CAREFLOW_DB_URL"]
    assert said[1:] == [
        (
            "warning",
            f"{url} (from CAREFLOW_DB_URL) is an SQLite file, and Airflow runs tasks with CeleryExecutor: a "
            "worker on another machine keeps a file of its own, and its own record of what was sent (a "
            "message could go out once from each); unless every worker runs on this machine, name the "
            "Postgres database they share (careflow_db or CAREFLOW_DB_URL)",
        )
    ]
    assert [
        (f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "careflow_redis"
    ] == [
        (
            "warning",
            "not set, and Airflow runs tasks with CeleryExecutor: each worker machine keeps its own circuit "
            "breakers (a provider outage is learnt, and waited out, machine by machine) and caches; set "
            "careflow_redis to share them",
        )
    ]
    local = _careflow(home, "check", "--json")
    assert [
        f["verdict"] for f in json.loads(local.stdout) if f["subject"] in ("careflow_db", "careflow_redis")
    ] == [
        "ok",
        "ok",
    ]


def test_a_relative_workflows_dir_setting_is_warned(home: dict[str, str]) -> None:
    """The dag processor would look for the snapshots in a directory of its own working directory."""
    where = Path(home["AIRFLOW_HOME"]).parent
    checked = _careflow(
        {**home, "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": "workflows"}, "check", "--json", cwd=where
    )
    said = [f["text"] for f in json.loads(checked.stdout) if f["subject"] == "workflows_dir"]
    assert said[0] == (
        "workflows is a relative path: the dag processor and each worker find it from their own working "
        "directory, `publish` from its own; set [careflow] workflows_dir to an absolute path "
        f"({where / 'workflows'} from here)"
    )
    absolute = _careflow(home, "check", "--json", cwd=where)
    assert not [f for f in json.loads(absolute.stdout) if "is a relative path" in f["text"]]


def test_a_workflows_dir_without_the_published_snapshots_is_one_problem(
    home: dict[str, str], tmp_path: Path
) -> None:
    """A typo in [careflow] workflows_dir, or a directory other than the one publish wrote to: one
    line naming the directory, where there was "publish it again" for each workflow."""
    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES))):
        done = _careflow(home, *argv)
        assert done.returncode == 0, done.stderr
    published = len(list(EXAMPLES.glob("*.json")))

    def said(env: dict[str, str], *argv: str) -> list[tuple[str, str, str]]:
        checked = _careflow(env, "check", "--json", *argv)
        assert checked.returncode == 2, checked.stderr
        found = json.loads(checked.stdout)
        return [(f["verdict"], f["subject"], f["text"]) for f in found if "snapshot" in f["text"]]

    typo = tmp_path / "workflow"
    assert said({**home, "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(typo)}) == [
        (
            "problem",
            "workflows_dir",
            f"{typo} does not exist, so it holds no snapshot of the {published} workflow(s) careflow_db has "
            f"published ({published - 1} active), and the DAG factory builds a DAG from a snapshot there "
            "alone: is [careflow] workflows_dir (AIRFLOW__CAREFLOW__WORKFLOWS_DIR) the directory "
            "`careflow workflows publish` wrote them to? If it is, publish them again",
        ),
        ("ok", "dags", "no active workflow has a snapshot the DAG factory reads: no DAG to look for"),
    ]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory", encoding="utf-8")
    [(_, _, text), _] = said({**home, "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(a_file)})
    assert text.startswith(f"{a_file} is not a directory, so it holds no snapshot of the {published}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    [(verdict, subject, text), _] = said(home, "--workflows-dir", str(elsewhere))
    assert (verdict, subject) == ("problem", "workflows_dir")
    assert text.startswith(f"{elsewhere} holds no snapshot of the {published} workflow(s)")
    assert "is --workflows-dir the directory" in text


def test_a_database_url_careflow_cannot_use_is_said_once(home: dict[str, str]) -> None:
    """Where careflow_db names no database careflow can use, its check says why; the clinic data's
    check, which reads that database too, does not say it again."""
    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES))):
        done = _careflow(home, *argv)
        assert done.returncode == 0, done.stderr
    elsewhere = Path(home["AIRFLOW_HOME"]).parent / "elsewhere"
    elsewhere.mkdir()
    checked = _careflow(
        {**home, "CAREFLOW_DB_URL": "sqlite:///careflow.db"}, "check", "--json", cwd=elsewhere
    )
    assert checked.returncode == 2, checked.stderr
    said = [(f["subject"], f["text"]) for f in json.loads(checked.stdout) if "careflow.db" in f["text"]]
    assert said == [
        (
            "careflow_db",
            "careflow_db: 'sqlite:///careflow.db' names a relative path, which each process (the "
            "scheduler, each worker, this command) would find from its own working directory: write the "
            f"absolute path, sqlite:///{elsewhere / 'careflow.db'}",
        )
    ]


def test_an_airflow_database_not_migrated_is_named_as_setup_names_it(tmp_path: Path) -> None:
    """At Airflow's default log level, which prints its own lines on stdout: ``--json`` stays JSON."""
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_env(home, tmp_path / "workflows", CAREFLOW_DB_URL=f"sqlite:///{tmp_path / 'careflow.db'}")
    env.pop("AIRFLOW__LOGGING__LOGGING_LEVEL")
    checked = _careflow(env, "check", "--json")
    assert checked.returncode == 2, checked.stderr
    found = {f["subject"]: (f["verdict"], f["text"]) for f in json.loads(checked.stdout)}
    assert found["airflow"] == (
        "problem",
        f"Airflow's metadata database (sqlite:///{home / 'airflow.db'}) is not migrated: run `airflow db "
        "migrate` with the same AIRFLOW_HOME and configuration, then run this again",
    )


@pytest.mark.airflow
def test_a_published_workflow_airflow_does_not_schedule_is_named(
    home: dict[str, str], tmp_path: Path
) -> None:
    """Published, but Airflow runs nothing of it: the dag processor has not parsed it (yet, or at all:
    not running, another dags folder), or someone paused its DAG."""
    import time
    import uuid

    from careflow.snapshots import snapshot_path

    graph = json.loads((EXAMPLES / "no-show-recovery.json").read_text())
    graph["id"] = workflow_id = f"check-{uuid.uuid4().hex[:8]}"
    dag_id = f"careflow__{workflow_id}"
    (tmp_path / "wf.json").write_text(json.dumps(graph, ensure_ascii=False))
    for argv in (("db", "upgrade"), ("workflows", "publish", str(tmp_path / "wf.json"))):
        done = _careflow(home, *argv)
        assert done.returncode == 0, done.stderr

    def dags() -> list[tuple[str, str]]:
        checked = _careflow(home, "check", "--json")
        return [(f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "dags"]

    assert dags() == [
        (
            "warning",
            f"workflow {workflow_id}: published under 60 s ago and not in Airflow's database yet: the dag "
            "processor parses careflow's DAG file every 30 s ([dag_processor] min_file_process_interval); "
            "run this again in a minute",
        )
    ]
    snapshot = snapshot_path(Path(home["AIRFLOW__CAREFLOW__WORKFLOWS_DIR"]), workflow_id)
    an_hour_ago = time.time() - 3600
    os.utime(snapshot, (an_hour_ago, an_hour_ago))
    assert dags() == [
        (
            "problem",
            f"workflow {workflow_id}: not in Airflow's database, so Airflow runs nothing of it: the dag "
            "processor has not parsed careflow's DAG file since it was published. Run `airflow "
            "dag-processor` (`airflow standalone` runs one) with [core] dags_folder holding "
            f"careflow_workflows.py (here {home['AIRFLOW__CORE__DAGS_FOLDER']}) and [careflow] "
            "workflows_dir as here",
        )
    ]

    _airflow(home, "dags", "reserialize")
    assert dags() == [("ok", "1 active workflow(s), each DAG parsed by Airflow and not paused")]
    _airflow(home, "dags", "pause", dag_id)
    assert dags() == [
        (
            "warning",
            f"workflow {workflow_id}: paused in Airflow, so no run is scheduled: unpause with the toggle in "
            f"Airflow's UI, or `airflow dags unpause DAG_ID` for {dag_id}",
        )
    ]


def test_a_component_that_stopped_heartbeating_is_named_with_its_last_heartbeat(home: dict[str, str]) -> None:
    last = _heartbeat(
        Path(home["AIRFLOW_HOME"]), "SchedulerJob", "DagProcessorJob", "TriggererJob", ago_s=600
    )
    _heartbeat(Path(home["AIRFLOW_HOME"]), "DagProcessorJob")  # a newer one took over
    checked = _careflow(home, "check", "--json")
    airflow = [(f["verdict"], f["text"]) for f in json.loads(checked.stdout) if f["subject"] == "airflow"]
    assert airflow[1:] == [
        ("ok", "heartbeating: dag processor (host-a)"),
        (
            "problem",
            f"no scheduler is running (its last heartbeat {last} UTC from host-a): Airflow starts no "
            "run and queues no task; start `airflow scheduler`",
        ),
        (
            "warning",
            f"no triggerer is running (its last heartbeat {last} UTC from host-a): a wait careflow "
            "defers ends late: a due step's at the next scheduled run (with an alert), a breaker's cool-down "
            "five minutes after it (the task then sends on); start `airflow triggerer`",
        ),
    ]


def _heartbeat(home: Path, *job_types: str, ago_s: float = 0) -> str:
    """Each of ``job_types`` running on host-a in Airflow's database of ``home``, its last heartbeat
    ``ago_s`` seconds ago, as the component writes it; that time as ``check`` says it."""
    from datetime import datetime, timedelta, timezone

    at = datetime.now(timezone.utc) - timedelta(seconds=ago_s)
    with closing(sqlite3.connect(home / "airflow.db")) as db, db:
        db.executemany(
            "INSERT INTO job (state, job_type, start_date, latest_heartbeat, hostname) "
            "VALUES ('running', ?, ?, ?, 'host-a')",
            [
                (job_type, at.strftime("%Y-%m-%d %H:%M:%S.%f"), at.strftime("%Y-%m-%d %H:%M:%S.%f"))
                for job_type in job_types
            ],
        )
    return f"{at:%Y-%m-%d %H:%M:%S}"


def test_a_trigger_whose_events_stopped_coming_is_named(
    home: dict[str, str], empty_db_url: str, tmp_path: Path
) -> None:
    """Nobody enrolled, and nothing said why: the clinic's sync stopped (or never started) writing
    the events an active workflow's trigger enrolls by."""
    from sqlalchemy import create_engine, insert, text

    from careflow.store import tables

    env = {**home, "CAREFLOW_DB_URL": empty_db_url}
    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES / "no-show-recovery.json"))):
        done = _careflow(env, *argv)
        assert done.returncode == 0, done.stderr
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(insert(tables.clinics).values(id="gangnam-01", name="강남", timezone="Asia/Seoul"))
        conn.execute(  # the appointment and the patient the events below name
            insert(tables.patients).values(
                id="p1", clinic_id="gangnam-01", name="환자", phone="010-1234-5678"
            )
        )
        at = datetime(2026, 3, 2, 1, tzinfo=timezone.utc)
        conn.execute(
            insert(tables.appointments).values(
                id="a1", patient_id="p1", clinic_id="gangnam-01", type="checkup", status="no_show",
                scheduled_at=at, created_at=at,
            )
        )  # fmt: skip

    def told() -> list[tuple[str, str, str]]:
        checked = _careflow(env, "check", "--json")
        found = json.loads(checked.stdout)
        return [
            (f["verdict"], f["subject"], f["text"]) for f in found if f["subject"].startswith("workflow ")
        ]

    assert told() == [
        (
            "warning",
            "workflow no-show-recovery",
            "the clinic's appointment_events hold no appointment_no_show event of clinic gangnam-01 yet: "
            "the trigger enrolls nobody until one comes",
        )
    ]
    events = tables.appointment_events
    now = datetime.now(timezone.utc)
    ten_days_ago, nine_days_ago = now - timedelta(days=10, minutes=5), now - timedelta(days=9, minutes=5)
    with engine.begin() as conn:
        for at, event in ((ten_days_ago, "appointment_no_show"), (nine_days_ago, "appointment_completed")):
            conn.execute(
                insert(events).values(
                    id=f"e-{event}",
                    appointment_id="a1",
                    patient_id="p1",
                    clinic_id="gangnam-01",
                    type=event,
                    occurred_at=at,
                )
            )
    assert told() == [  # no event of any kind for over a week: the clinic's sync stopped
        (
            "warning",
            "workflow no-show-recovery",
            f"the newest event of clinic gangnam-01 careflow reads is from {nine_days_ago:%Y-%m-%d %H:%M} UTC, "
            "9 days ago: its workflows enroll nobody until events come again. If the clinic has had "
            "appointments since, its system no longer writes them where careflow reads (its sync, the view "
            "careflow reads)",
        )
    ]
    # Events come again, if no no-show among them (a week without one is no sign of anything); one
    # written as a clinic's system writes it: local time, with its offset.
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO appointment_events (id, appointment_id, patient_id, clinic_id, type, occurred_at) "
                "VALUES ('e-2', 'a2', 'p1', 'gangnam-01', 'appointment_completed', :at)"
            ),
            {"at": now.astimezone(timezone(timedelta(hours=9))).isoformat(timespec="seconds")},
        )
    assert told() == []
    engine.dispose()


def test_executions_held_in_a_workflow_published_paused_are_counted(
    home: dict[str, str], tmp_path: Path
) -> None:
    """Publishing a workflow paused stops it; the patients still in it wait, and check says how many."""
    from sqlalchemy import create_engine, insert, select

    from careflow.store import tables

    for argv in (("db", "upgrade"), ("workflows", "publish", str(EXAMPLES / "implant-aftercare.json"))):
        done = _careflow(home, *argv)
        assert done.returncode == 0, done.stderr
    engine = create_engine(home["CAREFLOW_DB_URL"])
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for n, status in enumerate(("waiting", "running", "completed", "exited")):
            conn.execute(
                insert(tables.executions).values(
                    id=f"x{n}", workflow_id="implant-aftercare", version=1, trigger_event_id=f"e{n}",
                    patient_id=f"p{n}", appointment_id=f"a{n}", clinic_id="gangnam-01", status=status,
                    enrolled_at=now, event_at=now, updated_at=now,
                )
            )  # fmt: skip
    engine.dispose()

    def held() -> list[tuple[str, str]]:
        found = json.loads(_careflow(home, "check", "--json").stdout)
        return [
            (f["verdict"], f["text"])
            for f in found
            if f["subject"] == "workflow implant-aftercare" and "in flight" in f["text"]
        ]

    assert held() == []  # active: its runs move them
    paused = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))
    paused["status"] = "paused"
    (tmp_path / "paused.json").write_text(json.dumps(paused, ensure_ascii=False), encoding="utf-8")
    done = _careflow(home, "workflows", "publish", str(tmp_path / "paused.json"))
    assert done.returncode == 0, done.stderr
    assert held() == [
        (
            "warning",
            "paused since version 2, with 2 execution(s) in flight: Airflow runs nothing of it, so they "
            "wait where they are until a version is published active (a message then more than its "
            "max_lateness past due is recorded expired)",
        )
    ]

    # Archived, it is retired: publish ends them (and says so); any left is said to end at the next run.
    (tmp_path / "archived.json").write_text(
        json.dumps({**paused, "status": "archived"}, ensure_ascii=False), encoding="utf-8"
    )
    done = _careflow(home, "workflows", "publish", str(tmp_path / "archived.json"))
    assert done.returncode == 0, done.stderr
    assert "  ended 2 execution(s) still in flight: the workflow is archived\n" in done.stdout
    assert held() == []
    engine = create_engine(home["CAREFLOW_DB_URL"])
    with engine.begin() as conn:
        x = tables.executions
        assert dict(conn.execute(select(x.c.id, x.c.exit_reason).where(x.c.status == "exited")).all()) == {
            "x0": "workflow_archived_in_version_3",
            "x1": "workflow_archived_in_version_3",
            "x3": None,
        }
        conn.execute(x.update().where(x.c.id == "x0").values(status="waiting"))  # a run in flight moved it
    engine.dispose()
    assert held() == [
        (
            "warning",
            "archived since version 3, with 1 execution(s) in flight: Airflow runs nothing of it, and "
            "the next run of an active workflow ends them as archived (publishing it archived again "
            "ends them now)",
        )
    ]


def test_a_draft_published_over_the_active_version_is_said_to_have_stopped_it(
    home: dict[str, str], tmp_path: Path
) -> None:
    """The builder exports a workflow being edited as a draft: published, it stopped the workflow
    (publish warned of it). check says so as long as it lasts, nothing in flight or not; not of a
    draft over a paused version, stopped on purpose."""
    document = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))

    def publish(status: str, name: str) -> None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**document, "status": status, "name": name}, ensure_ascii=False), "utf-8")
        done = _careflow(home, "workflows", "publish", str(path))
        assert done.returncode == 0, done.stderr

    def said() -> list[str]:
        found = json.loads(_careflow(home, "check", "--json").stdout)
        return [
            f["text"]
            for f in found
            if f["subject"] == "workflow implant-aftercare" and " since version " in f["text"]
        ]

    assert _careflow(home, "db", "upgrade").returncode == 0
    publish("active", "v1")
    assert said() == []
    publish("draft", "v2")
    publish("draft", "v3")  # a draft over a draft: the active version before them still counts
    assert said() == [
        "draft since version 3, published over active version 1: Airflow runs nothing of it (the "
        "builder exports a workflow being edited as a draft); publish it with status active to run it again"
    ]
    publish("paused", "v4")
    publish("draft", "v5")
    assert said() == []


def test_patients_no_action_can_reach_are_said_as_the_clinic_data_is_now(home: dict[str, str]) -> None:
    """publish told it (ACTION_RECIPIENT_UNSEEN); check tells it again while the clinic's data
    leaves every patient without an address the workflow's actions can send to."""
    welcome = EXAMPLES / "new-patient-welcome.json"  # welcome_kakao (kakao), welcome_email (email)
    assert _careflow(home, "db", "upgrade").returncode == 0
    assert _careflow(home, "workflows", "publish", str(welcome)).returncode == 0

    def said() -> list[str]:
        found = json.loads(_careflow(home, "check", "--json").stdout)
        return [
            f["text"].split(":")[0] + ": " + f["text"].split(". The messages of ")[1].split(" would")[0]
            for f in found
            if f["subject"] == "workflow new-patient-welcome"
            and f["text"].startswith("ACTION_RECIPIENT_UNSEEN")
        ]

    with sqlite3.connect(home["CAREFLOW_DB_URL"].removeprefix("sqlite:///")) as conn:
        conn.execute("INSERT INTO clinics (id, name, timezone) VALUES ('gangnam-01', '강남', 'Asia/Seoul')")
        conn.execute(
            "INSERT INTO patients (id, clinic_id, name, phone, email) "
            "VALUES ('p1', 'gangnam-01', '환자', '02-555-0101', 'minji@example.com')"
        )
    assert said() == ["ACTION_RECIPIENT_UNSEEN: action welcome_kakao (kakao)"]
    with sqlite3.connect(home["CAREFLOW_DB_URL"].removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE patients SET phone = '010-1234-5678'")
    assert said() == []


@pytest.mark.redis
def test_celery_workers_are_asked_on_the_broker(home: dict[str, str]) -> None:
    """With the CeleryExecutor only a worker runs what the scheduler queues, and workers do not
    heartbeat in Airflow's database: they are pinged on the broker (tests/e2e sees them answer)."""
    from redis.connection import parse_url

    db = int(parse_url(REDIS_URL).get("db", 0)) + 7  # a database of its own: no worker listens there
    broker = REDIS_URL.rsplit("/", 1)[0] + f"/{db}"
    celery = {**home, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CELERY__BROKER_URL": broker}
    # At the level a deployment logs at: Airflow's Celery module warns on stdout as it is imported,
    # which must not reach --json's output.
    celery["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"

    def airflow(env: dict[str, str]) -> list[tuple[str, str]]:
        checked = _careflow(env, "check", "--json")
        found = json.loads(checked.stdout)
        return [
            (f["verdict"], f["text"]) for f in found if f["subject"] == "airflow" and "Celery" in f["text"]
        ]

    assert airflow(celery) == [
        (
            "problem",
            f"no Celery worker answered on the broker {broker} within 2 s: the scheduler queues tasks that "
            "no worker runs; start `airflow celery worker`",
        )
    ]
    with refusing_port() as port:
        refusing = f"redis://:pw-secret@127.0.0.1:{port}/0"
        (verdict, said) = airflow({**celery, "AIRFLOW__CELERY__BROKER_URL": refusing})[0]
    assert verdict == "problem"
    assert said.startswith(f"the Celery broker redis://:**@127.0.0.1:{port}/0 cannot be reached (")
    assert said.endswith("): no task reaches a worker; check [celery] broker_url and the broker")
    assert airflow(home) == []  # the LocalExecutor: no broker to ask
