"""How a rule's text is read as a date or a date and time: one reading for validation and the engine.

Only text shaped like an ISO date is read, so ``20260314``, a week date (``2026-W11-1``) or a
phone number never is: ``2026-03-14`` is a date; ``2026-03-14T09:00`` (``T`` or a space, seconds,
fraction and offset optional) a date and time. A date and time without an offset, or a date read
as a date and time (midnight), is UTC.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_date(text: str) -> date | None:
    """The date of ``YYYY-MM-DD`` text (spaces around it allowed), or None."""
    text = text.strip()
    if not _ISO_DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_datetime(text: str) -> datetime | None:
    """The moment of an ISO date or date-and-time text, timezone-aware (UTC when unsaid), or None."""
    text = text.strip()
    if not (_ISO_DATE.match(text) or _ISO_DATETIME.match(text)):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
