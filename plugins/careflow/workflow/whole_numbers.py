"""``3.0`` where a whole number is expected is read as ``3``.

JSON has one kind of number, and a builder may write ``"retries": 3.0``; the published JSON
Schema (draft 2020-12) counts it as an integer, so validation does too. ``3.5`` is left as it is
and refused by the strict model check, as before.
"""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel


def whole_numbers(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` where each whole-number float under an integer field of ``model`` (or of
    a model nested in it, such as ``settings.max_lateness``) is an int."""
    out = dict(data)
    for name, info in model.model_fields.items():
        if name not in out:
            continue
        value, annotation = out[name], info.annotation
        if isinstance(value, float) and value.is_integer() and _is_int(annotation):
            out[name] = int(value)
        elif isinstance(value, dict):
            nested = _model_of(annotation)
            if nested is not None:
                out[name] = whole_numbers(nested, value)
    return out


def _options(annotation: Any) -> tuple[Any, ...]:
    """The types of ``X | None`` without None, or ``(annotation,)``."""
    if get_origin(annotation) in (Union, UnionType):
        return tuple(a for a in get_args(annotation) if a is not NoneType)
    return (annotation,)


def _is_int(annotation: Any) -> bool:
    return _options(annotation) == (int,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    options = _options(annotation)
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None
