"""The filters a message template may use: an allow-list, nothing else.

Dates are shown in the recipient's timezone (``patient.timezone``, else ``clinic.timezone``, else
Asia/Seoul); aware datetimes are converted to it, naive ones are taken as already local. Date
formats are interpreted here, directive by directive, rather than handed to ``strftime``: the
output is then the same on every platform and a format string cannot reach anything else.

A value that is ``None`` (a patient without an email) is treated as missing: printing it or
passing it to a filter is an error, unless ``default`` supplies a replacement first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Undefined, pass_context
from jinja2.runtime import Context
from jinja2.tests import test_defined, test_none, test_undefined

from careflow.exceptions import TemplateError
from careflow.templates import codes
from careflow.templates.sample import AttributeSample
from careflow.workflow.timezones import zone

DEFAULT_TIMEZONE = "Asia/Seoul"
WEEKDAYS_KO = "월화수목금토일"
MAX_FORMAT_CHARS = 100
MAX_TRUNCATE = 10_000
MAX_ROUND_DIGITS = 6


class MissingValue(Exception):
    """A value the template prints or filters is ``None`` (turned into TEMPLATE_UNKNOWN_VARIABLE)."""


def _fail(message: str) -> TemplateError:
    return TemplateError(codes.RENDER_FAILED, message)


def _present(value: Any) -> Any:
    """``value``, or the error a missing value deserves."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if value is None:
        raise MissingValue()
    return value


def _text(value: Any, name: str) -> str:
    value = _present(value)
    if isinstance(value, (str, int, float, Decimal)) and not isinstance(value, bool):
        return str(value)
    raise _fail(f"the {name} filter needs text, not a {type(value).__name__}")


# --- dates and times -------------------------------------------------------------------------


def _hour12(d: datetime) -> int:
    return d.hour % 12 or 12


_DIRECTIVES: dict[str, Callable[[datetime], str]] = {
    "Y": lambda d: f"{d.year:04d}",
    "y": lambda d: f"{d.year % 100:02d}",
    "m": lambda d: f"{d.month:02d}",
    "-m": lambda d: str(d.month),
    "d": lambda d: f"{d.day:02d}",
    "-d": lambda d: str(d.day),
    "H": lambda d: f"{d.hour:02d}",
    "-H": lambda d: str(d.hour),
    "I": lambda d: f"{_hour12(d):02d}",
    "-I": lambda d: str(_hour12(d)),
    "M": lambda d: f"{d.minute:02d}",
    "-M": lambda d: str(d.minute),
    "S": lambda d: f"{d.second:02d}",
    "p": lambda d: "오전" if d.hour < 12 else "오후",
    "a": lambda d: WEEKDAYS_KO[d.weekday()],
    "A": lambda d: WEEKDAYS_KO[d.weekday()] + "요일",
    "%": lambda d: "%",
}

SUPPORTED_DIRECTIVES = tuple(f"%{key}" for key in _DIRECTIVES)


def _parse_format(fmt: str) -> list[str | tuple[str]]:
    """Split a date format into literal text and directives (1-tuples); TemplateError if unsupported."""
    if not isinstance(fmt, str):
        raise TemplateError(codes.SYNTAX, "a date format must be text such as '%m월 %d일'")
    if len(fmt) > MAX_FORMAT_CHARS:
        raise TemplateError(codes.SYNTAX, f"a date format may be at most {MAX_FORMAT_CHARS} characters")
    parts: list[str | tuple[str]] = []
    for match in re.finditer(r"%(-?.?)|[^%]+", fmt):
        directive = match.group(1)
        if directive is None:
            parts.append(match.group(0))
        elif directive in _DIRECTIVES:
            parts.append((directive,))
        else:
            supported = " ".join(SUPPORTED_DIRECTIVES)
            raise TemplateError(
                codes.SYNTAX,
                f"the date format directive '%{directive}' is not supported; use {supported}",
            )
    return parts


def check_format(fmt: str) -> None:
    """Raise TemplateError when ``fmt`` uses a directive the date filters do not support."""
    _parse_format(fmt)


