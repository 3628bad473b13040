"""The ``careflow`` command: exit codes, JSON diagnostics, the schema, never a traceback."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from careflow.cli import main
from support import CAREFLOW, EXAMPLES, REPO, euc_kr_locale, free_port

BROKEN = REPO / "include" / "broken"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_examples_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.json"))
    code, out, _ = _run(capsys, "workflows", "validate", *files)
    assert code == 0
    assert out.count(": ok (0 error(s)") == len(files)


def test_one_bad_file_among_good_ones_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        "workflows",
        "validate",
        str(EXAMPLES / "implant-aftercare.json"),
        str(BROKEN / "graph-cycle.json"),
    )
    assert code == 1
    assert "implant-aftercare.json: ok" in out
    assert "graph-cycle.json: INVALID" in out and "GRAPH_CYCLE" in out and "edge e5" in out


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("binary.json", bytes(range(256)) * 4, "WF_NOT_JSON"),
        ("text.json", b"this is not json", "WF_NOT_JSON"),
        ("truncated.json", b'{"id": "x", "nodes": [', "WF_NOT_JSON"),
        ("list.json", b"[1, 2, 3]", "WF_NOT_OBJECT"),
        ("empty.json", b"", "WF_EMPTY"),
        ("missing.json", None, "WF_UNREADABLE"),
        ("a-directory", "dir", "WF_UNREADABLE"),
    ],
)
def test_unreadable_input_is_a_diagnostic_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | str | None, code: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    exit_code, out, err = _run(capsys, "workflows", "validate", "--json", str(path))
    assert exit_code == 1
    assert "Traceback" not in out + err
    (report,) = json.loads(out)
    assert report["ok"] is False
    assert [d["code"] for d in report["diagnostics"]] == [code]


def test_a_directory_stands_for_the_workflow_files_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b.json").write_bytes((EXAMPLES / "implant-aftercare.json").read_bytes())
    (tmp_path / "a.json").write_bytes((BROKEN / "graph-cycle.json").read_bytes())
    (tmp_path / ".editor-backup.json").write_bytes(b"not json")  # hidden: not a workflow file
    (tmp_path / "notes.txt").write_text("not a workflow", encoding="utf-8")
    (tmp_path / "archive.json").mkdir()  # a directory, whatever its name
    code, out, err = _run(capsys, "workflows", "validate", "--json", str(tmp_path))
    assert (code, err) == (1, "")
    assert [(r["source"], r["ok"]) for r in json.loads(out)] == [
        (str(tmp_path / "a.json"), False),
        (str(tmp_path / "b.json"), True),
    ]


def test_a_directory_without_workflow_files_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from support import as_nobody, open_directory

    (tmp_path / "notes.txt").write_text("not a workflow", encoding="utf-8")
    code, out, _ = _run(capsys, "workflows", "validate", str(tmp_path))
    assert code == 1
    assert (
        f"WF_UNREADABLE                workflow: The directory {tmp_path} holds no workflow file (*.json)"
        in out
    )

    with open_directory() as top:
        private = top / "workflows"
        private.mkdir(mode=0o700)
        (private / "implant-aftercare.json").write_bytes((EXAMPLES / "implant-aftercare.json").read_bytes())
        code, out = as_nobody(
            lambda: (main(["workflows", "validate", str(private)]), capsys.readouterr().out)
        )
    assert code == 1
    assert f"workflow: The directory {private} cannot be listed: Permission denied" in out


def test_json_output_names_the_offending_node_or_edge_for_every_broken_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = sorted(BROKEN.glob("*.json"))
    assert len(files) >= 25
    code, out, err = _run(capsys, "workflows", "validate", "--json", *map(str, files))
    assert code == 1
    assert err == ""
    reports = {Path(r["source"]).name: r for r in json.loads(out)}
    assert set(reports) == {f.name for f in files}
    refused = {name for name, r in reports.items() if not r["ok"] and r["errors"] >= 1}
    assert refused == set(reports), sorted(set(reports) - refused)
    unlocated = []
    for name, report in reports.items():
        errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
        assert all({"severity", "code", "message", "node_id", "edge_id", "field"} <= set(d) for d in errors)
        if not any(d["node_id"] or d["edge_id"] for d in errors):
            unlocated.append(name)
    # every fixture breaks one node or edge of implant-aftercare: each refusal must point at it
    assert unlocated == []


def test_validate_without_files_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["workflows", "validate"])
    assert exc.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_schema_is_the_published_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "schema")
    assert code == 0
    published = json.loads((REPO / "include" / "schema" / "workflow.schema.json").read_text(encoding="utf-8"))
    assert json.loads(out) == published


@pytest.mark.parametrize(
    "command", [("metrics", "--no-airflow"), ("db", "upgrade"), ("workflows", "publish")]
)
def test_a_database_that_cannot_be_reached_is_named_with_where_its_url_came_from(
    command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from careflow.store.db import dispose_engines

    nobody = free_port()
    monkeypatch.setenv("CAREFLOW_DB_URL", f"postgresql://careflow:hunter2@127.0.0.1:{nobody}/careflow")
    argv = [*command, str(EXAMPLES / "implant-aftercare.json")] if command[-1] == "publish" else [*command]
    try:
        code = main(argv)
    finally:
        dispose_engines()
    out, err = capsys.readouterr()
    assert code == 2
    told = (
        f"cannot connect to careflow's database postgresql+psycopg2://careflow:***@127.0.0.1:{nobody}/careflow "
        f'(from CAREFLOW_DB_URL): connection to server at "127.0.0.1", port {nobody} failed'
    )
    shown = f"{EXAMPLES / 'implant-aftercare.json'}: not published: " if command[-1] == "publish" else ""
    assert err.startswith(f"careflow: {shown}{told}") and len(err.splitlines()) == 1, err
    assert "hunter2" not in out + err and "unexpected error" not in err


def test_console_script_validates_and_upgrades(tmp_path: Path) -> None:
    """The installed ``careflow`` script: exit codes and ``db upgrade`` printing the version."""
    import os

    env = {**os.environ, "CAREFLOW_DB_URL": f"sqlite:///{tmp_path / 'careflow.db'}", "CAREFLOW_REDIS_URL": ""}
    bad = subprocess.run(
        [CAREFLOW, "workflows", "validate", str(BROKEN / "node-unknown-type.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1, bad.stderr
    assert "NODE_UNKNOWN_TYPE" in bad.stdout and "Traceback" not in bad.stderr
    upgraded = subprocess.run(
        [CAREFLOW, "db", "upgrade"], capture_output=True, text=True, env=env, timeout=60
    )
    assert upgraded.returncode == 0, upgraded.stderr
    from careflow.store.migrations import MIGRATIONS

    assert f"careflow tables at version {MIGRATIONS[-1].version} " in upgraded.stdout
    assert (tmp_path / "careflow.db").exists()


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly() -> None:
    """`careflow schema | head -1`: the command stops as a piped command does, without an error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "careflow", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    # The reader is gone before the command writes (it is still importing): every write fails.
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert err == ""


