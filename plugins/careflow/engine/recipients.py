"""Recipients: the address a message goes to on each channel.

* ``sms``, ``lms`` and ``kakao`` go to a mobile number in E.164 (``+821012345678``). Korean
  numbers are accepted as written by clinics (``010-1234-5678``, ``01012345678``,
  ``010 1234 5678``, ``+82 10-1234-5678``, ``+82 010-1234-5678``, and ``821012345678`` as Korean
  systems store it, the country code without ``+``: a mobile number written nationally starts
  with 0), full-width (``０１０－１２３４－５６７８``, as a Korean input method types it) or with the
  dashes a word processor puts for hyphens (``010–1234–5678``), and must be mobile numbers:
  prefix 010 with 8 digits after it, or the legacy 011/016/017/018/019 with 7 or 8. Landlines
  (``02-555-0101``) cannot receive these messages and are refused.
* Numbers with another country code are accepted as E.164 (``+`` and 8 to 15 digits): careflow
  cannot tell a foreign mobile from a landline, the provider rejects the latter per message. A
  trunk prefix written ``(0)`` after the country code (``+44 (0)20 7946 0958``) is left out, as
  E.164 has it.
* ``email`` goes to an address that passes a simple syntax check (no DNS lookup).

When there is no usable address, :func:`missing_recipient_reason` gives the stable reason code
to record: ``no_phone``, ``invalid_phone``, ``no_email``, ``invalid_email``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from careflow.workflow.models import CHANNELS

PHONE_CHANNELS = ("sms", "lms", "kakao")

#: Spaces, hyphens and the dashes and minus signs a word processor writes for them, dots, brackets.
_SEPARATORS = re.compile(r"[\s\-.()\u2010-\u2015\u2212]")
_KOREAN_MOBILE = re.compile(r"^(?:10\d{8}|1[16789]\d{7,8})$")  # national number without the 0
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_TRUNK_ZERO = re.compile(r"\(\s*0\s*\)")  # "+44 (0)20 …": the national trunk prefix, not dialled from abroad
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


def normalize_phone(raw: Any) -> str | None:
    """The number in E.164, or None when it is not a number a text message can reach."""
    if not isinstance(raw, str):
        return None
    text = unicodedata.normalize("NFKC", raw).strip()  # full-width digits, plus and hyphen
    if not text or (text.count("+") > 1) or ("+" in text and not text.startswith("+")):
        return None
    if text.startswith("+"):
        text = _TRUNK_ZERO.sub("", text, count=1)
    digits = _SEPARATORS.sub("", text.lstrip("+"))
    if not digits.isdigit() or not digits.isascii():
        return None
    if text.startswith("+") and not digits.startswith("82"):
        number = f"+{digits}"
        return number if _E164.match(number) else None
    if digits.startswith("82"):  # with "+" or without: a mobile number written nationally starts with 0
        national = digits[2:]
        # "+82 010-…" is a common way of writing it; the trunk 0 does not belong in E.164.
        national = national[1:] if national.startswith("0") else national
    elif digits.startswith("0"):
        national = digits[1:]
    else:
        return None
    return f"+82{national}" if _KOREAN_MOBILE.match(national) else None


def valid_email(raw: Any) -> bool:
    """True for an address of the form ``local@domain.tld`` (syntax only)."""
    if not isinstance(raw, str):
        return False
    text = raw.strip()
    if len(text) > 254 or ".." in text:
        return False
    local, _, _ = text.partition("@")
    return len(local) <= 64 and bool(_EMAIL.match(text))


def recipient_for(channel: str, patient: Mapping[str, Any]) -> str | None:
    """The address for ``channel`` from the patient's facts (or row), or None when unusable."""
    if channel in PHONE_CHANNELS:
        return normalize_phone(patient.get("phone"))
    if channel == "email":
        email = patient.get("email")
        return email.strip() if isinstance(email, str) and valid_email(email) else None
    raise ValueError(f"unknown channel {channel!r}: use one of {', '.join(CHANNELS)}")


def missing_recipient_reason(channel: str, patient: Mapping[str, Any] | None = None) -> str:
    """The reason code for a message that has no recipient on ``channel``.

    With the patient, an address that is present but unusable gives ``invalid_phone`` /
    ``invalid_email``; without it, ``no_phone`` / ``no_email``.
    """
    if channel in PHONE_CHANNELS:
        field, kind = "phone", "phone"
    elif channel == "email":
        field, kind = "email", "email"
    else:
        raise ValueError(f"unknown channel {channel!r}: use one of {', '.join(CHANNELS)}")
    raw = patient.get(field) if patient is not None else None
    if isinstance(raw, str) and raw.strip():
        return f"invalid_{kind}"
    return f"no_{kind}"