def format_datetime(value: datetime, fmt: str) -> str:
    """Format ``value`` with the supported directives only (no ``strftime`` passthrough)."""
    return "".join(p if isinstance(p, str) else _DIRECTIVES[p[0]](value) for p in _parse_format(fmt))


def recipient_zone(context: Mapping[str, Any] | Context) -> ZoneInfo:
    """The recipient's timezone: the patient's, else the clinic's, else Asia/Seoul."""
    for root in ("patient", "clinic"):
        data = context.get(root)
        name = data.get("timezone") if isinstance(data, Mapping) else None
        if isinstance(name, str) and name:
            try:
                return zone(name)
            except ValueError:
                continue
    return zone(DEFAULT_TIMEZONE)


def local_datetime(value: Any, tz: ZoneInfo, name: str) -> datetime:
    """``value`` (datetime, date or ISO text) as a datetime in ``tz``."""
    value = _present(value)
    if isinstance(value, AttributeSample):
        value = value.when
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _fail(f"the {name} filter needs a date or time; this text is not one") from None
    if isinstance(value, datetime):
        return value.astimezone(tz) if value.tzinfo is not None else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise _fail(f"the {name} filter needs a date or time, not a {type(value).__name__}")


@pass_context
def date_filter(context: Context, value: Any, fmt: str = "%Y-%m-%d") -> str:
    """``{{ appointment.scheduled_at | date('%m월 %d일') }}`` in the recipient's timezone."""
    return format_datetime(local_datetime(value, recipient_zone(context), "date"), fmt)


@pass_context
def time_filter(context: Context, value: Any, fmt: str = "%H:%M") -> str:
    """``{{ appointment.scheduled_at | time }}`` -> ``10:30`` in the recipient's timezone."""
    return format_datetime(local_datetime(value, recipient_zone(context), "time"), fmt)


@pass_context
def korean_date(context: Context, value: Any) -> str:
    """``2026년 3월 14일 (토)``."""
    d = local_datetime(value, recipient_zone(context), "korean_date")
    return f"{d.year}년 {d.month}월 {d.day}일 ({WEEKDAYS_KO[d.weekday()]})"


@pass_context
def korean_time(context: Context, value: Any) -> str:
    """``오후 2시 30분``; on the hour just ``오전 10시``."""
    d = local_datetime(value, recipient_zone(context), "korean_time")
    text = f"{'오전' if d.hour < 12 else '오후'} {_hour12(d)}시"
    return f"{text} {d.minute}분" if d.minute else text


@pass_context
def weekday_ko(context: Context, value: Any) -> str:
    """The weekday as one Hangul syllable: 월, 화, 수, 목, 금, 토, 일."""
    return WEEKDAYS_KO[local_datetime(value, recipient_zone(context), "weekday_ko").weekday()]


# --- text --------------------------------------------------------------------------------------


def default(value: Any, replacement: Any = "") -> Any:
    """``replacement`` when the value is missing, ``None`` or empty text."""
    if isinstance(value, Undefined) or value is None or value == "":
        return replacement
    return value


def upper(value: Any) -> str:
    """Upper case."""
    return _text(value, "upper").upper()


def lower(value: Any) -> str:
    """Lower case."""
    return _text(value, "lower").lower()


def trim(value: Any) -> str:
    """Without leading and trailing whitespace."""
    return _text(value, "trim").strip()


def truncate(value: Any, length: int = 20, end: str = "…") -> str:
    """At most ``length`` characters, ending in ``end`` when it was cut."""
    text = _text(value, "truncate")
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_TRUNCATE:
        raise _fail(f"truncate needs a length between 1 and {MAX_TRUNCATE}")
    end = _text(end, "truncate")
    if len(text) <= length:
        return text
    return text[: max(length - len(end), 0)] + end


# --- phone numbers and names -------------------------------------------------------------------


def _phone_digits(value: Any, name: str) -> str:
    raw = _text(value, name).strip()
    digits = re.sub(r"\D", "", raw)
    if raw.startswith("+82"):  # E.164 Korean number: +82 10 ... -> 010 ...
        digits = "0" + digits[2:].lstrip("0")
    return digits


