"""The facts an execution sees: clinic rows (docs/contracts.md §2) turned into the catalog of ``FACTS``.

Rows are plain dicts of the table columns, as Postgres or SQLite return them, so values are
normalised here and nowhere else:

* datetimes: aware datetimes, naive datetimes (UTC) or ISO strings -> aware UTC datetimes;
* ``birth_date``: a date, a datetime or an ISO string -> a date;
* booleans: bools, 0/1 (SQLite) or "true"/"false"/"t"/"f"/"1"/"0"; null takes the documented
  default (care messages allowed, marketing and night marketing not);
* ``attributes``: a dict or a JSON object string (SQLite stores JSON as text); null -> ``{}``.

Derived facts, computed at the run's ``now``:

* ``patient.timezone``: the patient's, else the clinic's (an unknown name counts as unset);
* ``patient.age``: whole years on the patient's local date (a birthday counts from local
  midnight; 29 February birthdays count from 1 March in other years);
* ``patient.has_upcoming_appointment`` / ``upcoming_appointment_count`` from ``upcoming_count``;
* ``appointment.days_since_completed``: local calendar days between completion and ``now``
  (completed Monday 17:00, it is 3 on Thursday 09:00), None when not completed.

Unreadable values raise ValueError naming the row id and column, never the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import msgspec

from careflow.workflow.timezones import check_timezone, zone

UTC = timezone.utc

_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_FALSE = frozenset({"false", "f", "0", "no", "n"})


@dataclass(frozen=True)
class UnreadableFacts:
    """What stands in for an execution's facts when one of its clinic rows cannot be read.

    ``error`` names the row id and the column, never the value. The node records that execution
    with the reason ``clinic_data_unreadable``; the others of the batch go on.
    """

    error: str

    REASON: ClassVar[str] = "clinic_data_unreadable"


def build_facts(
    *,
    patient: Mapping[str, Any],
    appointment: Mapping[str, Any],
    clinic: Mapping[str, Any],
    event: Mapping[str, Any],
    upcoming_count: int,
    now: datetime,
) -> dict[str, Any]:
    """The nested facts dict (``facts["patient"]["age"]``…) for one execution at ``now``."""
    return BatchFacts(clinic=clinic, now=now).build(
        patient=patient, appointment=appointment, event=event, upcoming_count=upcoming_count
    )


class BatchFacts:
    """:func:`build_facts` for the executions of one batch: one clinic, one ``now``.

    What every execution of the batch shares is worked out once: the clinic's facts, and for each
    timezone its zone and the local date at ``now``. Each execution still gets dicts of its own.
    """

    def __init__(self, *, clinic: Mapping[str, Any], now: datetime) -> None:
        self.now = _aware(now)
        self.clinic_timezone = known_timezone(clinic.get("timezone"))
        self._clinic = {
            "id": _text(clinic.get("id")),
            "name": clinic.get("name"),
            "phone": clinic.get("phone"),
            "timezone": self.clinic_timezone,
        }
        #: a patient row's timezone value -> the known zone name it gives (None: unset or unknown)
        self._known: dict[str, str | None] = {}
        #: a zone name (None: UTC) -> (the zone, the local date at ``now``)
        self._zones: dict[str | None, tuple[tzinfo, date]] = {}

    def build(
        self,
        *,
        patient: Mapping[str, Any],
        appointment: Mapping[str, Any],
        event: Mapping[str, Any],
        upcoming_count: int,
    ) -> dict[str, Any]:
        """The facts of one execution."""
        pid, aid = _row_id("patient", patient), _row_id("appointment", appointment)
        own_tz = self._known_timezone(patient.get("timezone"))
        tz_name = own_tz or self.clinic_timezone
        local = self._zones.get(tz_name)
        if local is None:
            found: tzinfo = zone(tz_name) if tz_name else UTC
            local = self._zones[tz_name] = (found, self.now.astimezone(found).date())
        tz, local_today = local

        birth_date = as_date(patient.get("birth_date"), where=f"{pid}.birth_date")
        completed_at = _utc(appointment.get("completed_at"), aid, "completed_at")
        upcoming = int(upcoming_count)

        return {
            "patient": {
                "id": _text(patient.get("id")),
                "name": patient.get("name"),
                "phone": patient.get("phone"),
                "email": patient.get("email"),
                "birth_date": birth_date,
                "age": age_on(birth_date, local_today) if birth_date else None,
                "timezone": tz_name,
                # the patient's own zone (None: the row has none): what wins over a time window's
                "own_timezone": own_tz,
                "consent_messages": _bool(patient.get("consent_messages"), True, pid, "consent_messages"),
                "consent_marketing": _bool(patient.get("consent_marketing"), False, pid, "consent_marketing"),
                "consent_night_marketing": _bool(
                    patient.get("consent_night_marketing"), False, pid, "consent_night_marketing"
                ),
                "has_upcoming_appointment": upcoming > 0,
                "upcoming_appointment_count": upcoming,
                "attributes": as_attributes(patient.get("attributes"), where=f"{pid}.attributes"),
            },
            "appointment": {
                "id": _text(appointment.get("id")),
                "type": appointment.get("type"),
                "status": appointment.get("status"),
                "scheduled_at": _utc(appointment.get("scheduled_at"), aid, "scheduled_at"),
                "created_at": _utc(appointment.get("created_at"), aid, "created_at"),
                "completed_at": completed_at,
                "days_since_completed": (
                    (local_today - completed_at.astimezone(tz).date()).days if completed_at else None
                ),
                "attributes": as_attributes(appointment.get("attributes"), where=f"{aid}.attributes"),
            },
            "clinic": dict(self._clinic),
            "event": {
                "type": event.get("type"),
                "occurred_at": _utc(event.get("occurred_at"), _row_id("event", event), "occurred_at"),
            },
        }

    def _known_timezone(self, name: Any) -> str | None:
        if not isinstance(name, str):
            return known_timezone(name)
        known = self._known.get(name, _UNSEEN)
        if known is _UNSEEN:
            known = self._known[name] = known_timezone(name)
        return known  # type: ignore[return-value]


_UNSEEN = object()


def patient_timezone(facts: Mapping[str, Any], default: str) -> ZoneInfo:
    """The timezone to read the patient's wall clock in: ``patient.timezone``, else ``default``."""
    patient = facts.get("patient")
    name = patient.get("timezone") if isinstance(patient, Mapping) else None
    return zone(known_timezone(name) or default)


