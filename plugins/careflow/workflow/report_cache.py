"""Validation reports cached by the sha256 of the raw input (the ``validation`` cache, 10 min).

The key covers the input bytes and a fingerprint of the validator (the schema version and the
source of ``careflow.workflow`` and ``careflow.templates``), so a changed workflow or a changed
validator is a different key: an entry can expire but never go stale.

A cache never decides correctness. An entry carries a checksum and is checked before use: a
corrupted, truncated or foreign entry (wrong format, unknown code, a severity that is not the
code's, a value filed under another input's key) is dropped and validation runs again. The
workflow of an ``ok`` report is always rebuilt from the raw input, never from the cache, and its
content hash must equal the one recorded; the sandbox checks every template again when it
renders it, whatever validation said.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

from careflow.workflow.diagnostics import CODES, Diagnostic
from careflow.workflow.models import SCHEMA_VERSION, Workflow

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
#: Reports with these codes are not cached: they say validation could not answer this time.
UNCACHED_CODES = frozenset({"WF_INTERNAL_ERROR", "ACTION_TEMPLATE_INVALID"})
_FIELDS = ("severity", "code", "message", "node_id", "edge_id", "field")


@cache
def validator_fingerprint() -> str:
    """sha256 of the schema version and of every source file that decides a validation report."""
    digest = hashlib.sha256(f"schema {SCHEMA_VERSION}\n".encode())
    here = Path(__file__).resolve().parent
    for package in (here, here.parent / "templates"):
        for path in sorted(package.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def input_key(raw: Any, max_size: int) -> str | None:
    """The cache key of a raw input (bytes or text); None for anything else (parsed dicts) and for
    inputs over ``max_size`` (refused at once: hashing them would cost more than the refusal).
    """
    if isinstance(raw, (str, bytes, bytearray, memoryview)) and len(raw) > max_size:
        return None
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    else:
        return None
    return hashlib.sha256(validator_fingerprint().encode() + b"\0" + data).hexdigest()


def optional_cache(name: str, ttl_seconds: float) -> Any:
    """``get_cache(name, ttl_seconds)``, or None in a one-shot process that has no use for it.

    A process with no Redis in its environment that has not loaded Airflow or the caches (the
    ``careflow workflows validate`` command) would only fill an in-process cache it exits with,
    after half a second of importing the Redis client.
    """
    configured = "CAREFLOW_REDIS_URL" in os.environ or "AIRFLOW_CONN_CAREFLOW_REDIS" in os.environ
    if not configured and "airflow" not in sys.modules and "careflow.resilience.cache" not in sys.modules:
        return None
    from careflow.resilience.cache import get_cache

    return get_cache(name, ttl_seconds)


def _cache() -> Any:
    return optional_cache("validation", 10 * 60.0)


def sealed(body: str) -> str:
    """What a cache entry stores: a line of the sha256 of ``body`` (a JSON document), then ``body``."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest() + "\n" + body


def opened(text: Any, key: str, entry_format: int) -> dict[str, Any] | None:
    """The JSON document of a :func:`sealed` entry, if it is sound: text whose checksum holds, a JSON
    object of ``entry_format`` that names ``key``. None otherwise (corrupted, truncated, written by
    another release, filed under another key); what the document holds is the caller's to check.
    """
    if not isinstance(text, str):
        return None
    checksum, _, body = text.partition("\n")
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != checksum:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != entry_format or data.get("key") != key:
        return None
    return data


def encode_entry(key: str, workflow_id: str | None, diagnostics: list[Diagnostic], digest: str | None) -> str:
    """The text stored for a report: a checksum line, then the JSON body (which names its key)."""
    body = json.dumps(
        {
            "format": ENTRY_FORMAT,
            "key": key,
            "workflow_id": workflow_id,
            "content_hash": digest,
            "diagnostics": [d.to_dict() for d in diagnostics],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return sealed(body)


def decode_entry(key: str, text: Any) -> tuple[str | None, list[Diagnostic], str | None] | None:
    """(workflow_id, diagnostics, content hash) of a sound entry for ``key``; None when it is not sound."""
    data = opened(text, key, ENTRY_FORMAT)
    if data is None:
        return None
    workflow_id, digest, items = data.get("workflow_id"), data.get("content_hash"), data.get("diagnostics")
    if not isinstance(items, list) or not all(
        isinstance(x, (str, type(None))) for x in (workflow_id, digest)
    ):
        return None
    diagnostics = []
    for item in items:
        if not isinstance(item, dict) or set(item) != set(_FIELDS):
            return None
        if not all(isinstance(item[f], (str, type(None))) for f in _FIELDS):
            return None
        registered = CODES.get(item["code"])
        if registered is None or registered[0] != item["severity"] or not item["message"]:
            return None
        diagnostics.append(Diagnostic(**item))
    has_error = any(d.severity == "error" for d in diagnostics)
    if has_error == (digest is not None):  # an ok report names its content hash, a refused one none
        return None
    return workflow_id, diagnostics, digest


def lookup(key: str) -> tuple[str | None, list[Diagnostic], str | None] | None:
    """A sound cached entry for ``key``, or None (missing, unsound, or the cache unusable)."""
    from careflow.resilience.cache import read_sound_entry

    entry: tuple[str | None, list[Diagnostic], str | None] | None = read_sound_entry(
        _cache, key, decode_entry, label="validation"
    )
    return entry


def rebuild_workflow(document: Any, digest: str) -> Workflow | None:
    """The workflow of an ``ok`` report, from the raw document; None if it is not the one cached."""
    from careflow.compiler.hashing import content_hash

    try:
        workflow = Workflow.model_validate(document)
    except Exception:
        return None
    return workflow if content_hash(workflow) == digest else None


def store(
    key: str, workflow_id: str | None, diagnostics: list[Diagnostic], workflow: Workflow | None
) -> None:
    """Cache a report (never raises). Not cached: a validation that failed, or a template check
    that could not answer (it ran out of time, or the checker failed): those may differ next time.
    """
    if any(d.code in UNCACHED_CODES for d in diagnostics):
        return
    try:
        cache = _cache()
        if cache is None:
            return
        digest = None
        if workflow is not None:
            from careflow.compiler.hashing import content_hash

            digest = content_hash(workflow)
        cache.set(key, encode_entry(key, workflow_id, diagnostics, digest))
    except Exception as exc:
        log.debug("validation cache unavailable: %s", type(exc).__name__)
