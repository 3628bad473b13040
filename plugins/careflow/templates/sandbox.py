"""The Jinja2 environment message templates run in.

An immutable sandbox with no globals, no loader, strict undefined variables, autoescape off (SMS
and KakaoTalk texts are not HTML), only careflow's filters and tests. Attribute access is
narrowed to what templates need: keys of the context dicts and ``loop.<x>``; a dict's methods
(``patient.attributes.items``) are never reached, so a clinic attribute named ``items`` reads
the attribute. Calls and arithmetic are refused here too, behind the policy that refuses them
before compiling.

A fact missing from a record (``clinic.phone`` absent) is an error wherever it is used. Clinic
attributes are free-form, so a key or list item missing under them is normal: it is false in a
test (``{% if patient.attributes.vip %}``) and an error anywhere else (printed, looped over,
filtered), so a message is never sent with a hole in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Undefined, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from careflow.exceptions import TemplateError
from careflow.templates import codes
from careflow.templates.budget import LOOP_GUARD, loop_guard
from careflow.templates.filters import (
    FILTERS,
    TESTS,
    MissingValue,
    format_datetime,
    local_datetime,
    recipient_zone,
)
from careflow.templates.policy import LOOP_ATTRIBUTES
from careflow.templates.sample import AttributeSample


class Record(dict[str, Any]):
    """One of the records a template reads (``patient``, ``appointment``, ``clinic``, ``event``).

    Only its keys are catalog facts: below it (clinic attributes, the items of their lists) the
    data is free-form, and a key missing there is a :class:`MissingAttribute`.
    """


class MissingAttribute(StrictUndefined):
    """A key or list item missing from clinic attributes: false in a test, an error anywhere else."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]
        return False


class MessageSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: context dicts by key, ``loop.<x>``, nothing else."""

    # Every binary operator goes through call_binop, which refuses it.
    intercepted_binops = frozenset({"*", "**", "/", "//", "%", "+", "-"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # A fact of a record (most of what a template reads): the checks below, answered at once.
        if (
            obj.__class__ is Record
            and attribute.__class__ is str
            and attribute in obj
            and not attribute.startswith("_")
        ):
            return obj[attribute]
        if isinstance(obj, Undefined):
            return obj  # keep the first missing name for the error message
        if isinstance(attribute, str) and not attribute.startswith("_"):
            if isinstance(obj, Mapping):
                if attribute in obj:
                    return obj[attribute]
            elif isinstance(obj, LoopContext) and attribute in LOOP_ATTRIBUTES:
                return getattr(obj, attribute)
            elif isinstance(obj, AttributeSample):
                return AttributeSample(attribute)  # publish time: whatever the real item holds
            if not isinstance(obj, (Record, LoopContext)):
                return MissingAttribute(obj=obj, name=attribute)
        return self.undefined(obj=obj, name=attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, (Mapping, AttributeSample)) and isinstance(argument, str):
            return self.getattr(obj, argument)
        if isinstance(argument, int) and not isinstance(argument, bool):
            if isinstance(obj, AttributeSample):
                return obj  # publish time: an item of a clinic list, standing in like the list
            if isinstance(obj, (list, tuple, str)):
                try:
                    return obj[argument]
                except IndexError:
                    pass
            if isinstance(obj, (list, tuple)):
                # Lists only ever come from clinic attributes.
                return MissingAttribute(obj=obj, name=argument)  # type: ignore[arg-type]
        return self.undefined(obj=obj, name=argument)

    # Jinja's own signature (dunder names keep template kwargs from clashing with ours).
    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        raise SecurityError("calling functions or methods is not allowed in message templates")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        raise SecurityError(f"the operator {operator!r} is not allowed in message templates")


#: The filter each part of a ``~`` join goes through, so that it prints as ``{{ x }}`` would (a
#: join's parts do not pass through ``finalize``); not a valid identifier: no template can name it.
CONCAT_PART = "careflow-concat-part"


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """What ``{{ x }}`` and each part of ``a ~ b`` print: missing values refused, dates in the
    recipient's timezone, groups and lists refused (Python's own spelling of them is no message)."""
    if value.__class__ is str:  # most of what a message prints: none of the cases below
        return value
    if value is None:
        raise MissingValue()
    if isinstance(value, (datetime, date)):
        return format_datetime(
            local_datetime(value, recipient_zone(context), "print"),
            "%Y-%m-%d %H:%M" if isinstance(value, datetime) else "%Y-%m-%d",
        )
    if isinstance(value, Mapping):
        raise TemplateError(
            codes.RENDER_FAILED, "a group of values cannot be printed as a whole; print one of its fields"
        )
    if isinstance(value, (list, tuple)):
        raise TemplateError(
            codes.RENDER_FAILED,
            "a list cannot be printed as a whole; print one of its items, or join them: | join(', ')",
        )
    return value


@lru_cache(maxsize=1)
def environment() -> MessageSandbox:
    """The one shared sandbox (Jinja environments are safe to render from many threads)."""
    env = MessageSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        # Block tags on their own line leave no blank line behind in the message.
        trim_blocks=True,
        lstrip_blocks=True,
        loader=None,
        cache_size=0,
        auto_reload=False,
    )
    env.globals.clear()
    env.filters.clear()
    env.filters.update({name: function for name, (function, _) in FILTERS.items()})
    env.filters[LOOP_GUARD] = loop_guard
    env.filters[CONCAT_PART] = _finalize
    env.tests.clear()
    env.tests.update(TESTS)
    return env
