"""Size and time bounds of message templates, and how each channel counts a message's size.

Korean carriers count SMS/LMS in EUC-KR/CP949 bytes: ASCII is 1 byte, Hangul 2. A character
CP949 cannot encode (emoji, most non-Korean scripts) is counted as 2 bytes, the worst case of
what gateways do with it, so a message that passes here never turns out too long at the carrier.
Limits are enforced by refusing the message, never by truncating it: a cut-off appointment time
is worse than a failed send that an operator sees.
"""

from __future__ import annotations

from functools import lru_cache

from careflow.exceptions import TemplateError
from careflow.templates import codes

#: Largest message body per channel: bytes (CP949) for sms/lms, characters for kakao/email.
CHANNEL_LIMITS: dict[str, int] = {"sms": 90, "lms": 2_000, "kakao": 1_000, "email": 100_000}

#: Channels whose limit is counted in CP949 bytes rather than characters.
BYTE_COUNTED_CHANNELS = frozenset({"sms", "lms"})

#: Longest email subject, in characters, after rendering.
SUBJECT_MAX_CHARS = 200

#: Longest template source accepted, in characters (body or subject).
MAX_SOURCE_CHARS = 20_000

#: Rendering stops past this many characters: above every channel limit, so an over-long message
#: is reported with its channel limit, while a runaway template cannot fill memory.
MAX_RENDER_CHARS = 200_000

#: CPU-time budget of one render, in seconds (waiting for a busy CPU does not count). A render is
#: never stopped before it is spent, and at most ``budget.CPU_READ_REUSED_FOR_SECONDS`` after.
RENDER_BUDGET_SECONDS = 0.2

#: Items one for loop may go over, and iterations of all loops of one render together.
MAX_LOOP_ITEMS = 100
MAX_LOOP_ITERATIONS = 1_000

#: for loops nested deeper than this are refused when the template is compiled.
MAX_LOOP_NESTING = 2


@lru_cache(maxsize=8192)
def _cp949_width(char: str) -> int:
    try:
        return len(char.encode("cp949"))
    except UnicodeEncodeError:
        return 2


def cp949_bytes(text: str) -> int:
    """Bytes ``text`` takes in CP949 (characters CP949 cannot encode count 2)."""
    return sum(1 if char < "\x80" else _cp949_width(char) for char in text)


def channel_limit(channel: str) -> int:
    """The size limit of ``channel``; TemplateError for a channel careflow does not send on."""
    try:
        return CHANNEL_LIMITS[channel]
    except (KeyError, TypeError):
        known = ", ".join(CHANNEL_LIMITS)
        raise TemplateError(
            codes.UNKNOWN_CHANNEL, f"unknown channel {channel!r}: use one of {known}"
        ) from None


def message_size(body: str, channel: str) -> int:
    """Size of ``body`` as ``channel`` counts it: CP949 bytes for sms/lms, characters otherwise."""
    channel_limit(channel)
    return cp949_bytes(body) if channel in BYTE_COUNTED_CHANNELS else len(body)


def check_message_size(body: str, channel: str) -> None:
    """Raise TEMPLATE_CHANNEL_LIMIT when ``body`` does not fit ``channel``."""
    limit = channel_limit(channel)
    size = message_size(body, channel)
    if size <= limit:
        return
    if channel in BYTE_COUNTED_CHANNELS:
        hint = " (Hangul counts 2 bytes); shorten it or send it as lms" if channel == "sms" else ""
        raise TemplateError(
            codes.CHANNEL_LIMIT,
            f"the {channel} message is {size} bytes, over the {channel} limit of {limit} bytes{hint}",
        )
    raise TemplateError(
        codes.CHANNEL_LIMIT,
        f"the {channel} message is {size} characters, over the {channel} limit of {limit} characters",
    )


def check_subject_size(subject: str) -> None:
    """Raise TEMPLATE_CHANNEL_LIMIT when a rendered email subject is too long."""
    if len(subject) > SUBJECT_MAX_CHARS:
        raise TemplateError(
            codes.CHANNEL_LIMIT,
            f"the email subject is {len(subject)} characters, over the limit of {SUBJECT_MAX_CHARS}",
        )
