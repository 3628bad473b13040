"""What a published workflow may hold: finite numbers and text that UTF-8 can write.

JSON lets a document say two things a published version cannot keep: ``1e999`` reads as
infinity, which JSON writes back as null (the published rule would compare with nothing), and an
escaped lone surrogate (``"\\ud83d"``, half of an emoji cut off) is text UTF-8 cannot encode, so
hashing or storing the version fails. An escaped NUL (``"\\u0000"``) is text Postgres cannot
store, in careflow's tables or in Airflow's (a label becomes a task's display name, and one DAG
that cannot be written there keeps every DAG of its file out). Validation refuses all three
where they are written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from careflow.workflow.field_errors import show


def scalar_problem(value: Any) -> str | None:
    """Why one number or text cannot be published, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return (
            "the number cannot be stored (it is infinite, or not a number); write an ordinary "
            f"number such as 65 — got {show(value)}"
        )
    if isinstance(value, str) and not encodable(value):
        return (
            "the text holds a broken character (half of an emoji or symbol, e.g. cut off when "
            f"pasted); type it again — got {show(value)}"
        )
    if isinstance(value, str) and "\x00" in value:
        return (
            "the text holds an invisible NUL character (code 0, e.g. pasted from another program), "
            f"which databases cannot store; type it again — got {show(value)}"
        )
    return None


def encodable(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problems(data: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """``(location, reason)`` of every value in ``data`` (dicts, lists, scalars) that cannot be published."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, loc)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                reason = scalar_problem(key)
                if reason:
                    yield where, reason
                stack.append((item, (*where, key)))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, (*where, index)) for index, item in enumerate(value))
        else:
            reason = scalar_problem(value)
            if reason:
                yield where, reason
