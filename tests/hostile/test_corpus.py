"""Every workflow of the hostile corpus is refused by `careflow workflows validate` with a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from careflow.workflow.diagnostics import CODES
from careflow.workflow.validation import validate_path

from . import make_corpus

CORPUS = Path(__file__).parent / "corpus" / "workflows"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def test_the_corpus_is_what_the_generator_writes(tmp_path):
    written = make_corpus.write_corpus(tmp_path)
    assert written == EXPECTED and len(EXPECTED) >= 50
    for name in EXPECTED:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
    assert sorted(p.name for p in CORPUS.glob("*.json") if p.name != "expected.json") == sorted(EXPECTED)


def _assert_refused(report: dict, expect: dict) -> None:
    assert report["ok"] is False and report["errors"] >= 1, report
    for d in report["diagnostics"]:
        assert d["code"] in CODES and d["severity"] == CODES[d["code"]][0] and d["message"].strip()
        assert "Traceback" not in d["message"] and "Error(" not in d["message"]
    hits = [d for d in report["diagnostics"] if d["code"] == expect["code"] and d["severity"] == "error"]
    assert hits, (expect, [d["code"] for d in report["diagnostics"]])
    assert any(d["node_id"] == expect["node_id"] and d["edge_id"] == expect["edge_id"] for d in hits), (
        expect,
        hits,
    )
    assert not any(d["code"] == "WF_INTERNAL_ERROR" for d in report["diagnostics"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_file_is_refused_with_its_code(name):
    _assert_refused(validate_path(CORPUS / name).to_dict(), EXPECTED[name])


def test_the_command_refuses_the_whole_corpus_without_a_traceback(tmp_path):
    files = [CORPUS / name for name in sorted(EXPECTED)]
    expected = dict(EXPECTED)
    for stem, what, raw, code, node_id, edge_id in make_corpus.large_cases():
        path = tmp_path / f"{stem}.json"
        path.write_bytes(raw)
        files.append(path)
        expected[path.name] = {"tries": what, "code": code, "node_id": node_id, "edge_id": edge_id}
    out = subprocess.run(
        [sys.executable, "-m", "careflow", "workflows", "validate", "--json", *map(str, files)],
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in out.stderr and b"Traceback" not in out.stdout
    reports = json.loads(out.stdout)
    assert [Path(r["source"]).name for r in reports] == [f.name for f in files]
    for report in reports:
        _assert_refused(report, expected[Path(report["source"]).name])


@pytest.mark.parametrize("name", ["nan-literal.json", "node-id-zero-width.json", "edge-cycle.json"])
def test_one_file_alone_exits_1(name, capsys):
    from careflow.cli import main

    assert main(["workflows", "validate", "--json", str(CORPUS / name)]) == 1
    [report] = json.loads(capsys.readouterr().out)
    _assert_refused(report, EXPECTED[name])
