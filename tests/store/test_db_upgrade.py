"""``careflow db upgrade``: careflow's tables, the clinic tables of docs/contracts.md §2, idempotent, views respected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine

from careflow.cli import main
from careflow.store import tables
from careflow.store.migrations import MIGRATIONS, upgrade

#: docs/contracts.md §2, column for column.
CLINIC_COLUMNS = {
    "clinics": {"id", "name", "phone", "timezone"},
    "patients": {
        "id",
        "clinic_id",
        "name",
        "phone",
        "email",
        "birth_date",
        "timezone",
        "consent_messages",
        "consent_marketing",
        "consent_night_marketing",
        "attributes",
    },
    "appointments": {
        "id",
        "patient_id",
        "clinic_id",
        "type",
        "status",
        "scheduled_at",
        "created_at",
        "completed_at",
        "attributes",
    },
    "appointment_events": {"id", "appointment_id", "patient_id", "clinic_id", "type", "occurred_at"},
}
CAREFLOW_TABLES = {
    "careflow_schema_migrations",
    "careflow_workflow_versions",
    "careflow_enrollment_watermarks",
    "careflow_executions",
    "careflow_steps",
    "careflow_messages",
}


def test_upgrade_creates_careflow_and_clinic_tables(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    latest = MIGRATIONS[-1].version
    assert f"careflow tables at version {latest}" in out
    assert "created clinic tables: clinics, patients, appointments, appointment_events" in out

    engine = create_engine(empty_db_url)
    insp = inspect(engine)
    names = set(insp.get_table_names())
    assert names >= CAREFLOW_TABLES
    for table, columns in CLINIC_COLUMNS.items():
        assert {c["name"] for c in insp.get_columns(table)} == columns, table
    # the consent defaults of §8 hold when a row says nothing
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patients (id, clinic_id, name) VALUES ('p1', 'c1', 'x')"))
        row = conn.execute(
            text("SELECT consent_messages, consent_marketing, consent_night_marketing FROM patients")
        ).one()
    assert tuple(bool(v) for v in row) == (True, False, False)
    engine.dispose()


def test_second_upgrade_applies_nothing(empty_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    first = upgrade()
    assert first.applied == [m.version for m in MIGRATIONS]
    second = upgrade()
    assert second.applied == []
    assert second.clinic_tables_created == []
    assert second.current == first.current == MIGRATIONS[-1].version
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert "applied: none (up to date)" in out and "created clinic tables" not in out
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM careflow_schema_migrations")).scalar()
    engine.dispose()
    assert count == len(MIGRATIONS)


def test_a_database_at_version_1_gets_the_open_steps_index(empty_db_url: str) -> None:
    upgrade()
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:  # as a database upgraded before version 2 shipped
        conn.execute(text("DROP INDEX ix_steps_open"))
        conn.execute(text("DELETE FROM careflow_schema_migrations WHERE version > 1"))
    assert "ix_steps_open" not in {i["name"] for i in inspect(engine).get_indexes("careflow_steps")}

    report = upgrade()

    assert report.applied == [m.version for m in MIGRATIONS if m.version > 1]
    index = next(i for i in inspect(engine).get_indexes("careflow_steps") if i["name"] == "ix_steps_open")
    assert index["column_names"] == ["workflow_id", "node_id", "id"]
    engine.dispose()


def test_a_database_of_version_3_gets_the_problem_indexes(empty_db_url: str) -> None:
    upgrade()
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:  # as a database upgraded before version 4 shipped
        conn.execute(text("DROP INDEX ix_steps_problems"))
        conn.execute(text("DROP INDEX ix_messages_problems"))
        conn.execute(text("DELETE FROM careflow_schema_migrations WHERE version > 3"))
    assert upgrade().applied == [4, 5, 6]
    inspector = inspect(engine)
    steps = {i["name"]: i["column_names"] for i in inspector.get_indexes("careflow_steps")}
    messages = {i["name"]: i["column_names"] for i in inspector.get_indexes("careflow_messages")}
    assert steps["ix_steps_problems"] == ["workflow_id", "node_id", "status"]
    assert messages["ix_messages_problems"] == ["workflow_id", "node_id", "status"]
    engine.dispose()


def test_a_database_of_version_4_gets_the_waiting_steps_index_in_due_order(empty_db_url: str) -> None:
    upgrade()
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:  # as a database upgraded before version 5 shipped
        conn.execute(text("DROP INDEX ix_steps_due"))
        conn.execute(
            text("CREATE INDEX ix_steps_due ON careflow_steps (workflow_id, node_id, status, due_at)")
        )
        conn.execute(text("DELETE FROM careflow_schema_migrations WHERE version > 4"))
    assert upgrade().applied == [5, 6]
    steps = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("careflow_steps")}
    assert steps["ix_steps_due"] == ["workflow_id", "status", "due_at", "node_id"]
    assert upgrade().applied == []
    engine.dispose()


def test_a_database_of_version_5_gets_executions_updated_in_place(empty_db_url: str) -> None:
    upgrade()
    engine = create_engine(empty_db_url)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:  # as a database upgraded before version 6 shipped
        conn.execute(text("DROP INDEX ix_executions_workflow_enrolled"))
        conn.execute(
            text("CREATE INDEX ix_executions_workflow_status ON careflow_executions (workflow_id, status)")
        )
        if postgres:
            conn.execute(text("ALTER TABLE careflow_executions RESET (fillfactor)"))
        conn.execute(text("DELETE FROM careflow_schema_migrations WHERE version > 5"))
    assert upgrade().applied == [6]
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("careflow_executions")}
    assert "ix_executions_workflow_status" not in indexes
    assert indexes["ix_executions_workflow_enrolled"] == ["workflow_id", "enrolled_at"]
    if postgres:
        with engine.connect() as conn:
            options = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'careflow_executions'")
            ).scalar()
        assert options == ["fillfactor=50"]
    assert upgrade().applied == []
    engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)
def test_settling_a_batch_of_executions_updates_them_in_place(empty_db_url: str) -> None:
    """What a node's batch does to its executions: every row updated on its own page, no index touched."""
    import time
    from datetime import datetime, timedelta, timezone

    upgrade()
    engine = create_engine(empty_db_url)
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    rows = [
        {
            "id": f"x{i:04d}",
            "workflow_id": "w",
            "version": 1,
            "trigger_event_id": f"evt-{i}",
            "patient_id": f"p{i}",
            "appointment_id": f"a{i}",
            "clinic_id": "c",
            "status": "running",
            "enrolled_at": now,
            "event_at": now,
            "updated_at": now,
        }
        for i in range(1000)
    ]
    with engine.begin() as conn:
        conn.execute(tables.executions.insert(), rows)
    later = now + timedelta(minutes=5)
    with engine.begin() as conn:  # as settle_executions writes an ended batch
        conn.execute(
            tables.executions.update()
            .where(tables.executions.c.workflow_id == "w")
            .values(status="completed", updated_at=later, finished_at=later)
        )
    engine.dispose()  # its backend reports its counts as it ends
    reader = create_engine(empty_db_url)
    deadline = time.monotonic() + 10
    with reader.connect() as conn:
        while True:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            updated, in_place = conn.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'careflow_executions'"
                )
            ).one()
            if updated == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    reader.dispose()
    # Each new version takes a line pointer too: in a page of the smallest rows a few do not fit
    # in the free half (about one in ten here; none in the benchmark's). None did before.
    assert updated == 1000 and in_place >= 800


