"""Timezone names, checked against the IANA database that ships with Python."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name such as ``Asia/Seoul`` (ValueError when unknown)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as 'Asia/Seoul'") from exc


def zone_or(name: object, default: ZoneInfo) -> ZoneInfo:
    """The zone named ``name``, or ``default`` when it is empty, not text or not a known zone."""
    if not isinstance(name, str) or not name:
        return default
    try:
        return zone(name)
    except ValueError:
        return default


def check_timezone(name: str) -> None:
    """Raise ValueError when ``name`` is not a known IANA timezone."""
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as 'Asia/Seoul'")
    zone(name)
