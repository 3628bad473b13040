"""What a message template may contain, checked on the parsed template before it is compiled.

An allow-list: variable output, attribute and fixed-key access on the four context roots
(``patient``, ``appointment``, ``clinic``, ``event``), ``if/elif/else``, ``for`` over a list in
that data, literals, comparisons, ``and/or/not``, ``~`` and the allow-listed filters. Everything
else is refused with a message that names the construct and the line: calls of any kind (so no
``.format()``, ``range()``, ``.upper()``), arithmetic (no ``'a' * 10**9`` or ``'%s' % x``),
``include``/``import``/``extends``/``block``/``macro``/``call``/``set``/``with``/``filter``
blocks, names other than the roots, and any attribute or key starting with ``_``.
Every fact path a template reads must be in the facts catalog. Text no provider can send (a lone
surrogate) and numbers too large to print are refused too.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from jinja2 import nodes

from careflow.exceptions import TemplateError
from careflow.templates import codes, limits
from careflow.templates.filters import FILTERS, TESTS, check_format
from careflow.workflow.facts import FACTS, is_known_fact

ROOTS = ("patient", "appointment", "clinic", "event")

#: What ``loop.<x>`` may read inside a for loop.
LOOP_ATTRIBUTES = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length"})

#: Expression nesting deeper than this is refused (it only ever comes from generated attacks).
MAX_DEPTH = 40

#: Half of a UTF-16 pair on its own (``'\ud83d'``): not a character, so no provider can send it.
SURROGATE = re.compile(r"[\ud800-\udfff]")
SURROGATE_PROBLEM = (
    "the template has half of an emoji or other character on its own (a lone surrogate such as "
    "'\\ud83d'), which cannot be sent; write the character itself or its full escape ('\\U0001F600')"
)

#: Python reads and prints integers of at most this many digits (``sys.get_int_max_str_digits``):
#: a longer number is refused.
MAX_INT_DIGITS = 4300
_TOO_LARGE = 10**MAX_INT_DIGITS

_BLOCKS: dict[type[nodes.Node], str] = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.FilterBlock: "{% filter %}",
    nodes.With: "{% with %}",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %}",
    nodes.ExprStmt: "{% do %}",
    nodes.Scope: "a scoped block",
    nodes.OverlayScope: "a scoped block",
    nodes.EvalContextModifier: "{% autoescape %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.Break: "{% break %}",
    nodes.Continue: "{% continue %}",
}

_OPERATORS: dict[type[nodes.Node], str] = {
    nodes.Mul: "'*'",
    nodes.Pow: "'**'",
    nodes.Div: "'/'",
    nodes.FloorDiv: "'//'",
    nodes.Add: "'+'",
    nodes.Sub: "'-'",
}

#: Filters whose arguments must be written as literals, and the check each literal gets.
_INT_ARGUMENTS = {"truncate": (0, 1, 10_000), "round": (0, 0, 6)}  # filter: (arg index, min, max)


@dataclass
class Analysis:
    """What the policy found in one template."""

    problems: list[TemplateError] = field(default_factory=list)
    fact_paths: set[str] = field(default_factory=set)  # every catalog fact the template reads
    loop_paths: set[str] = field(default_factory=set)  # the facts for loops go over


def analyse(template: nodes.Template) -> Analysis:
    """Check a parsed template against the policy; never raises for what the template contains."""
    walker = _Walker()
    try:
        walker.statements(template.body, frozenset(), 0)
    except RecursionError:
        walker.refuse(template, codes.UNSAFE, "the template is nested too deeply")
    return walker.analysis


def _line(node: nodes.Node) -> str:
    return f"line {getattr(node, 'lineno', None) or 1}: "


class _Walker:
    def __init__(self) -> None:
        self.analysis = Analysis()
        self._seen: set[tuple[str, str]] = set()

    def refuse(self, node: nodes.Node, code: str, message: str) -> None:
        text = _line(node) + message
        if (code, text) not in self._seen:
            self._seen.add((code, text))
            self.analysis.problems.append(TemplateError(code, text))

    # --- statements ------------------------------------------------------------------------

    def statements(self, body: Sequence[nodes.Node], scope: frozenset[str], loops: int) -> None:
        for node in body:
            self.statement(node, scope, loops)

    def statement(self, node: nodes.Node, scope: frozenset[str], loops: int) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if not isinstance(child, nodes.TemplateData):
                    self.expr(child, scope, 0)
        elif isinstance(node, nodes.If):
            self.expr(node.test, scope, 0)
            self.statements(node.body, scope, loops)
            self.statements(node.elif_, scope, loops)
            self.statements(node.else_, scope, loops)
        elif isinstance(node, nodes.For):
            self.for_loop(node, scope, loops)
        elif isinstance(node, (nodes.Scope, nodes.OverlayScope)):
            # {% autoescape %} parses to a scope around the real construct: name that one.
            inner = next((child for child in node.body if type(child) in _BLOCKS), None)
            if inner is not None:
                self.statement(inner, scope, loops)
            else:
                self.refuse(node, codes.UNSAFE, "a scoped block is not allowed in message templates")
        elif type(node) in _BLOCKS:
            self.refuse(node, codes.UNSAFE, f"{_BLOCKS[type(node)]} is not allowed in message templates")
        else:
            self.refuse(node, codes.UNSAFE, f"'{type(node).__name__}' is not allowed in message templates")

    def for_loop(self, node: nodes.For, scope: frozenset[str], loops: int) -> None:
        if loops >= limits.MAX_LOOP_NESTING:
            self.refuse(node, codes.UNSAFE, f"for loops may be nested at most {limits.MAX_LOOP_NESTING} deep")
            return
        if node.recursive:
            self.refuse(node, codes.UNSAFE, "recursive for loops are not allowed")
        targets = node.target.items if isinstance(node.target, nodes.Tuple) else [node.target]
        names = []
        for target in targets:
            name = getattr(target, "name", None)
            if not isinstance(target, nodes.Name) or not name:
                self.refuse(node, codes.UNSAFE, "a for loop needs a plain name: {% for item in ... %}")
            elif name.startswith("_") or name in ROOTS or name == "loop":
                self.refuse(node, codes.UNSAFE, f"'{name}' cannot be used as a loop variable name")
            else:
                names.append(name)
        if isinstance(node.iter, (nodes.Name, nodes.Getattr, nodes.Getitem)):
            path = self.access(node.iter, scope, 0)
            if path is not None:
                self.analysis.loop_paths.add(path)
        else:
            self.refuse(
                node,
                codes.UNSAFE,
                "a for loop can only go over a list in the patient, appointment, clinic or event data",
            )
            self.expr(node.iter, scope, 0)
        inner = scope | frozenset(names) | {"loop"}
        if node.test is not None:
            self.expr(node.test, inner, 0)
        self.statements(node.body, inner, loops + 1)
        self.statements(node.else_, scope, loops)

    # --- expressions -----------------------------------------------------------------------

    def expr(self, node: nodes.Node, scope: frozenset[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            self.refuse(node, codes.UNSAFE, "the expression is nested too deeply")
            return
        depth += 1
        if isinstance(node, nodes.Const):
            self.const(node)
            return
        if isinstance(node, (nodes.Name, nodes.Getattr, nodes.Getitem)):
            self.access(node, scope, depth)
        elif isinstance(node, (nodes.Tuple, nodes.List)):
            for item in node.items:
                self.expr(item, scope, depth)
        elif isinstance(node, nodes.CondExpr):
            for child in (node.test, node.expr1, node.expr2):
                if child is not None:
                    self.expr(child, scope, depth)
        elif isinstance(node, nodes.Filter):
            self.filter(node, scope, depth)
        elif isinstance(node, nodes.Test):
            if node.name not in TESTS:
                allowed = ", ".join(TESTS)
                self.refuse(node, codes.UNSAFE, f"the test 'is {node.name}' is not available; use {allowed}")
            if node.args or node.kwargs or node.dyn_args or node.dyn_kwargs:
                self.refuse(node, codes.UNSAFE, f"the test 'is {node.name}' takes no arguments")
            self.expr(node.node, scope, depth)
        elif isinstance(node, nodes.Compare):
            self.expr(node.expr, scope, depth)
            for operand in node.ops:
                self.expr(operand.expr, scope, depth)
        elif isinstance(node, nodes.Concat):
            for child in node.nodes:
                self.expr(child, scope, depth)
        elif isinstance(node, (nodes.And, nodes.Or)):
            self.expr(node.left, scope, depth)
            self.expr(node.right, scope, depth)
        elif isinstance(node, (nodes.Not, nodes.Neg, nodes.Pos)):
            self.expr(node.node, scope, depth)
        elif isinstance(node, nodes.Call):
            self.refuse(node, codes.UNSAFE, f"calling {_describe_call(node)} is not allowed; use a filter")
            for child in (node.node, *node.args, *(k.value for k in node.kwargs)):
                self.expr(child, scope, depth)
        elif isinstance(node, nodes.Mod):
            self.refuse(node, codes.UNSAFE, "'%' formatting is not allowed; join text with ~")
            self.expr(node.left, scope, depth)
            self.expr(node.right, scope, depth)
        elif isinstance(node, nodes.BinExpr) and type(node) in _OPERATORS:
            self.refuse(
                node,
                codes.UNSAFE,
                f"arithmetic ({_OPERATORS[type(node)]}) is not allowed in message templates; join text with ~",
            )
            self.expr(node.left, scope, depth)
            self.expr(node.right, scope, depth)
        elif isinstance(node, nodes.Dict):
            self.refuse(node, codes.UNSAFE, "dictionary literals are not allowed in message templates")
        else:
            self.refuse(node, codes.UNSAFE, f"'{type(node).__name__}' is not allowed in message templates")

    def const(self, node: nodes.Const) -> None:
        value = node.value
        if isinstance(value, str) and SURROGATE.search(value):
            self.refuse(node, codes.SYNTAX, SURROGATE_PROBLEM)
        elif (isinstance(value, int) and abs(value) >= _TOO_LARGE) or (
            isinstance(value, float) and not math.isfinite(value)  # 1e999 reads as infinity
        ):
            self.refuse(node, codes.SYNTAX, "a number in the template is too large")

    def filter(self, node: nodes.Filter, scope: frozenset[str], depth: int) -> None:
        known = node.name in FILTERS
        if not known:
            allowed = ", ".join(FILTERS)
            self.refuse(
                node, codes.UNSAFE, f"the filter '{node.name}' is not available; use one of {allowed}"
            )
        if node.node is not None:
            self.expr(node.node, scope, depth)
        for arg in node.args:
            self.expr(arg, scope, depth)
        if not known:
            return
        if node.kwargs or node.dyn_args or node.dyn_kwargs:
            self.refuse(node, codes.UNSAFE, f"write the arguments of '{node.name}' in order, without names")
            return
        most = FILTERS[node.name][1]
        if len(node.args) > most:
            self.refuse(node, codes.SYNTAX, f"the filter '{node.name}' takes at most {most} argument(s)")
            return
        # Arguments that shape the output must be literals, so they are checked here, once.
        if node.name in ("date", "time") and node.args:
            fmt = node.args[0]
            if not (isinstance(fmt, nodes.Const) and isinstance(fmt.value, str)):
                self.refuse(
                    node,
                    codes.UNSAFE,
                    f"the format of '{node.name}' must be written as text, e.g. '%m월 %d일'",
                )
            else:
                try:
                    check_format(fmt.value)
                except TemplateError as exc:
                    self.refuse(node, exc.code, exc.message)
        if (
            node.name == "join"
            and node.args
            and not (isinstance(node.args[0], nodes.Const) and isinstance(node.args[0].value, str))
        ):
            self.refuse(node, codes.UNSAFE, "the separator of 'join' must be written as text, e.g. ', '")
        if (
            node.name == "truncate"
            and len(node.args) > 1
            and not (isinstance(node.args[1], nodes.Const) and isinstance(node.args[1].value, str))
        ):
            self.refuse(node, codes.UNSAFE, "the ending of 'truncate' must be written as text, e.g. '…'")
        if node.name in _INT_ARGUMENTS:
            index, low, high = _INT_ARGUMENTS[node.name]
            if len(node.args) > index:
                arg = node.args[index]
                value = arg.value if isinstance(arg, nodes.Const) else None
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                    self.refuse(
                        node, codes.UNSAFE, f"'{node.name}' needs a whole number from {low} to {high}"
                    )

    def access(self, node: nodes.Node, scope: frozenset[str], depth: int) -> str | None:
        """Check a variable path; the catalog fact it reads (None for loop variables or refusals)."""
        keys: list[str | None] = []  # outermost last; None for a list index or slice
        base = node
        ok = True
        while isinstance(base, (nodes.Getattr, nodes.Getitem)):
            if isinstance(base, nodes.Getattr):
                key: object = base.attr
            elif isinstance(base.arg, nodes.Const) and isinstance(base.arg.value, (str, int)):
                key = base.arg.value
            elif isinstance(base.arg, nodes.Slice):
                key = None
                for part in (base.arg.start, base.arg.stop, base.arg.step):
                    if part is not None and not (
                        isinstance(part, nodes.Const) and isinstance(part.value, int)
                    ):
                        self.refuse(base, codes.UNSAFE, "slices must use whole numbers, e.g. [0:10]")
                        ok = False
            else:
                self.refuse(
                    base, codes.UNSAFE, "only fixed keys can be looked up, e.g. patient.attributes['grade']"
                )
                self.expr(base.arg, scope, depth + 1)
                key, ok = None, False
            if isinstance(key, str):
                if key.startswith("_"):
                    self.refuse(
                        base, codes.UNSAFE, f"'{key}' cannot be used: names starting with '_' are internal"
                    )
                    ok = False
                keys.append(key)
            else:
                keys.append(None)  # list index (int, not bool) or slice: the fact path ends before it
            base = base.node
        keys.reverse()

        if not isinstance(base, nodes.Name):
            self.refuse(node, codes.UNSAFE, "attributes and keys can only be read from template variables")
            self.expr(base, scope, depth + 1)
            return None
        name = base.name
        if name in scope:
            if name == "loop" and (not keys or keys[0] not in LOOP_ATTRIBUTES or len(keys) > 1):
                allowed = ", ".join(f"loop.{a}" for a in sorted(LOOP_ATTRIBUTES))
                self.refuse(node, codes.UNSAFE, f"inside a for loop use {allowed}")
            return None
        if name not in ROOTS:
            close = difflib.get_close_matches(name, ROOTS, n=1, cutoff=0.75)
            if close:
                self.refuse(
                    node, codes.UNKNOWN_VARIABLE, f"unknown variable '{name}'; did you mean '{close[0]}'?"
                )
            else:
                roots = ", ".join(ROOTS)
                self.refuse(
                    node, codes.UNSAFE, f"'{name}' is not available in message templates; use {roots}"
                )
            return None
        if not ok:
            return None
        parts = [name]
        for key in keys:
            if key is None:
                break
            parts.append(key)
        path = ".".join(parts)
        if len(parts) == 1:
            # The whole record (every field, personal data included) is never printed or walked.
            examples = ", ".join(f for f in FACTS if f.startswith(path + "."))
            self.refuse(node, codes.UNSAFE, f"'{path}' on its own cannot be used; use one of {examples}")
            return None
        if not is_known_fact(path):
            self.refuse(node, codes.UNKNOWN_VARIABLE, _unknown_fact_message(path))
            return None
        self.analysis.fact_paths.add(path)
        return path


def _unknown_fact_message(path: str) -> str:
    close = difflib.get_close_matches(path, list(FACTS), n=1, cutoff=0.6)
    hint = (
        f"; did you mean '{close[0]}'?" if close else "; clinic-specific values are under patient.attributes"
    )
    return f"unknown variable '{path}'{hint}"


def _describe_call(node: nodes.Call) -> str:
    target = node.node
    if isinstance(target, nodes.Name):
        return f"'{target.name}()'"
    if isinstance(target, nodes.Getattr):
        return f"the method '.{target.attr}()'"
    return "a function"
