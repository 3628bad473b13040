"""Shared helpers for the template tests."""

from __future__ import annotations

from typing import Any

import pytest

from careflow.templates import render_message
from careflow.workflow.facts import sample_context


@pytest.fixture
def context() -> dict[str, Any]:
    """A fresh sample context (tests may change it freely)."""
    return sample_context()


@pytest.fixture
def render(context):
    """Render a template as a KakaoTalk message against the (possibly edited) sample context."""

    def _render(source: str, channel: str = "kakao") -> str:
        return render_message(source, context, channel=channel)

    return _render