# SQLite keeps text of any length in a VARCHAR column: only Postgres can lose a long id.
@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)
def test_clinic_and_provider_ids_of_any_length_are_kept(empty_db_url: str) -> None:
    from datetime import datetime, timezone

    upgrade()
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:  # as a database upgraded before version 3 shipped
        for table, column, width in (
            ("careflow_executions", "trigger_event_id", 64),
            ("careflow_executions", "patient_id", 64),
            ("careflow_executions", "appointment_id", 64),
            ("careflow_messages", "patient_id", 64),
            ("careflow_messages", "provider_id", 128),
        ):
            conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE VARCHAR({width})"))
        conn.execute(text("DELETE FROM careflow_schema_migrations WHERE version > 2"))
    assert upgrade().applied == [3, 4, 5, 6]
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    event, patient = "evt-" + "e" * 90, "pat-" + "p" * 90  # a clinic's own ids, through its views
    with engine.begin() as conn:
        conn.execute(
            tables.executions.insert().values(
                id="x1",
                workflow_id="w",
                version=1,
                trigger_event_id=event,
                patient_id=patient,
                appointment_id="apt-" + "a" * 90,
                clinic_id="c",
                status="running",
                enrolled_at=now,
                event_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            tables.messages.insert().values(
                idempotency_key="k1",
                execution_id="x1",
                workflow_id="w",
                node_id="a1",
                version=1,
                channel="sms",
                purpose="care",
                patient_id=patient,
                status="sent",
                provider_id="msg-" + "9" * 300,
                due_at=now,
                updated_at=now,
            )
        )
    with engine.connect() as conn:
        stored = conn.execute(select(tables.messages.c.provider_id)).scalar()
    engine.dispose()
    assert stored == "msg-" + "9" * 300


def test_existing_clinic_table_and_view_are_left_alone(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clinic's own table and view are not changed; the columns careflow reads that they lack are
    said, by ``db upgrade`` (a warning: careflow's own tables are ready) and by every run (refused)."""
    from careflow.exceptions import ConfigurationError
    from careflow.store.migrations import check_ready

    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        # a clinic's own schema: a table careflow would have created differently, and a view
        conn.execute(text("CREATE TABLE clinic_people (pid TEXT, clinic TEXT, full_name TEXT)"))
        conn.execute(text("INSERT INTO clinic_people VALUES ('p1', 'c1', 'Kim')"))
        conn.execute(
            text(
                "CREATE VIEW patients AS SELECT pid AS id, clinic AS clinic_id, full_name AS name, "
                "NULL AS phone FROM clinic_people"
            )
        )
        conn.execute(text("CREATE TABLE clinics (id TEXT PRIMARY KEY, name TEXT, legacy_code TEXT)"))
        conn.execute(text("INSERT INTO clinics VALUES ('c1', 'Gangnam', 'G-01')"))
    report = upgrade()
    assert report.clinic_tables_created == ["appointments", "appointment_events"]
    lacking = (
        "the clinic's data lacks columns careflow reads (docs/contracts.md §2): clinics has no phone, "
        "timezone; patients has no email, birth_date, timezone, consent_messages, consent_marketing, "
        "consent_night_marketing, attributes; add them, or map the clinic's own columns in the view "
        "careflow reads (a constant where it has none, for example false AS consent_marketing)"
    )
    assert report.clinic_problems == [lacking]
    with pytest.raises(ConfigurationError) as refused:
        check_ready()
    assert str(refused.value) == lacking

    insp = inspect(engine)
    assert "patients" in insp.get_view_names()
    assert "patients" not in insp.get_table_names()
    assert {c["name"] for c in insp.get_columns("patients")} == {"id", "clinic_id", "name", "phone"}
    assert {c["name"] for c in insp.get_columns("clinics")} == {"id", "name", "legacy_code"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM patients")).scalar() == "Kim"
        assert conn.execute(text("SELECT legacy_code FROM clinics")).scalar() == "G-01"
    engine.dispose()
    assert main(["db", "upgrade"]) == 0
    out, err = capsys.readouterr()
    assert "created clinic tables" not in out
    assert err == f"careflow: warning: {lacking}\n"


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)  # Postgres folds unquoted names itself
def test_a_clinic_table_named_in_other_letters_is_the_one_careflow_reads_on_sqlite(empty_db_url: str) -> None:
    """SQLite's names are not case-sensitive: a clinic's ``Clinics`` is the ``clinics`` careflow's
    statements read. ``db upgrade`` tried to create ``clinics`` beside it ("unexpected error:
    table clinics already exists")."""
    from careflow.store.db import get_engine

    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE Clinics (ID TEXT PRIMARY KEY, Name TEXT, Phone TEXT, TimeZone TEXT)"))
        conn.execute(text("INSERT INTO Clinics VALUES ('c1', '강남', NULL, 'Asia/Seoul')"))
        conn.execute(text("CREATE VIEW Patients AS SELECT 'p1' AS ID, 'c1' AS Clinic_Id, 'Kim' AS Name"))
    engine.dispose()
    report = upgrade()
    assert report.clinic_tables_created == ["appointments", "appointment_events"]
    assert report.clinic_problems == [
        "the clinic's data lacks columns careflow reads (docs/contracts.md §2): patients has no phone, "
        "email, birth_date, timezone, consent_messages, consent_marketing, consent_night_marketing, "
        "attributes; add them, or map the clinic's own columns in the view careflow reads (a constant "
        "where it has none, for example false AS consent_marketing)"
    ]
    with get_engine().connect() as conn:
        assert conn.execute(select(tables.clinics.c.name)).scalar_one() == "강남"


def test_check_ready_refuses_an_unmigrated_database(empty_db_url: str) -> None:
    from careflow.exceptions import ConfigurationError
    from careflow.store.migrations import check_ready

    with pytest.raises(ConfigurationError, match="careflow db upgrade"):
        check_ready()
    upgrade()
    check_ready()


def test_tables_a_newer_careflow_upgraded_are_refused(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release rolled back after its `careflow db upgrade` (or a worker left on the old one): the
    older careflow neither runs a workflow on those tables nor calls them upgraded."""
    from datetime import datetime, timezone

    from careflow.exceptions import ConfigurationError
    from careflow.store.db import database_name, get_engine
    from careflow.store.migrations import check_ready

    upgrade()
    latest = MIGRATIONS[-1].version
    with get_engine().begin() as conn:
        conn.execute(
            tables.schema_migrations.insert().values(
                version=latest + 1, description="from a newer careflow", applied_at=datetime.now(timezone.utc)
            )
        )
    with pytest.raises(ConfigurationError) as refused:
        check_ready()
    assert str(refused.value) == (
        f"careflow's tables in {database_name(get_engine())} are at version {latest + 1}, newer than "
        f"this careflow knows (up to {latest}): a newer careflow upgraded them. Run that careflow (or a "
        "newer one) in every Airflow component; careflow never downgrades its tables"
    )

    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert f"are at version {latest + 1}, newer than this careflow knows" in err
    assert err.rstrip().endswith("careflow never downgrades its tables; nothing was changed")
    with get_engine().connect() as conn:
        versions = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    assert sorted(versions) == [m.version for m in MIGRATIONS] + [latest + 1]


def test_metadata_and_migrations_agree(empty_db_url: str) -> None:
    """Every careflow table of the metadata is created by a migration (none forgotten), column for column."""
    assert {t.name for t in tables.CAREFLOW_TABLES} == CAREFLOW_TABLES
    assert {t.name for t in tables.CLINIC_TABLES} == set(CLINIC_COLUMNS)

    upgrade()
    engine = create_engine(empty_db_url)
    insp = inspect(engine)
    assert set(insp.get_table_names()) >= CAREFLOW_TABLES
    for table in tables.CAREFLOW_TABLES:
        columns = {c["name"] for c in insp.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        named = {i.name for i in table.indexes}
        assert named <= {i["name"] for i in insp.get_indexes(table.name)}, table.name
    engine.dispose()


def test_concurrent_upgrades_both_succeed(empty_db_url: str) -> None:
    """Several services may run ``careflow db upgrade`` as they start: each migration is applied once.

    Each migration is its own transaction under the lock, so which service applies which one
    depends on who gets the lock first; none is applied twice and none is skipped.
    """
    import threading

    from careflow.store.db import get_engine

    barrier = threading.Barrier(3)
    reports: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            reports.append(upgrade(get_engine(empty_db_url)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(reports) == 3
    assert sorted(v for r in reports for v in r.applied) == [m.version for m in MIGRATIONS]
    assert all(r.current == MIGRATIONS[-1].version for r in reports)
    created = [name for r in reports for name in r.clinic_tables_created]
    assert sorted(created) == sorted(CLINIC_COLUMNS)
    with get_engine(empty_db_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM careflow_schema_migrations")).scalar() == len(
            MIGRATIONS
        )


def test_a_failed_statement_names_the_statement_not_the_values(engine) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    row = {"id": "p-hidden", "clinic_id": "c1", "name": "Kim Minji", "phone": "+821055501234"}
    with engine.begin() as conn:
        conn.execute(insert(tables.patients).values(**row))
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(insert(tables.patients).values(**row))  # the same id again
    text_ = str(caught.value)
    assert "patients" in text_ and "Kim Minji" not in text_ and "+821055501234" not in text_


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # materialized views are Postgres's
def test_a_materialized_view_under_a_clinic_tables_name_is_left_alone(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE clinic_people (pid TEXT, clinic TEXT, full_name TEXT)"))
        conn.execute(
            text(
                "CREATE MATERIALIZED VIEW patients AS SELECT pid AS id, clinic AS clinic_id FROM clinic_people"
            )
        )
    try:
        report = upgrade()
        assert "patients" not in report.clinic_tables_created
        assert "patients" in inspect(engine).get_materialized_view_names()
    finally:
        with engine.begin() as conn:  # the next test's reset drops tables by name
            conn.execute(text("DROP MATERIALIZED VIEW IF EXISTS patients"))
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # schemas are Postgres's
def test_clinic_tables_in_a_later_schema_of_the_search_path_are_found(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # careflow's tables in a schema of their own, the clinic's in theirs: a role whose
    # search_path is `careflow, clinic`. An empty `patients` created in the first would hide the
    # clinic's from every statement careflow runs.
    from careflow.store.db import dispose_engines, get_engine
    from careflow.store.migrations import check_ready

    admin = create_engine(empty_db_url)
    with admin.begin() as conn:
        conn.execute(text("CREATE SCHEMA clinic"))
        conn.execute(text("CREATE SCHEMA careflow"))
        in_clinic = conn.execution_options(schema_translate_map={None: "clinic"})
        for table in tables.CLINIC_TABLES:
            table.create(in_clinic)
        in_clinic.execute(tables.clinics.insert().values(id="c1", name="강남", timezone="Asia/Seoul"))
    url = f"{empty_db_url}?options=-csearch_path%3Dcareflow,clinic"
    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    dispose_engines()
    try:
        assert upgrade().clinic_tables_created == []
        check_ready(get_engine(url))  # finds the clinic's ids, as text
        with get_engine(url).connect() as conn:
            assert conn.execute(select(tables.clinics.c.name)).scalar_one() == "강남"
        placed = inspect(admin)
        assert set(placed.get_table_names(schema="careflow")) == CAREFLOW_TABLES
        assert set(placed.get_table_names(schema="clinic")) == set(CLINIC_COLUMNS)
        assert placed.get_table_names(schema="public") == []
    finally:
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text("DROP SCHEMA clinic CASCADE"))
            conn.execute(text("DROP SCHEMA careflow CASCADE"))
        admin.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # roles are Postgres's
@pytest.mark.parametrize(
    ("granted", "refusal"),
    [("USAGE", "permission denied for schema public"), (None, "no schema has been selected to create in")],
)
def test_a_role_that_may_not_create_tables_is_told_what_to_grant(
    empty_db_url: str,
    granted: str | None,
    refusal: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Postgres 15 on: only the database's owner creates in its schema public.
    setup = ["REVOKE ALL ON SCHEMA public FROM PUBLIC"]
    if granted:
        setup.append(f"GRANT {granted} ON SCHEMA public TO {{role}}")
    with _as_new_role(empty_db_url, monkeypatch, *setup) as (role, admin):
        assert main(["db", "upgrade"]) == 2
        error = capsys.readouterr().err
        assert f"the role {role} may not create or change careflow's tables" in error
        assert refusal in error
        assert f"GRANT USAGE, CREATE ON SCHEMA public TO {role}" in error

        with admin.begin() as conn:  # as it says
            conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'))
        assert main(["db", "upgrade"]) == 0


@contextmanager
def _as_new_role(url: str, monkeypatch: pytest.MonkeyPatch, *setup: str) -> Iterator[tuple[str, Engine]]:
    """careflow connecting (``CAREFLOW_DB_URL``) as a new login role of the database at ``url``:
    the role's name and an engine of ``url``'s own role to grant with. ``setup`` runs first as that
    role (``{role}`` in it names the new one). The role and what it owns are dropped at the end."""
    import uuid

    from sqlalchemy.engine import make_url

    from careflow.store.db import dispose_engines

    role = f"careflow_app_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        for statement in setup:
            conn.execute(text(statement.format(role=f'"{role}"')))
    monkeypatch.setenv(
        "CAREFLOW_DB_URL", make_url(url).set(username=role).render_as_string(hide_password=False)
    )
    dispose_engines()
    try:
        yield role, admin
    finally:
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # roles are Postgres's
def test_a_role_without_privileges_on_the_tables_is_told_what_to_grant(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tables upgraded by their owner, the tasks and the commands run as another role that was
    granted nothing on them: every command names the database, the role and the grants, the API's
    answer says what kind of problem it is; granted as it says, the role works."""
    import re

    from careflow.airflow.api import _listing_problem
    from careflow.publishing import read_workflows

    listing = ["workflows", "list", "--json", "--workflows-dir", str(tmp_path)]
    # USAGE on the schema is every role's where public is as Postgres makes it: not the point here.
    usage = "GRANT USAGE ON SCHEMA public TO {role}"
    with _as_new_role(db_url, monkeypatch, usage) as (role, admin):
        assert main(listing) == 2
        error = capsys.readouterr().err
        assert f"refused the role {role}: permission denied for table careflow_workflow_versions: " in error
        assert _listing_problem(read_workflows(workflows_dir=tmp_path).database_error) == (
            "careflow's database refused the api-server's role: the api-server's log says what to grant"
        )
        grants = re.findall(r"GRANT [A-Z, ]+ ON ALL \w+ IN SCHEMA public TO \w+", error)
        assert grants == [
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ]
        with admin.begin() as conn:  # as it says
            for grant in grants:
                conn.execute(text(grant))
        assert main(listing) == 0
        assert capsys.readouterr().err == ""
        assert main(["metrics", "--no-airflow"]) == 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # roles are Postgres's
def test_a_role_the_clinics_view_refuses_is_told_to_ask_for_that_view_not_careflows_tables(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """careflow's role granted its own tables, the clinic's patients a view of another owner's that
    grants it nothing (the clinic's team forgot): the error and the alert name the view and the
    one GRANT it needs; they told to grant careflow's tables, which it had. Granted, it reads."""
    from sqlalchemy.exc import DBAPIError

    from careflow.store.db import database_unusable, get_engine

    with create_engine(db_url).begin() as conn:  # the clinic's own view of its patients
        conn.execute(text("ALTER TABLE patients RENAME TO clinic_people"))
        conn.execute(text("CREATE VIEW patients AS SELECT * FROM clinic_people"))
    granted = (
        "GRANT USAGE ON SCHEMA public TO {role}",  # as Postgres makes public, or an earlier test left it
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        "REVOKE ALL ON patients FROM {role}",
    )
    try:
        with _as_new_role(db_url, monkeypatch, *granted) as (role, admin):
            with pytest.raises(DBAPIError) as refused, get_engine().connect() as conn:
                conn.execute(select(tables.patients)).all()
            said = (
                f"careflow's database {_named_as(db_url, role)} (from CAREFLOW_DB_URL) refused the "
                f"role {role} the clinic's patients"
            )
            grant = f"as the owner of patients: GRANT SELECT ON patients TO {role}"
            assert database_unusable(refused.value) == (
                f"{said}: permission denied for view patients: careflow reads the clinic's four tables "
                f"or views; {grant}"
            )
            assert database_unusable(refused.value, driver_message=False) == (  # the alert's words
                f"{said}: careflow reads the clinic's four tables or views; {grant}"
            )
            with admin.begin() as conn:  # as it says
                conn.execute(text(f"GRANT SELECT ON patients TO {role}"))
            with get_engine().connect() as conn:
                assert conn.execute(select(tables.patients)).all() == []
    finally:
        with create_engine(db_url).begin() as conn:
            conn.execute(text("DROP VIEW patients"))
            conn.execute(text("ALTER TABLE clinic_people RENAME TO patients"))


def _named_as(url: str, role: str) -> str:
    """``url`` as careflow names it when it connects as ``role``: the driver spelt out, no password."""
    from sqlalchemy.engine import make_url

    from careflow.store.db import database_name

    return database_name(create_engine(make_url(url).set(username=role)))


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # schemas' privileges are Postgres's
def test_a_role_that_may_not_use_the_schema_is_not_told_the_tables_are_missing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``REVOKE ALL ON SCHEMA public FROM PUBLIC`` (a hardening guide's advice) and nothing granted
    back: careflow's tables look missing to the role, and `careflow db upgrade` as their owner
    changes nothing. The commands and each run's readiness check say which grant is missing."""
    from sqlalchemy.engine import make_url

    from careflow.airflow.api import SCHEMA_REFUSED, _listing_problem
    from careflow.exceptions import ConfigurationError
    from careflow.publishing import read_workflows
    from careflow.store.db import get_engine
    from careflow.store.migrations import check_ready

    listing = ["workflows", "list", "--workflows-dir", str(tmp_path)]
    no_usage = "REVOKE ALL ON SCHEMA public FROM PUBLIC"
    with _as_new_role(db_url, monkeypatch, no_usage) as (role, admin):
        said = (
            f"careflow's tables are in schema public of {make_url(db_url).set(username=role).render_as_string()}, "
            f"which the role {role} may not use: as the schema's owner, GRANT USAGE ON SCHEMA public TO {role}"
        )
        assert main(listing) == 2
        assert said in capsys.readouterr().err
        with pytest.raises(ConfigurationError) as refused:
            check_ready(get_engine())
        assert str(refused.value) == said
        assert _listing_problem(read_workflows(workflows_dir=tmp_path).database_error) == SCHEMA_REFUSED

        with admin.begin() as conn:  # as it says: what is missing next is named next
            conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        assert main(listing) == 2
        assert f"refused the role {role}: permission denied for table " in capsys.readouterr().err


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # schemas are Postgres's
def test_clinic_tables_in_a_schema_the_role_may_not_use_are_not_hidden_behind_empty_ones(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The role's search_path names the clinic's schema, which it was not granted: Postgres passes
    over that schema without a word, and ``db upgrade`` created four empty clinic tables in
    careflow's, which every run read (nobody enrolled) and which, once the grant came, still hid
    the clinic's. It now creates none, and it and every run say what to grant."""
    from careflow.exceptions import ConfigurationError
    from careflow.store.db import get_engine
    from careflow.store.migrations import check_ready

    admin = create_engine(empty_db_url)
    with admin.begin() as conn:
        conn.execute(text("CREATE SCHEMA clinic"))
        in_clinic = conn.execution_options(schema_translate_map={None: "clinic"})
        for table in tables.CLINIC_TABLES:
            table.create(in_clinic)
        in_clinic.execute(tables.clinics.insert().values(id="c1", name="강남", timezone="Asia/Seoul"))
    setup = (
        "GRANT USAGE, CREATE ON SCHEMA public TO {role}",
        "ALTER ROLE {role} SET search_path = public, clinic",
    )
    try:
        with _as_new_role(empty_db_url, monkeypatch, *setup) as (role, admin):
            assert main(["db", "upgrade"]) == 0
            out, err = capsys.readouterr()
            assert "created clinic tables" not in out
            said = (
                "the clinic's clinics, patients, appointments, appointment_events are in schema clinic, "
                f"which the role {role}'s search_path (public, clinic) names but the role may not use, "
                f"so Postgres passes over it: as the schema's owner, GRANT USAGE ON SCHEMA clinic TO {role}"
            )
            assert err == f"careflow: warning: {said}\n"
            assert set(inspect(admin).get_table_names(schema="public")) == CAREFLOW_TABLES
            with pytest.raises(ConfigurationError) as refused:
                check_ready(get_engine())
            assert str(refused.value) == said

            with admin.begin() as conn:  # as it says (and the tables themselves, as contracts §2 asks)
                conn.execute(text(f'GRANT USAGE ON SCHEMA clinic TO "{role}"'))
                conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA clinic TO "{role}"'))
            check_ready(get_engine())
            with get_engine().connect() as conn:
                assert conn.execute(select(tables.clinics.c.name)).scalar_one() == "강남"
    finally:
        with admin.begin() as conn:
            conn.execute(text("DROP SCHEMA clinic CASCADE"))
        admin.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # SQLite's names are not case-sensitive
def test_a_clinic_table_created_with_a_quoted_capitalised_name_is_named_not_hidden(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``CREATE TABLE "Patients"`` keeps its capitals on Postgres, and careflow's statements read
    ``patients``: ``db upgrade`` created an empty ``patients`` beside the clinic's. It now creates
    none, says which view to create, and the view created as it says is read."""
    from careflow.exceptions import ConfigurationError
    from careflow.store.db import get_engine
    from careflow.store.migrations import check_ready

    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        # its columns likewise, one of them: "Name"
        quoted = {"name": '"Name"'}
        columns = ", ".join(
            f"{quoted.get(column, column)} TEXT" for column in sorted(CLINIC_COLUMNS["patients"])
        )
        conn.execute(text(f'CREATE TABLE "Patients" ({columns})'))
        conn.execute(text("INSERT INTO \"Patients\" (id, clinic_id, \"Name\") VALUES ('p1', 'c1', 'Kim')"))
    assert main(["db", "upgrade"]) == 0
    out, err = capsys.readouterr()
    assert "created clinic tables: clinics, appointments, appointment_events" in out
    said = (
        'the clinic\'s public."Patients" is not the patients careflow reads (Postgres keeps the capitals '
        "of a name created in quotes): create the view careflow reads over it, CREATE VIEW "
        'public.patients AS SELECT * FROM public."Patients", naming each column as careflow reads it '
        "(docs/contracts.md §2)"
    )
    assert err == f"careflow: warning: {said}\n"
    assert "patients" not in inspect(engine).get_table_names()
    with pytest.raises(ConfigurationError) as refused:
        check_ready(get_engine())
    assert str(refused.value) == said

    with engine.begin() as conn:  # as it says
        conn.execute(text('CREATE VIEW public.patients AS SELECT * FROM public."Patients"'))
    with pytest.raises(ConfigurationError) as refused:  # the column under capitals, named next
        check_ready(get_engine())
    assert 'patients has no name (it has "Name": "Name" AS name);' in str(refused.value)
    with engine.begin() as conn:  # as it says
        listed = ", ".join(sorted(CLINIC_COLUMNS["patients"] - {"name"}))
        conn.execute(text("DROP VIEW patients"))
        conn.execute(text(f'CREATE VIEW patients AS SELECT {listed}, "Name" AS name FROM "Patients"'))
    check_ready(get_engine())
    with get_engine().connect() as conn:
        assert conn.execute(select(tables.patients.c.name)).scalar_one() == "Kim"
    engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)  # schemas are Postgres's
def test_a_clinic_table_of_a_schema_off_the_search_path_is_said_when_an_empty_one_is_created(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``patients`` in a schema the search path does not name may be the clinic's or another's (an
    archive): ``db upgrade`` creates careflow's as before, and says which one careflow will read."""
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA archive"))
        conn.execute(text("CREATE TABLE archive.patients (id TEXT)"))
        role = conn.execute(text("SELECT current_user")).scalar_one()
    try:
        assert main(["db", "upgrade"]) == 0
        out, err = capsys.readouterr()
        assert "created clinic tables: clinics, patients, appointments, appointment_events" in out
        assert err == (
            f'careflow: warning: archive.patients is not on the role {role}\'s search_path ("$user", public): '
            "careflow reads the patients it created, empty. Where archive.patients is the clinic's, drop the "
            f'one created and put archive on the search_path (ALTER ROLE {role} SET search_path = "$user", '
            "public, archive)\n"
        )
        assert main(["db", "upgrade"]) == 0  # said where it creates, once
        assert capsys.readouterr().err == ""
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA archive CASCADE"))
        engine.dispose()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ('"$user", public', {"careflow_app", "public"}),
        ("careflow,Clinic", {"careflow", "clinic"}),  # unquoted: folded to lower case
        ('careflow, "Clinic Data", "a""b"', {"careflow", "Clinic Data", 'a"b'}),
        ("", set()),
    ],
)
def test_the_schemas_a_search_path_names_are_read_as_postgres_reads_them(
    setting: str, named: set[str]
) -> None:
    from careflow.store.migrations import _search_path_schemas

    assert _search_path_schemas(setting, "careflow_app") == named
