"""The ``[careflow]`` on/off settings: Airflow's words and a few more, a typo refused by name."""

from __future__ import annotations

import pytest

from careflow import settings
from careflow.clock import CLOCK_KEY, SIMULATED_KEY, now_for


@pytest.mark.parametrize(
    ("written", "on"),
    [("true", True), ("True", True), ("1", True), ("t", True), (" yes ", True), ("on", True)]
    + [("false", False), ("FALSE", False), ("0", False), ("f", False), ("no", False), ("off", False)],
)
def test_each_word_of_on_and_off(written: str, on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", written)
    monkeypatch.setenv("AIRFLOW__CAREFLOW__SEND_PROCESS", written)
    assert settings.allow_simulated_runs() is on
    assert settings.send_in_process() is on


def test_unset_or_empty_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", "")
    monkeypatch.delenv("AIRFLOW__CAREFLOW__SEND_PROCESS", raising=False)
    monkeypatch.setattr(settings, "_config", lambda section, key: None)
    assert settings.allow_simulated_runs() is False
    assert settings.send_in_process() is True


@pytest.mark.parametrize("written", ["flase", "ture", "none", "disabled"])
def test_a_word_that_is_neither_is_refused_by_name(written: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, any word but false, 0, no and off turned allow_simulated_runs on: a simulated run's
    conf (which anyone who may trigger a DAG can write) was then followed by a worker."""
    monkeypatch.setenv("AIRFLOW__CAREFLOW__ALLOW_SIMULATED_RUNS", written)
    with pytest.raises(ValueError) as caught:
        now_for({SIMULATED_KEY: True, CLOCK_KEY: "2026-03-02T09:00:00+00:00"})
    assert str(caught.value) == f"[careflow] allow_simulated_runs must be true or false, got {written!r}"