def _phone_groups(digits: str) -> list[str] | None:
    """Korean number split as it is written, or None when it is not a Korean number."""
    n = len(digits)
    if digits.startswith("02") and n in (9, 10):
        return [digits[:2], digits[2:-4], digits[-4:]]
    if digits.startswith("0") and n in (10, 11):
        return [digits[:3], digits[3:-4], digits[-4:]]
    if n == 8 and digits[:2] in ("15", "16", "18"):  # nationwide numbers such as 1588-0000
        return [digits[:4], digits[4:]]
    return None


def phone(value: Any) -> str:
    """``01012345678`` -> ``010-1234-5678`` (unchanged when it is not a Korean number)."""
    groups = _phone_groups(_phone_digits(value, "phone"))
    return "-".join(groups) if groups else _text(value, "phone")


def mask_phone(value: Any) -> str:
    """``010-****-5678``: only the first and last groups stay readable."""
    digits = _phone_digits(value, "mask_phone")
    groups = _phone_groups(digits)
    if groups and len(groups) == 3:
        return "-".join([groups[0], "*" * len(groups[1]), groups[2]])
    if groups:
        return "-".join(["*" * len(groups[0]), groups[1]])
    return "*" * max(len(digits) - 4, 0) + digits[-4:]


def mask_name(value: Any) -> str:
    """``김민지`` -> ``김*지``, ``김민`` -> ``김*``: first and last character stay."""
    text = _text(value, "mask_name").strip()
    if len(text) <= 1:
        return "*" * len(text)
    if len(text) == 2:
        return text[0] + "*"
    return text[0] + "*" * (len(text) - 2) + text[-1]


# --- numbers and lists -------------------------------------------------------------------------


def _as_number(value: Any, name: str) -> int | float | Decimal:
    value = _present(value)
    if isinstance(value, AttributeSample):
        return value.amount
    if isinstance(value, bool):
        raise _fail(f"the {name} filter needs a number, not yes/no")
    if isinstance(value, (int, float, Decimal)):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace(",", ""))
        except ValueError:
            try:
                return float(value.replace(",", ""))
            except ValueError:
                pass
    raise _fail(f"the {name} filter needs a number")


def number(value: Any) -> str:
    """Thousands separators: ``1234567`` -> ``1,234,567``."""
    return f"{_as_number(value, 'number'):,}"


def round_filter(value: Any, precision: int = 0) -> int | float:
    """Rounded to ``precision`` decimals (a whole number when 0)."""
    if (
        not isinstance(precision, int)
        or isinstance(precision, bool)
        or not 0 <= precision <= MAX_ROUND_DIGITS
    ):
        raise _fail(f"round needs a precision between 0 and {MAX_ROUND_DIGITS}")
    rounded = round(float(_as_number(value, "round")), precision)
    return int(rounded) if precision == 0 else rounded


def length(value: Any) -> int:
    """Number of characters of a text, items of a list."""
    value = _present(value)
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value)
    raise _fail(f"the length filter needs text or a list, not a {type(value).__name__}")


def join(value: Any, separator: str = ", ") -> str:
    """The items of a list as one text: ``['a', 'b'] | join(', ')`` -> ``a, b``."""
    value = _present(value)
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise _fail(f"the join filter needs a list, not a {type(value).__name__}")
    return _text(separator, "join").join(_text(item, "join") for item in value)


#: name -> (function, most positional arguments after the value). Nothing else is a filter.
FILTERS: dict[str, tuple[Callable[..., Any], int]] = {
    "date": (date_filter, 1),
    "time": (time_filter, 1),
    "korean_date": (korean_date, 0),
    "korean_time": (korean_time, 0),
    "weekday_ko": (weekday_ko, 0),
    "default": (default, 1),
    "upper": (upper, 0),
    "lower": (lower, 0),
    "trim": (trim, 0),
    "truncate": (truncate, 2),
    "mask_phone": (mask_phone, 0),
    "mask_name": (mask_name, 0),
    "phone": (phone, 0),
    "number": (number, 0),
    "length": (length, 0),
    "join": (join, 1),
    "round": (round_filter, 1),
}

#: The tests (``x is defined``) a template may use.
TESTS: dict[str, Callable[..., bool]] = {
    "defined": test_defined,
    "undefined": test_undefined,
    "none": test_none,
}
