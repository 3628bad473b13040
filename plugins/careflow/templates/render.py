"""Compiling (cached), rendering and publish-time checking of message templates."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import new_context

from careflow.exceptions import TemplateError
from careflow.templates import codes, limits
from careflow.templates.budget import LOOP_GUARD, RenderBudget, current_budget
from careflow.templates.filters import MissingValue
from careflow.templates.policy import (
    MAX_INT_DIGITS,
    ROOTS,
    SURROGATE,
    SURROGATE_PROBLEM,
    Analysis,
    analyse,
)
from careflow.templates.sample import publish_context
from careflow.templates.sandbox import CONCAT_PART, Record, environment
from careflow.workflow.facts import ATTRIBUTE_PREFIXES

#: Compiled templates kept in memory (most recently used first out of the door last).
CACHE_SIZE = 512


@dataclass(frozen=True)
class TemplateProblem:
    """One reason a template cannot be published; ``field`` is "template" or "subject"."""

    code: str
    message: str
    field: str


@dataclass(frozen=True, eq=False)
class CompiledTemplate:
    """A template that passed the sandbox policy, ready to render."""

    sha256: str
    template: Template
    fact_paths: frozenset[str]  # the catalog facts it reads
    loop_paths: frozenset[str]  # the facts its for loops go over
    #: what a template that only prints text and facts (``{{ patient.name }}님``) is made of, in
    #: order: its text, and ``(record, fact)`` for each fact it prints; None for any other template
    parts: tuple[str | tuple[str, str], ...] | None = None
    _globals: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # What Jinja's Template.generate reads out of a ChainMap twice a render, copied once.
        object.__setattr__(self, "_globals", dict(self.template.globals))

    def render(self, context: Mapping[str, Any]) -> str:
        """The rendered text; TemplateError on a missing value, a refused construct or a blown budget."""
        return _render(self, context)

    def generate(self, variables: dict[str, Any]) -> Generator[str, None, None]:
        """``Template.generate(**variables)``, with the template's globals read from a plain dict."""
        template, names = self.template, self._globals
        context = new_context(
            template.environment, template.name, template.blocks, {**names, **variables}, True, names
        )
        try:
            yield from template.root_render_func(context)
        except Exception:
            yield template.environment.handle_exception()


