"""The ``careflow`` command (also ``python -m careflow``).

Every subcommand answers bad input with a clear message and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from careflow.publishing import WorkflowList

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2
#: What a command killed by SIGPIPE exits with in a shell: its reader closed the pipe.
EXIT_BROKEN_PIPE = 141


@contextlib.contextmanager
def stopping_on_sigterm(program: str) -> Iterator[None]:
    """Within the block a SIGTERM ends ``program`` as Ctrl+C does: it says so on stderr and exits
    with 143 through its ``finally`` blocks and context managers, which stop what it started.

    Python's default would end it at once and leave its subprocesses, servers and databases. Off
    the main thread, which alone receives signals, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"{program}: stopped ({name}); stopping what it started", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str), file=out)


# ------------------------------------------------------------------ db


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from careflow.store.migrations import upgrade

    report = upgrade()
    applied = ", ".join(map(str, report.applied)) or "none (up to date)"
    print(f"careflow tables at version {report.current} in {report.url}; applied: {applied}")
    if report.clinic_tables_created:
        print(f"created clinic tables: {', '.join(report.clinic_tables_created)}")
    # careflow's tables are ready; the runs will refuse (problems), or read what was created (warnings)
    for problem in report.clinic_problems + report.clinic_warnings:
        print(f"careflow: warning: {problem}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ workflows


def _diagnostic_line(d: Any) -> str:
    # a diagnostic may name both a node and an edge (a loop closed by an edge): show both
    places = [f"node {d.node_id}" if d.node_id else "", f"edge {d.edge_id}" if d.edge_id else ""]
    where = ", ".join(p for p in places if p) or "workflow"
    field = f" [{d.field}]" if getattr(d, "field", None) else ""
    return f"  {d.severity:<7} {d.code:<28} {where}{field}: {d.message}"


def cmd_validate(args: argparse.Namespace) -> int:
    from careflow.workflow.validation import validate_paths, workflow_files

    reports = validate_paths(workflow_files(args.files))
    if args.json:
        _print_json([r.to_dict() for r in reports], args.answer)
    else:
        for report in reports:
            verdict = "ok" if report.ok else "INVALID"
            print(
                f"{report.source}: {verdict} ({len(report.errors)} error(s), {len(report.warnings)} warning(s))"
            )
            for d in report.diagnostics:
                print(_diagnostic_line(d))
    return EXIT_OK if all(r.ok for r in reports) else EXIT_INVALID


def _print_publish_result(r: Any) -> None:
    if r.action == "failed":
        print(f"careflow: {r.source}: not published: {r.error}", file=sys.stderr, flush=True)
    elif r.action == "refused":
        print(f"{r.source}: refused ({len(r.report.errors) if r.report else 0} error(s))")
        for d in r.report.diagnostics if r.report else []:
            if d.severity == "error":
                print(_diagnostic_line(d))
    else:
        print(
            f"{r.source}: {r.action} {r.workflow_id} v{r.version} ({(r.content_hash or '')[:12]}) "
            f"in {r.database} -> {r.snapshot}"
        )
        if r.ended:
            print(f"  ended {r.ended} execution(s) still in flight: the workflow is archived")
        for d in r.report.diagnostics if r.report else []:
            if d.severity == "warning":  # published all the same; `validate` lists the rest
                print(_diagnostic_line(d))
    sys.stdout.flush()


def cmd_publish(args: argparse.Namespace) -> int:
    from careflow.publishing import publish_each
    from careflow.workflow.validation import workflow_files

    workflows_dir = Path(args.workflows_dir) if args.workflows_dir else None
    results = []
    # Each file's result is printed as soon as it is known: a later file's failure must not hide
    # that the earlier ones were published.
    for result in publish_each(workflow_files(args.files), workflows_dir=workflows_dir, published_by=args.by):
        results.append(result)
        if not args.json:
            _print_publish_result(result)
    if args.json:
        _print_json([r.to_dict() for r in results], args.answer)
    if any(r.action == "failed" for r in results):
        return EXIT_ERROR
    return EXIT_OK if all(r.action != "refused" for r in results) else EXIT_INVALID


def cmd_list(args: argparse.Namespace) -> int:
    from careflow import settings
    from careflow.publishing import read_workflows

    workflows_dir = Path(args.workflows_dir) if args.workflows_dir else None
    listed = read_workflows(workflows_dir=workflows_dir)
    code = EXIT_ERROR if listed.database_problem or listed.snapshots_problem else EXIT_OK
    folder = workflows_dir or settings.workflows_dir()
    if args.json:  # the list on stdout, as before; what went wrong with the database on stderr
        _print_json([item.to_dict() for item in listed.workflows], args.answer)
        _print_listing_problems(listed, folder, given=workflows_dir is not None)
        return code
    header = f"{'workflow':<28} {'ver':>4} {'status':<9} {'hash':<12} {'validation':<18} snapshot"
    print(header)
    print("-" * len(header))
    for item in listed.workflows:
        print(
            f"{item.workflow_id:<28} {item.version if item.version is not None else '-':>4} {item.status or '-':<9} "
            f"{(item.content_hash or '-')[:12]:<12} {item.validation or '-':<18} {item.snapshot}"
            + (f"  ({item.problem})" if item.problem else "")
        )
    sys.stdout.flush()
    _print_listing_problems(listed, folder, given=workflows_dir is not None)
    return code


def _print_listing_problems(listed: WorkflowList, folder: Path, *, given: bool) -> None:
    """What kept ``workflows list`` from reading the database or the snapshots, on stderr; and a
    workflows directory that holds none of the published workflows' snapshots."""
    from careflow import settings
    from careflow.publishing import no_snapshot_there

    if listed.database_problem:
        print(f"careflow: only the snapshots on disk are listed: {listed.database_problem}", file=sys.stderr)
    if listed.snapshots_problem:
        print(f"careflow: no snapshot could be read: {listed.snapshots_problem}", file=sys.stderr)
    if (elsewhere := no_snapshot_there(folder, listed)) is not None:
        where = "--workflows-dir" if given else settings.WORKFLOWS_DIR_SETTING
        print(f"careflow: {elsewhere}: is {where} the directory publish wrote them to?", file=sys.stderr)


def cmd_schema(args: argparse.Namespace) -> int:
    from careflow.workflow.jsonschema import workflow_json_schema

    print(json.dumps(workflow_json_schema(), ensure_ascii=False, indent=2, sort_keys=True))
    return EXIT_OK


# ------------------------------------------------------------------ simulate, demo, provider, setup


def cmd_simulate(args: argparse.Namespace) -> int:
    from careflow.simulation import simulate

    return simulate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from careflow.demo.run import run_demo

    return run_demo(args)


def cmd_fake_provider(args: argparse.Namespace) -> int:
    from careflow.providers import fake_server

    return int(fake_server.run(args) or 0)


def cmd_setup(args: argparse.Namespace) -> int:
    from careflow.airflow.setup import setup_airflow

    return setup_airflow(args)


def cmd_check(args: argparse.Namespace) -> int:
    # Before Airflow is imported: its log lines, on stdout, are not what the command answers.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    # Those of a level the environment asks for (INFO) go to stderr: without --json too, the findings
    # are printed once every check has run.
    with _stdout_to_stderr():
        from careflow.doctor import PROBLEM, check_all

        findings = check_all(Path(args.workflows_dir) if args.workflows_dir else None)
    if args.json:
        _print_json([finding.to_dict() for finding in findings], args.answer)
    else:
        for finding in findings:
            print(f"{finding.verdict:<8} {finding.subject:<19} {finding.text}")
    return EXIT_ERROR if any(finding.verdict == PROBLEM for finding in findings) else EXIT_OK


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[TextIO]:
    """Whatever writes to stdout meanwhile (Airflow's structlog at the level the environment asks
    for, a library's print, C code) writes to stderr; the stream it yields writes to stdout, so
    that stdout holds the command's answer alone (``--json`` stays JSON).

    A reader that went away raises BrokenPipeError as the answer is written, or at the end. Where
    ``sys.stdout`` is not file descriptor 1 (replaced in this process, as a test's capture does),
    the answer goes to it and what Python writes to ``sys.stdout`` meanwhile to ``sys.stderr``.
    """
    try:
        replaced = sys.stdout.fileno() != 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: no descriptor at all
        replaced = True
    if replaced:
        answer, sys.stdout = sys.stdout, sys.stderr
        try:
            yield answer
        finally:
            sys.stdout = answer
        return
    sys.stdout.flush()
    kept = os.dup(1)
    answer = os.fdopen(os.dup(kept), "w", encoding=sys.stdout.encoding, errors="backslashreplace")
    try:
        os.dup2(2, 1)
        yield answer
    finally:
        sys.stdout.flush()
        os.dup2(kept, 1)
        os.close(kept)
        answer.close()  # written out: BrokenPipeError where the reader is gone, as a print's would be


def cmd_metrics(args: argparse.Namespace) -> int:
    from careflow.metrics_report import run

    return run(args)


def _publisher(value: str) -> str:
    """``--by``: a name the versions' table keeps whole, on one line."""
    from careflow.store.tables import PUBLISHED_BY_CHARS

    if len(value) > PUBLISHED_BY_CHARS:
        raise argparse.ArgumentTypeError(
            f"a name of at most {PUBLISHED_BY_CHARS} characters, got {len(value)}"
        )
    if any(not char.isprintable() for char in value):
        raise argparse.ArgumentTypeError(f"a name on one line, without control characters, got {value!r}")
    return value


def _pool_slots(value: str) -> int:
    """``--pool-slots``: the send tasks the provider may see at once, one at least."""
    try:
        slots = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of send tasks, got {value!r}") from None
    if slots < 1:
        raise argparse.ArgumentTypeError(
            f"at least 1 (a pool of none would never run a send task), got {slots}"
        )
    return slots


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``careflow`` command."""
    parser = argparse.ArgumentParser(
        prog="careflow", description="Patient-messaging workflows on Apache Airflow."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    db = sub.add_parser("db", help="careflow's database").add_subparsers(dest="db_command", metavar="ACTION")
    db.required = True
    db.add_parser(
        "upgrade", help="create or migrate careflow's tables (and the clinic tables where absent)"
    ).set_defaults(func=cmd_db_upgrade)

    wf = sub.add_parser("workflows", help="validate, publish and list workflows").add_subparsers(
        dest="workflows_command", metavar="ACTION"
    )
    wf.required = True
    v = wf.add_parser("validate", help="validate workflow files (exit 1 when any has an error)")
    v.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a workflow file, a directory of them (*.json), or - for standard input",
    )
    v.add_argument("--json", action="store_true", help="print the diagnostics as JSON")
    v.set_defaults(func=cmd_validate)
    p = wf.add_parser("publish", help="validate, store a new version and write the snapshot")
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a workflow file, a directory of them (*.json), or - for standard input",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--by", type=_publisher, help="who publishes (recorded; default: the login name)")
    p.add_argument("--workflows-dir", help="override [careflow] workflows_dir")
    p.set_defaults(func=cmd_publish)
    ls = wf.add_parser("list", help="published workflows and the state of their snapshots")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--workflows-dir", help="override [careflow] workflows_dir")
    ls.set_defaults(func=cmd_list)

    sub.add_parser("schema", help="print the workflow JSON Schema").set_defaults(func=cmd_schema)

    sim = sub.add_parser("simulate", help="run a workflow's real DAG run by run on a simulated clock")
    sim.add_argument("--workflow", required=True, metavar="ID")
    sim.add_argument("--start", required=True, metavar="DATE", help="first day, e.g. 2026-03-01")
    sim.add_argument("--days", type=int, default=7)
    sim.add_argument(
        "--dry-run",
        action="store_true",
        help="record messages in the ledger as sent (provider id dry-run) without sending them",
    )
    sim.add_argument("--json", action="store_true", help="one JSON object per message, then a summary")
    sim.add_argument(
        "--airflow-runner",
        action="store_true",
        help="run each DAG run through dag.test() (Airflow's task runner; about a second per task)",
    )
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="set up the embedded default, load demo data and simulate two weeks")
    demo.add_argument("--home", default=None, help="AIRFLOW_HOME for the demo (default ./.careflow/demo)")
    demo.add_argument("--days", type=int, default=14, help="days to simulate, 1 to 366 (default 14)")
    demo.add_argument("--patients", type=int, default=300, help="demo patients, 1 to 100,000 (default 300)")
    demo.set_defaults(func=cmd_demo)

    fp = sub.add_parser("fake-provider", help="run the local fake messaging provider")
    try:
        from careflow.providers import fake_server

        fake_server.add_arguments(fp)
    except ImportError:
        pass
    fp.set_defaults(func=cmd_fake_provider)

    from careflow.airflow.setup import DEFAULT_POOL_SLOTS

    st = sub.add_parser("setup", help="create or resize the careflow_messaging pool in Airflow")
    st.add_argument(
        "--pool-slots",
        type=_pool_slots,
        default=DEFAULT_POOL_SLOTS,
        help=f"send tasks running against the provider at once (default {DEFAULT_POOL_SLOTS})",
    )
    st.set_defaults(func=cmd_setup)

    ck = sub.add_parser(
        "check",
        help="whether careflow can work as configured: database, snapshots, connections, [careflow] "
        "settings, Airflow's pool, components and DAGs (exit 2: a problem)",
    )
    ck.add_argument("--json", action="store_true")
    ck.add_argument("--workflows-dir", help="override [careflow] workflows_dir")
    ck.set_defaults(func=cmd_check)

    mt = sub.add_parser(
        "metrics", help="runs, error rates, durations (P95) and messages per workflow and node"
    )
    from careflow.metrics_report import add_arguments as metrics_arguments

    metrics_arguments(mt)
    mt.set_defaults(func=cmd_metrics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    from careflow.exceptions import CareflowError, first_line

    for stream in (sys.stdout, sys.stderr):
        # A workflow's text may hold what the terminal cannot encode (a lone surrogate in a
        # label): it is printed escaped, never turned into an error of the command itself.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    # Airflow's models import svcs, which imports FastAPI's test client, and Starlette warns there
    # of its HTTP client: a line on every command that reaches Airflow, nothing its user can act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not getattr(args, "json", False):
            args.answer = sys.stdout
            return int(args.func(args) or 0)
        # The JSON alone on stdout: a command that imports Airflow (simulate's DAG runs, metrics'
        # reads of Airflow's database, check) logs there at the level the environment asks for.
        with _stdout_to_stderr() as args.answer:
            return int(args.func(args) or 0)
    except CareflowError as exc:
        print(f"careflow: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`careflow metrics --json | head`): nothing is wrong with the
        # command, and what is left in the buffer goes nowhere instead of into an error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a clear one-line error instead of a traceback
        from careflow.store.db import database_unusable

        problem = database_unusable(exc)
        if problem is not None:  # careflow's database cannot be reached, or takes no writes
            print(f"careflow: {problem}", file=sys.stderr)
            return EXIT_ERROR
        encoding = non_utf8_locale()
        if isinstance(exc, UnicodeDecodeError) and encoding is not None:
            print(
                f"careflow: a file could not be read in this locale's encoding, {encoding} "
                f"({first_line(exc)}): Airflow reads its own files in it and needs UTF-8. Set "
                "PYTHONUTF8=1 (or a UTF-8 locale, such as LANG=ko_KR.UTF-8) for careflow and every "
                "Airflow component",
                file=sys.stderr,
            )
            return EXIT_ERROR
        print(f"careflow: unexpected error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def non_utf8_locale() -> str | None:
    """The locale's encoding where Python reads and writes text files in it and it is not UTF-8
    (``EUC-KR`` under ``LANG=ko_KR.EUC-KR``); None where text files are UTF-8 (a UTF-8 locale, or
    ``PYTHONUTF8=1``). Airflow 3.3 cannot start under such a locale: it reads its own
    configuration's description in the locale's encoding."""
    import codecs
    import locale

    if sys.flags.utf8_mode:
        return None
    encoding = locale.getpreferredencoding(False)
    try:
        return None if codecs.lookup(encoding).name == "utf-8" else encoding
    except LookupError:
        return encoding
