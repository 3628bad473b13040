"""Publish-time template checks cached across processes (the ``templates`` cache, 1 h).

The key is the sha256 of the checker's fingerprint (schema version and the source of
``careflow.templates`` and ``careflow.workflow``), the channel, the subject and the template, so a
changed template or checker is a new key. An entry carries a checksum and names its key; an
unsound entry (corrupted, truncated, filed under another key, an unknown code) is dropped and the
template is checked again. A cached "no problem" never lets a template past the sandbox: every
render compiles and polices the template itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from careflow.templates import codes, limits

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
TEMPLATES_TTL = 3600.0
#: Codes whose answer depends on the moment (a render budget), not on the template: never cached.
UNCACHED_CODES = frozenset({codes.RENDER_TIMEOUT})
KNOWN_CODES = frozenset(v for k, v in vars(codes).items() if k.isupper() and isinstance(v, str))

Problem = tuple[str, str, str]


def _cache() -> Any:
    from careflow.workflow.report_cache import optional_cache

    return optional_cache("templates", TEMPLATES_TTL)


def key(source: Any, channel: Any, subject: Any) -> str | None:
    """The cache key of one check, or None when the input is not worth caching (not text, too long)."""
    if not isinstance(source, str) or not isinstance(channel, str) or len(source) > limits.MAX_SOURCE_CHARS:
        return None
    if subject is not None and (not isinstance(subject, str) or len(subject) > limits.MAX_SOURCE_CHARS):
        return None
    from careflow.workflow.report_cache import validator_fingerprint

    parts = [validator_fingerprint(), channel, "-" if subject is None else "+" + subject, source]
    return hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogatepass")).hexdigest()


def encode_entry(entry_key: str, problems: list[Problem]) -> str:
    """A checksum line, then the JSON body that names its key."""
    from careflow.workflow.report_cache import sealed

    body = json.dumps({"format": ENTRY_FORMAT, "key": entry_key, "problems": problems}, ensure_ascii=False)
    return sealed(body)


def decode_entry(entry_key: str, text: Any) -> list[Problem] | None:
    """The problems of a sound entry for ``entry_key``; None when the entry is not sound."""
    from careflow.workflow.report_cache import opened

    data = opened(text, entry_key, ENTRY_FORMAT)
    if data is None:
        return None
    items = data.get("problems")
    if not isinstance(items, list):
        return None
    problems: list[Problem] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) and x for x in item)):
            return None
        if item[0] not in KNOWN_CODES or item[2] not in ("template", "subject"):
            return None
        problems.append((item[0], item[1], item[2]))
    return problems


def lookup(entry_key: str | None) -> list[Problem] | None:
    """The cached problems (possibly none) for a key; None on a miss, an unsound entry or no cache."""
    if entry_key is None:
        return None
    from careflow.resilience.cache import read_sound_entry

    problems: list[Problem] | None = read_sound_entry(_cache, entry_key, decode_entry, label="templates")
    return problems


def store(entry_key: str | None, problems: list[Problem]) -> None:
    """Cache a check's answer (never raises)."""
    if entry_key is None or any(code in UNCACHED_CODES for code, _, _ in problems):
        return
    try:
        cache = _cache()
        if cache is not None:
            cache.set(entry_key, encode_entry(entry_key, problems))
    except Exception as exc:
        log.debug("templates cache unavailable: %s", type(exc).__name__)
