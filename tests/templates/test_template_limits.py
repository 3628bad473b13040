"""How each channel counts a message."""

from __future__ import annotations

import pytest

from careflow.exceptions import TemplateError
from careflow.templates import CHANNEL_LIMITS, message_size


def test_channel_limits():
    assert CHANNEL_LIMITS == {"sms": 90, "lms": 2_000, "kakao": 1_000, "email": 100_000}


@pytest.mark.parametrize(
    ("body", "channel", "size"),
    [
        ("hello", "sms", 5),
        ("안녕하세요", "sms", 10),
        ("안녕 hi", "lms", 7),
        ("똠방각하", "sms", 8),  # UHC syllables outside KS X 1001 still count 2
        ("예약 ✅😀", "sms", 9),  # not encodable in CP949: 2 bytes each
        ("안녕하세요", "kakao", 5),
        ("안녕하세요", "email", 5),
    ],
)
def test_message_size(body, channel, size):
    assert message_size(body, channel) == size


def test_message_size_of_an_unknown_channel():
    with pytest.raises(TemplateError) as err:
        message_size("x", "fax")
    assert err.value.code == "TEMPLATE_UNKNOWN_CHANNEL"