def test_a_reader_that_closes_the_pipe_on_json_ends_the_command_quietly(tmp_path: Path) -> None:
    """`careflow workflows validate --json … | head -c 20`: the answer is written to stdout while
    everything else goes to stderr; a reader gone midway stops it as it stops the text output."""
    for n in range(200):
        shutil.copy(EXAMPLES / "new-patient-welcome.json", tmp_path / f"w{n}.json")  # about 100 kB of JSON
    process = subprocess.Popen(
        [sys.executable, "-m", "careflow", "workflows", "validate", "--json", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(20).decode().startswith("[")
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert err == ""


def test_python_dash_m_careflow_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "careflow", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: careflow")
    for command in ("db", "workflows", "schema", "simulate"):
        assert command in result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_a_label_the_terminal_cannot_encode_is_printed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    document = json.loads((EXAMPLES / "day-before-reminder.json").read_text(encoding="utf-8"))
    document["nodes"][0]["data"]["label"] = "MARK"
    path = tmp_path / "surrogate.json"
    # a lone surrogate, as a JSON escape: valid JSON, not encodable as UTF-8
    path.write_text(json.dumps(document).replace("MARK", "X\\ud800"), encoding="utf-8")
    exit_code, out, err = _run(capsys, "workflows", "validate", *(["--json"] if as_json else []), str(path))
    assert exit_code == 1 and "Traceback" not in out + err and "unexpected error" not in err
    assert "NODE_BAD_FIELD" in out


def test_publish_takes_a_directory_of_workflow_files(
    db_url: str, workflows_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys, "workflows", "publish", "--json", "--workflows-dir", str(workflows_dir), str(EXAMPLES)
    )
    assert (code, err) == (0, "")
    results = json.loads(out)
    assert [r["source"] for r in results] == sorted(str(p) for p in EXAMPLES.glob("*.json"))
    assert {r["action"] for r in results} == {"published"}
    assert sorted(p.name for p in workflows_dir.glob("*.json")) == sorted(
        p.name for p in EXAMPLES.glob("*.json")
    )


def test_two_files_of_one_workflow_are_both_refused_and_neither_is_published(
    db_url: str, workflows_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two exports of one workflow in a folder, as a browser names a second download: published in
    # turn, the one whose name sorts last would stay live, here the older one.
    exports = tmp_path / "exports"
    exports.mkdir()
    workflow = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))
    (exports / "implant-aftercare.json").write_text(json.dumps(workflow), encoding="utf-8")
    workflow["name"] = "edited"
    (exports / "implant-aftercare (1).json").write_text(json.dumps(workflow), encoding="utf-8")
    (exports / "no-show-recovery.json").write_bytes((EXAMPLES / "no-show-recovery.json").read_bytes())

    code, out, err = _run(capsys, "workflows", "validate", "--json", str(exports))
    assert (code, err) == (1, "")
    assert [(r["workflow_id"], r["ok"]) for r in json.loads(out)] == [
        ("implant-aftercare", False),
        ("implant-aftercare", False),
        ("no-show-recovery", True),
    ]

    code, out, err = _run(
        capsys, "workflows", "publish", "--json", "--workflows-dir", str(workflows_dir), str(exports)
    )
    assert (code, err) == (1, "")
    first, second, other = json.loads(out)
    assert (first["action"], second["action"], other["action"]) == ("refused", "refused", "published")
    [refusal] = [d for d in first["diagnostics"] if d["code"] == "WF_ID_IN_SEVERAL_FILES"]
    assert refusal["field"] == "id"
    assert refusal["message"].startswith(
        f"Workflow implant-aftercare is also in {exports / 'implant-aftercare.json'}, given with this file"
    )
    [refusal] = [d for d in second["diagnostics"] if d["code"] == "WF_ID_IN_SEVERAL_FILES"]
    assert str(exports / "implant-aftercare (1).json") in refusal["message"]
    assert sorted(p.name for p in workflows_dir.glob("*.json")) == ["no-show-recovery.json"]

    # The same file named twice is one file: published, then unchanged.
    same = exports / "implant-aftercare.json"
    code, out, err = _run(
        capsys, "workflows", "publish", "--json", "--workflows-dir", str(workflows_dir), str(same),
        str(exports / "." / same.name),
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert [r["action"] for r in json.loads(out)] == ["published", "unchanged"]


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_a_workflow_is_read_from_standard_input_as_dash(
    db_url: str, workflows_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``curl …/export | careflow workflows validate -``: the builder's export, without a file."""
    document = (EXAMPLES / "implant-aftercare.json").read_bytes()
    _stdin(monkeypatch, document)
    code, out, err = _run(capsys, "workflows", "validate", "--json", "-")
    assert (code, err) == (0, "")
    assert [(r["source"], r["workflow_id"], r["ok"]) for r in json.loads(out)] == [
        ("-", "implant-aftercare", True)
    ]

    _stdin(monkeypatch, b"{" + b" " * (5 * 1024 * 1024) + b"}")  # over the 5 MB a workflow may have
    code, out, _ = _run(capsys, "workflows", "validate", "--json", "-")
    assert code == 1
    assert [d["code"] for d in json.loads(out)[0]["diagnostics"]] == ["WF_TOO_LARGE"]

    _stdin(monkeypatch, document)
    code, out, err = _run(capsys, "workflows", "publish", "--json", "-")
    assert (code, err) == (0, "")
    assert [(r["source"], r["action"], r["version"]) for r in json.loads(out)] == [("-", "published", 1)]
    assert (workflows_dir / "implant-aftercare.json").is_file()

    # Given twice, standard input is read once, as a file given twice is one file (the second `-`
    # found it empty: WF_EMPTY).
    for command, field, expected in (("validate", "ok", True), ("publish", "action", "unchanged")):
        _stdin(monkeypatch, document)
        code, out, err = _run(capsys, "workflows", command, "--json", "-", "-")
        assert (code, err) == (0, "")
        assert [(r["source"], r[field]) for r in json.loads(out)] == [("-", expected)] * 2


@pytest.mark.parametrize(
    ("by", "said"),
    [
        ("a" * 129, "argument --by: a name of at most 128 characters, got 129"),
        ("ops\nadmin", "argument --by: a name on one line, without control characters, got 'ops\\nadmin'"),
    ],
)
def test_a_publisher_name_the_versions_cannot_keep_is_refused_before_anything_is_published(
    by: str, said: str, tmp_path: Path
) -> None:
    """Postgres refused a name over 128 characters once the snapshot was written ("unexpected
    error: DataError"), where SQLite kept it whole."""
    result = subprocess.run(
        [CAREFLOW, "workflows", "publish", "--workflows-dir", str(tmp_path), "--by", by, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith(f"careflow workflows publish: error: {said}\n")
    assert list(tmp_path.iterdir()) == []


def test_publish_before_db_upgrade_says_to_run_it(
    empty_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.store.db import dispose_engines

    # Postgres trusts local connections: any password works, and none may be printed
    empty_db_url = empty_db_url.replace(
        "postgresql+psycopg2://postgres@", "postgresql+psycopg2://postgres:s3cret@"
    )
    monkeypatch.setenv("CAREFLOW_DB_URL", empty_db_url)
    dispose_engines()
    code, out, err = _run(
        capsys,
        "workflows",
        "publish",
        "--workflows-dir",
        str(tmp_path / "workflows"),
        str(EXAMPLES / "implant-aftercare.json"),
    )
    assert code == 2 and out == ""
    shown = empty_db_url.replace("postgres:s3cret@", "postgres:***@")
    assert err == (
        f"careflow: {EXAMPLES / 'implant-aftercare.json'}: not published: careflow's tables do not exist "
        f"in this database ({shown}: careflow_workflow_versions is missing): "
        "run `careflow db upgrade` first\n"
    )
    assert "s3cret" not in err


def test_an_unexpected_error_prints_only_the_first_line_of_its_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import careflow.publishing

    def fails(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the statement failed\n[SQL: SELECT secret FROM somewhere]\n(Background …)")

    monkeypatch.setattr(careflow.publishing, "publish_each", fails)
    code, _, err = _run(capsys, "workflows", "publish", str(EXAMPLES / "implant-aftercare.json"))
    assert code == 2
    assert err == "careflow: unexpected error: RuntimeError: the statement failed\n"


@pytest.mark.parametrize(
    ("workflow_id", "message"),
    [
        ("-x", "'id' must start with a letter or digit — got '-x'"),
        (".hidden", "'id' must start with a letter or digit — got '.hidden'"),
        ("a" * 65, "'id' is too long (at most 64 characters)"),
        (
            "implant aftercare",
            "'id' may only hold letters, digits, '_', '.' and '-', starting with a letter or digit",
        ),
    ],
)
def test_a_bad_workflow_id_names_the_rule_it_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workflow_id: str, message: str
) -> None:
    document = json.loads((EXAMPLES / "implant-aftercare.json").read_text(encoding="utf-8"))
    document["id"] = workflow_id
    path = tmp_path / "bad-id.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    exit_code, out, _ = _run(capsys, "workflows", "validate", "--json", str(path))
    assert exit_code == 1
    (report,) = json.loads(out)
    (error,) = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert error["code"] == "WF_BAD_ID" and message in error["message"], error["message"]


def _run_read_only(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> str:
    """``argv`` against ``url`` with every session read-only (as on a standby); its one-line error."""
    from careflow.store.db import dispose_engines

    monkeypatch.setenv("CAREFLOW_DB_URL", f"{url}?options=-cdefault_transaction_read_only%3Don")
    dispose_engines()
    try:
        code = main(list(argv))
    finally:
        dispose_engines()
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "unexpected error" not in err
    return err


def _says_it_takes_no_writes(err: str) -> bool:
    return (
        "careflow's database postgresql+psycopg2://" in err
        and "(from CAREFLOW_DB_URL) takes no writes: cannot execute " in err
        and "in a read-only transaction; it is a standby, or its sessions are read-only: name the primary "
        "(or, with several servers, add target_session_attrs=read-write)"
        in err
    )


@pytest.mark.parametrize("empty_db_url", ["postgres"], indirect=True)
def test_db_upgrade_on_a_database_that_takes_no_writes_says_so(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _run_read_only(empty_db_url, monkeypatch, capsys, "db", "upgrade")
    assert err.startswith("careflow: careflow's database ") and _says_it_takes_no_writes(err), err


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_publish_to_a_database_that_takes_no_writes_says_so(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(EXAMPLES / "implant-aftercare.json")
    err = _run_read_only(db_url, monkeypatch, capsys, "workflows", "publish", path)
    assert err.startswith(f"careflow: {path}: not published: ") and _says_it_takes_no_writes(err), err


def test_a_locale_that_is_not_utf8_is_named_where_airflow_cannot_start_under_it(tmp_path: Path) -> None:
    """Under ``ko_KR.EUC-KR`` Airflow fails as it imports, reading its own files in that encoding:
    the command says what to set rather than "unexpected error: UnicodeDecodeError"."""
    env = {**euc_kr_locale(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run(
        [sys.executable, "-m", "careflow", "setup"], capture_output=True, env=env, timeout=120
    )
    err = result.stderr.decode("euc-kr")
    assert result.returncode == 2, err
    assert err.startswith("careflow: a file could not be read in this locale's encoding, EUC-KR (")
    assert (
        "Set PYTHONUTF8=1 (or a UTF-8 locale, such as LANG=ko_KR.UTF-8)" in err and len(err.splitlines()) == 1
    )


@pytest.mark.parametrize(
    ("slots", "said"),
    [
        ("0", "at least 1 (a pool of none would never run a send task), got 0"),
        ("-1", "at least 1 (a pool of none would never run a send task), got -1"),
        ("four", "a whole number of send tasks, got 'four'"),
    ],
)
def test_pool_slots_that_could_run_no_send_task_are_a_usage_error(
    slots: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused as the other arguments are (exit 2, with the usage), before Airflow is imported;
    it exited 1 once Airflow was."""
    from careflow.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["setup", "--pool-slots", slots])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"careflow setup: error: argument --pool-slots: {said}\n")
