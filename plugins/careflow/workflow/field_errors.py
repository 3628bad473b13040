"""Pydantic's error dicts, said in words a clinic admin understands."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: The characters an id may hold (its full rule is ``models.ID_PATTERN``).
_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]+")


def field_path(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """``("offset", "amount")`` -> ``"data.offset.amount"``; list indexes as ``[2]``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def show(value: Any, limit: int = 40) -> str:
    """A short, safe rendering of a value a user typed."""
    try:
        text = repr(value) if isinstance(value, str) else _json_like(value)
    except Exception:  # a value we cannot even print must not break validation
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_like(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _choices(expected: str) -> str:
    # pydantic says "'minutes', 'hours', 'days' or 'weeks'"
    return expected.replace("'", "").replace(" or ", ", ")


_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``'unit' must be one of minutes, hours, days, weeks — got 'x'``."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    loc = tuple(error.get("loc") or ())
    name = f"'{field_path(loc)}'" if loc else "this"
    got = f" — got {show(error.get('input'))}"
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"{name} is not a field careflow knows"
    if kind == "literal_error":
        return f"{name} must be one of {_choices(str(ctx.get('expected', '')))}{got}"
    if kind in _TYPE_WORDS:
        return f"{name} must be {_TYPE_WORDS[kind]}{got}"
    if kind == "greater_than_equal":
        return f"{name} must be at least {ctx.get('ge')}{got}"
    if kind == "greater_than":
        return f"{name} must be more than {ctx.get('gt')}{got}"
    if kind == "less_than_equal":
        return f"{name} must be at most {ctx.get('le')}{got}"
    if kind == "less_than":
        return f"{name} must be less than {ctx.get('lt')}{got}"
    if kind == "string_too_short":
        return f"{name} must not be empty" if ctx.get("min_length") == 1 else f"{name} is too short{got}"
    if kind == "string_too_long":
        return f"{name} is too long (at most {ctx.get('max_length')} characters)"
    if kind == "too_long":
        return f"{name} has too many entries (at most {ctx.get('max_length')})"
    if kind == "too_short":
        return f"{name} needs at least {ctx.get('min_length')} entries"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if "[0-5][0-9]" in pattern:
            return f"{name} must be a time of day like 09:00 (00:00-23:59){got}"
        value = error.get("input")
        if isinstance(value, str) and _ID_CHARACTERS.fullmatch(value):
            if not value[0].isalnum():
                return f"{name} must start with a letter or digit{got}"
            return f"{name} is too long (at most 64 characters){got}"
        return (
            f"{name} may only hold letters, digits, '_', '.' and '-', starting with a letter or digit "
            f"(max 64, no spaces){got}"
        )
    if kind == "string_unicode":  # a lone surrogate: half of an emoji, cut off
        return (
            f"{name} holds a broken character (half of an emoji or symbol, e.g. cut off when pasted); "
            f"type it again{got}"
        )
    if kind == "value_error":
        message = str(error.get("msg", ""))
        return message.removeprefix("Value error, ")
    return f"{name}: {error.get('msg', 'invalid value')}{got}"