class _CompileCache:
    """A small thread-safe LRU of compiled templates keyed by the sha256 of their source."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, CompiledTemplate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CompiledTemplate | None:
        with self._lock:
            compiled = self._items.get(key)
            if compiled is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return compiled

    def put(self, key: str, compiled: CompiledTemplate) -> None:
        with self._lock:
            self._items[key] = compiled
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._items)}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


_cache = _CompileCache(CACHE_SIZE)


def cache_info() -> dict[str, int]:
    """Compile-cache counters: ``{"hits", "misses", "size"}``."""
    return _cache.info()


def clear_cache() -> None:
    """Empty the compile cache and reset its counters."""
    _cache.clear()


# --- compiling ---------------------------------------------------------------------------------


def _parse(source: Any) -> nodes.Template:
    if not isinstance(source, str):
        raise TemplateError(codes.SYNTAX, "a message template must be text")
    if len(source) > limits.MAX_SOURCE_CHARS:
        raise TemplateError(
            codes.TOO_LONG,
            f"the template is {len(source)} characters, over the limit of {limits.MAX_SOURCE_CHARS}",
        )
    surrogate = SURROGATE.search(source)
    if surrogate:
        raise TemplateError(codes.SYNTAX, _where(source, surrogate.start()) + SURROGATE_PROBLEM)
    try:
        return environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(codes.SYNTAX, f"line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateError(codes.SYNTAX, "the template is nested too deeply") from None
    except (ValueError, OverflowError):
        # Jinja reads number literals with int(), which refuses more than 4,300 digits.
        runs = (run for run in re.finditer(r"[0-9_]+", source) if len(run.group()) > MAX_INT_DIGITS)
        number = next(runs, None)
        where = _where(source, number.start()) if number else ""
        raise TemplateError(codes.SYNTAX, f"{where}a number in the template is too long") from None


def _where(source: str, offset: int) -> str:
    line = source.count("\n", 0, offset) + 1
    return f"line {line}: "


def _analysis(source: Any) -> tuple[nodes.Template, Analysis]:
    tree = _parse(source)
    return tree, analyse(tree)


def compile_template(source: str) -> CompiledTemplate:
    """Check ``source`` against the sandbox policy and compile it (cached by its sha256).

    Raises TemplateError: TEMPLATE_TOO_LONG, TEMPLATE_SYNTAX, TEMPLATE_UNSAFE or
    TEMPLATE_UNKNOWN_VARIABLE (the first problem found; ``check_template`` lists them all).
    """
    if isinstance(source, str) and len(source) <= limits.MAX_SOURCE_CHARS:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        compiled = _cache.get(key)
        if compiled is not None:
            return compiled
    else:
        _parse(source)  # raises the right error for non-text or over-long sources
    tree, analysis = _analysis(source)
    if analysis.problems:
        first = analysis.problems[0]
        more = len(analysis.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise TemplateError(first.code, first.message + suffix)
    try:
        _guard_loops(tree)  # walks the tree: a chain of a thousand attributes is as deep
        template = environment().from_string(tree)
    except RecursionError:
        raise TemplateError(
            codes.SYNTAX,
            "the template nests too deeply to be compiled: shorten its chains of names or brackets",
        ) from None
    except (TemplateSyntaxError, SyntaxError, MemoryError) as exc:
        raise TemplateError(codes.SYNTAX, f"the template cannot be compiled ({type(exc).__name__})") from None
    compiled = CompiledTemplate(
        key, template, frozenset(analysis.fact_paths), frozenset(analysis.loop_paths), _plain_parts(tree)
    )
    _cache.put(key, compiled)
    return compiled


def _plain_parts(tree: nodes.Template) -> tuple[str | tuple[str, str], ...] | None:
    """The parts of a template made only of text and ``{{ record.fact }}``; None for any other.

    Most message templates are such (a greeting, a name, the clinic's name), and for them the
    text is the parts joined, each fact as the sandbox prints a text: as it is. Read from the
    parsed tree, so the text is what Jinja outputs (its whitespace rules already applied).
    """
    parts: list[str | tuple[str, str]] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for child in statement.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
            elif (
                isinstance(child, nodes.Getattr)
                and isinstance(child.node, nodes.Name)
                and child.node.name in ROOTS
                and child.node.ctx == "load"
                and not child.attr.startswith("_")
            ):
                parts.append((child.node.name, child.attr))
            else:
                return None
    return tuple(parts)


def _guard_loops(tree: nodes.Template) -> None:
    """Route every for loop's list through the loop guard, which bounds its length and the budget,
    and every part of a ``~`` join through what ``{{ }}`` applies to what it prints."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
    for join in tree.find_all(nodes.Concat):
        join.nodes = [
            part
            if isinstance(part, nodes.Const) and isinstance(part.value, str)
            else nodes.Filter(part, CONCAT_PART, [], [], None, None, lineno=join.lineno)
            for part in join.nodes
        ]
    tree.set_environment(environment())


# --- rendering ---------------------------------------------------------------------------------


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on (Jinja rewrites tracebacks to point there)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _resolve(context: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = context
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _missing_message(compiled: CompiledTemplate, context: Mapping[str, Any], exc: BaseException) -> str:
    """Name the fact that has no value for this recipient (paths only, never patient data)."""
    missing = []
    for path in sorted(compiled.fact_paths | compiled.loop_paths):
        found, value = _resolve(context, path)
        if not found or value is None:
            missing.append(path)
    # Prefer the path the error is about: Jinja names the key it could not find.
    named = set(re.findall(r"'([A-Za-z0-9_]+)'", str(exc))) if isinstance(exc, UndefinedError) else set()
    missing.sort(key=lambda path: path.rsplit(".", 1)[-1] not in named)  # stable: named ones first
    line = _template_line(exc)
    where = f"line {line}: " if line else ""
    if missing:
        path = missing[0]
        # A missing clinic attribute is false in a test; a missing fact is an error even there.
        test = path if path.startswith(ATTRIBUTE_PREFIXES) else f"{path} is defined and {path}"
        return (
            f"{where}'{path}' has no value for this recipient; "
            f"guard it with {{% if {test} %}} or use | default('...')"
        )
    if isinstance(exc, UndefinedError):
        return f"{where}a value the template uses is missing ({exc.message})"
    return f"{where}a value the template uses is empty for this recipient; use | default('...')"


_ABSENT = object()


def _join_plain(parts: tuple[str | tuple[str, str], ...], context: Mapping[str, Any]) -> str | None:
    """A plain template's text (:func:`_plain_parts`), or None when a fact it prints is not text.

    What the sandbox prints of a fact that is a ``str`` is that text. Anything else (a missing
    record or fact, None, a date, a number) is left to the sandbox, which prints or refuses it.
    """
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        root, name = part
        record = context.get(root)
        if record.__class__ is not dict:
            return None
        value = record.get(name)  # type: ignore[union-attr]
        if value.__class__ is not str:
            return None
        out.append(value)
    return "".join(out)


def _render(compiled: CompiledTemplate, context: Mapping[str, Any]) -> str:
    text = None if compiled.parts is None else _join_plain(compiled.parts, context)
    if text is not None:
        RenderBudget.start().add_output(text)  # the same caps as a render through the sandbox
        _refuse_lone_surrogates(text)
        return text
    variables = {
        root: Record(value) if value.__class__ is dict or isinstance(value, Mapping) else value
        for root in ROOTS
        if (value := context.get(root, _ABSENT)) is not _ABSENT
    }
    budget = RenderBudget.start()
    token = current_budget.set(budget)
    parts: list[str] = []
    stream = compiled.generate(variables)
    try:
        for chunk in stream:
            budget.add_output(chunk)
            parts.append(chunk)
    except TemplateError as exc:
        line = _template_line(exc)
        if line and not exc.message.startswith("line "):
            raise TemplateError(exc.code, f"line {line}: {exc.message}") from None
        raise
    except (UndefinedError, MissingValue) as exc:
        raise TemplateError(codes.UNKNOWN_VARIABLE, _missing_message(compiled, variables, exc)) from None
    except SecurityError as exc:
        raise TemplateError(codes.UNSAFE, str(exc)) from None
    except Exception as exc:  # one recipient's bad data must fail that recipient, not the batch
        line = _template_line(exc)
        where = f"line {line}: " if line else ""
        # The exception's own text may quote patient data: report its kind only.
        raise TemplateError(
            codes.RENDER_FAILED, f"{where}the template could not be rendered ({type(exc).__name__})"
        ) from None
    finally:
        stream.close()
        current_budget.reset(token)
    text = "".join(parts)
    _refuse_lone_surrogates(text)
    return text


def _refuse_lone_surrogates(text: str) -> None:
    if SURROGATE.search(text):
        # Only clinic data brings one this far (the template's own text is checked when it is
        # compiled): the provider would refuse the message, so it fails here, for this recipient.
        raise TemplateError(
            codes.RENDER_FAILED,
            "the message has half of an emoji or other character on its own (a lone surrogate), "
            "which cannot be sent: check the template's text and the clinic data it prints",
        )


def render_message(source: str, context: Mapping[str, Any], *, channel: str) -> str:
    """Render a message body for one recipient at send time.

    Raises TemplateError: the template's own problems (see ``compile_template``), a fact with no
    value for this recipient (TEMPLATE_UNKNOWN_VARIABLE), TEMPLATE_RENDER_TIMEOUT,
    TEMPLATE_OUTPUT_TOO_LARGE, TEMPLATE_EMPTY, or TEMPLATE_CHANNEL_LIMIT when the text does not
    fit the channel (never truncated).
    """
    limits.channel_limit(channel)
    body = compile_template(source).render(context)
    if not body.strip():
        raise TemplateError(codes.EMPTY, "the message is empty for this recipient")
    limits.check_message_size(body, channel)
    return body


def render_subject(source: str, context: Mapping[str, Any]) -> str:
    """Render an email subject: whitespace (newlines included) collapsed to single spaces.

    Same rules as a body; TEMPLATE_CHANNEL_LIMIT past ``SUBJECT_MAX_CHARS`` characters.
    """
    subject = " ".join(compile_template(source).render(context).split())
    if not subject:
        raise TemplateError(codes.EMPTY, "the email subject is empty for this recipient")
    limits.check_subject_size(subject)
    return subject


# --- publish-time check ------------------------------------------------------------------------


def _check_one(
    source: Any, field: str, render: Callable[[str, dict[str, Any]], str]
) -> list[TemplateProblem]:
    try:
        compiled = compile_template(source)
    except TemplateError as exc:
        if exc.code in (codes.UNSAFE, codes.UNKNOWN_VARIABLE, codes.SYNTAX):
            try:  # list every problem, not only the first
                _, analysis = _analysis(source)
                if analysis.problems:
                    return [TemplateProblem(p.code, p.message, field) for p in analysis.problems]
            except TemplateError:
                pass
        return [TemplateProblem(exc.code, exc.message, field)]
    try:
        render(source, publish_context(compiled.fact_paths, compiled.loop_paths))
    except TemplateError as exc:
        if exc.code == codes.EMPTY and _loops_can_print(_parse(source)):
            return []  # the sample's lists are empty: the message may well come from its loops
        return [TemplateProblem(exc.code, exc.message, field)]
    return []


def _loops_can_print(tree: nodes.Template) -> bool:
    """Whether the body of some for loop prints a value or text other than whitespace."""
    for loop in tree.find_all(nodes.For):
        for statement in loop.body:
            outputs = [statement] if isinstance(statement, nodes.Output) else []
            for output in [*outputs, *statement.find_all(nodes.Output)]:
                if any(
                    not isinstance(child, nodes.TemplateData) or child.data.strip() for child in output.nodes
                ):
                    return True
    return False


def check_template(source: str, *, channel: str, subject: str | None = None) -> list[TemplateProblem]:
    """Everything that stops a template from being published; an empty list when it may be.

    Checks the policy and the facts catalog statically, then renders the template against the
    sample context (``careflow.workflow.facts.sample_context``) and checks the channel limit.
    An email needs a subject, checked by the same rules. Never raises for a bad template.

    The answer is cached in the ``templates`` cache (1 h) by the sha256 of the checker's code,
    the channel, the subject and the source; a render that ran out of time is not cached. The
    cache only spares the check: rendering compiles and polices the template again.
    """
    from careflow.templates import check_cache

    key = check_cache.key(source, channel, subject)
    cached = check_cache.lookup(key)
    if cached is not None:
        return [TemplateProblem(code, message, field) for code, message, field in cached]
    problems = _check_template(source, channel=channel, subject=subject)
    check_cache.store(key, [(p.code, p.message, p.field) for p in problems])
    return problems


def _check_template(source: str, *, channel: str, subject: str | None = None) -> list[TemplateProblem]:
    problems: list[TemplateProblem] = []
    try:
        limits.channel_limit(channel)
    except TemplateError as exc:
        problems.append(TemplateProblem(exc.code, exc.message, "template"))
        problems += _check_one(source, "template", lambda s, ctx: compile_template(s).render(ctx))
    else:
        problems += _check_one(source, "template", lambda s, ctx: render_message(s, ctx, channel=channel))
    if channel == "email" and (not isinstance(subject, str) or not subject.strip()):
        problems.append(TemplateProblem(codes.SUBJECT_REQUIRED, "an email needs a subject", "subject"))
    elif subject is not None:
        problems += _check_one(subject, "subject", render_subject)
    return problems
