"""Consent: whether a message of a purpose may go to a patient now (docs/contracts.md §2).

* ``care`` messages need ``consent_messages`` (default true).
* ``marketing`` messages need ``consent_marketing`` (default false); ``consent_messages`` is
  about care messages and does not gate marketing.
* Marketing never goes out from 21:00 (inclusive) to 08:00 (exclusive) local time unless the
  patient has ``consent_night_marketing`` (default false).

Missing consent is permanent for this message: the engine skips the step with the reason code.
Quiet hours are temporary: the engine parks the execution until :func:`quiet_hours_end` rather
than skipping, so a marketing message reached at 23:00 goes out at 08:00, unless 08:00 is past
the action's ``max_lateness``: then it expires at once (``quiet_hours_past_max_lateness``). Consent is checked before quiet hours, so a patient who never
consented is skipped at once instead of being woken up at 08:00 to be skipped.

Reason codes are stable: ``no_consent_messages``, ``no_consent_marketing``,
``marketing_quiet_hours``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time, timedelta
from typing import Any

from careflow.engine.facts_builder import as_bool
from careflow.workflow.models import CHANNELS, PURPOSES

QUIET_START = time(21, 0)
QUIET_END = time(8, 0)

NO_CONSENT_MESSAGES = "no_consent_messages"
NO_CONSENT_MARKETING = "no_consent_marketing"
MARKETING_QUIET_HOURS = "marketing_quiet_hours"


def check_consent(
    *, purpose: str, channel: str, patient: Mapping[str, Any], local_now: datetime
) -> str | None:
    """None when the message may go out now, else a reason code.

    ``patient`` is the patient's facts (or row); ``local_now`` is now on the patient's wall clock.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown message purpose {purpose!r}: use one of {', '.join(PURPOSES)}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: use one of {', '.join(CHANNELS)}")
    pid = patient.get("id", "?")
    if purpose == "care":
        if not as_bool(patient.get("consent_messages"), True, where=f"patient {pid}.consent_messages"):
            return NO_CONSENT_MESSAGES
        return None
    if not as_bool(patient.get("consent_marketing"), False, where=f"patient {pid}.consent_marketing"):
        return NO_CONSENT_MARKETING
    night_ok = as_bool(
        patient.get("consent_night_marketing"), False, where=f"patient {pid}.consent_night_marketing"
    )
    if not night_ok and in_quiet_hours(local_now):
        return MARKETING_QUIET_HOURS
    return None


def in_quiet_hours(local_now: datetime) -> bool:
    """True from 21:00 to 08:00 (end exclusive) on the wall clock of ``local_now``."""
    wall = local_now.time().replace(tzinfo=None)
    return wall >= QUIET_START or wall < QUIET_END


def quiet_hours_end(local_now: datetime) -> datetime:
    """When marketing may go out again: the next 08:00 local, or ``local_now`` outside quiet hours.

    The result is in ``local_now``'s timezone (naive if it is naive).
    """
    if not in_quiet_hours(local_now):
        return local_now
    day = local_now.date()
    if local_now.time().replace(tzinfo=None) >= QUIET_START:
        day += timedelta(days=1)
    # combine() with a ZoneInfo reads 08:00 on that day's own offset, DST included.
    return datetime.combine(day, QUIET_END, tzinfo=local_now.tzinfo)