def age_on(birth_date: date, today: date) -> int:
    """Whole years between ``birth_date`` and ``today``."""
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - int(before_birthday)


#: The times careflow reads: a year-1 or year-9999 sentinel overflows once moved to a patient's
#: clock, and means no real appointment.
_EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
_LATEST = datetime(9998, 12, 31, tzinfo=UTC)


def as_utc(value: Any, *, where: str = "value") -> datetime | None:
    """An aware UTC datetime from a datetime (naive = UTC) or ISO string; None stays None."""
    if value is None:
        return None
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    if parsed is None:
        raise ValueError(f"{where} is not a datetime")
    try:
        moment = _aware(parsed).astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not _EARLIEST <= moment <= _LATEST:
        raise ValueError(f"{where} is out of the range of dates careflow reads (years 2 to 9998)")
    return moment


def as_date(value: Any, *, where: str = "value") -> date | None:
    """A date from a date, a datetime (its date) or an ISO string; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return date.fromisoformat(text[:10]) if len(text) > 10 else date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"{where} is not a date")


def as_bool(value: Any, default: bool, *, where: str = "value") -> bool:
    """A boolean from a bool, 0/1 or a yes/no string; None gives ``default``."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"{where} is not a boolean")


def as_attributes(value: Any, *, where: str = "attributes") -> dict[str, Any]:
    """A dict from a mapping or a JSON object string; None or an empty string gives ``{}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return {}
        try:
            parsed = read_json(value)
        except ValueError:
            raise ValueError(f"{where} is not valid JSON") from None
        except RecursionError:  # valid JSON, nested deeper than the parsers go
            raise ValueError(f"{where} nests deeper than careflow reads") from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"{where} is not a JSON object")


# What the database driver gives for a well-formed row takes a shortcut; anything else goes the
# long way, which names the row and the column (built only then).


def _utc(value: Any, row: str, column: str) -> datetime | None:
    if value.__class__ is datetime and value.tzinfo is UTC and _EARLIEST <= value <= _LATEST:
        return value  # type: ignore[no-any-return]
    return as_utc(value, where=f"{row}.{column}")


def _bool(value: Any, default: bool, row: str, column: str) -> bool:
    if value is True or value is False:
        return value  # type: ignore[no-any-return]
    return as_bool(value, default, where=f"{row}.{column}")


_JSON = msgspec.json.Decoder()


def read_json(text: str | bytes) -> Any:
    """``json.loads(text)``, about ten times faster where msgspec reads the text the same way.

    What msgspec refuses and ``json`` reads (a number past a float's range, a lone surrogate's
    escape, UTF-16 bytes) is read by ``json``, so the result is always ``json.loads``'s.
    """
    try:
        return _JSON.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def known_timezone(name: Any) -> str | None:
    """``name`` as a known IANA timezone (blanks around it dropped); None when unset or unknown."""
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        check_timezone(name.strip())
    except ValueError:
        return None
    return name.strip()


def _row_id(kind: str, row: Mapping[str, Any]) -> str:
    return f"{kind} {row.get('id', '?')}"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
