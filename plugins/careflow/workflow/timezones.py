"""Timezone names, checked against the IANA database that ships with Python."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: Files of a zoneinfo directory that name no place: whatever this machine's clock is set to
#: (``localtime``), the rules of some other zone (``posixrules``), no offset (``Factory``), and the
#: ``posix/`` and ``right/`` copies of the database (the latter counts leap seconds). Each opens on
#: a Linux machine, and each would time a clinic's messages by the machine that runs them.
_NOT_PLACES = frozenset({"localtime", "posixrules", "factory"})
_COPIES = ("posix/", "right/")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name such as ``Asia/Seoul`` (ValueError when unknown).

    Names of a zoneinfo directory that stand for no place (``localtime``, ``posixrules``,
    ``Factory``, ``posix/…``, ``right/…``) are unknown too.
    """
    if name.lower() in _NOT_PLACES or name.lower().startswith(_COPIES):
        raise ValueError(
            f"timezone {name!r} names no place (it depends on the machine, or is a copy of the "
            "database): use an IANA name such as 'Asia/Seoul'"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as 'Asia/Seoul'") from exc


def zone_or(name: object, default: ZoneInfo) -> ZoneInfo:
    """The zone named ``name`` (blanks around it dropped, as the facts read it), or ``default``
    when it is empty, not text or not a known zone."""
    if not isinstance(name, str) or not name.strip():
        return default
    try:
        return zone(name.strip())
    except ValueError:
        return default


def check_timezone(name: str) -> None:
    """Raise ValueError when ``name`` is not a known IANA timezone."""
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise ValueError(f"unknown timezone {name!r}: use an IANA name such as 'Asia/Seoul'")
    zone(name)
