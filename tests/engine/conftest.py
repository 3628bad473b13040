"""Fixtures of the journey-engine tests: the fake provider and a journey factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from careflow.providers.fake_server import FakeProviderServer

from .harness import Journey, compile_doc


@pytest.fixture(scope="session", autouse=True)
def _airflow_logging() -> None:
    """Airflow configures logging as it is first imported, putting its handlers in the root
    logger's place: imported before any test, so that it never takes away the handler ``caplog``
    gave the test that happened to import it first (a run of that test alone saw no records)."""
    import airflow  # noqa: F401


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    """The fake messaging provider on a free port (fresh counters per test)."""
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def journey(engine: Engine, fake: FakeProviderServer) -> Callable[..., Journey]:
    """``journey(doc, version=1)``: a :class:`Journey` of a workflow document on this database."""

    def make(doc: dict[str, Any], version: int = 1, **kw: Any) -> Journey:
        return Journey(compile_doc(doc, version), engine, fake, **kw)

    return make


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every send process the action node starts (the real ones)."""
    from careflow.providers import send_process

    processes: list[Any] = []
    real = send_process.SendProcess.start.__func__  # type: ignore[attr-defined]

    def start(cls: Any, client: Any, gate: Any = None, **kw: Any) -> Any:
        process = real(cls, client, gate, **kw)
        processes.append(process)
        return process

    monkeypatch.setattr(send_process.SendProcess, "start", classmethod(start))
    return processes
