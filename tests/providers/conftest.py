"""Fixtures: the fake provider over real HTTP, and a tiny server of malformed answers."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from careflow.providers.client import Message
from careflow.providers.fake_server import FakeProviderServer
from support import free_port

PHONE = "+821055501234"
BODY = "Kim Minji, your implant check-up is tomorrow at 10:00"


def make_message(i: int | str = 0, **overrides: object) -> Message:
    """A valid message; fields can be overridden."""
    fields: dict = {
        "idempotency_key": f"wf1:a1:ex{i}",
        "channel": "sms",
        "to": PHONE,
        "body": BODY,
        "subject": None,
        "metadata": {"workflow_id": "wf1", "node_id": "a1", "execution_id": f"ex{i}"},
    }
    fields.update(overrides)
    return Message(**fields)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(token="secret-token") as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeProviderServer) -> FakeProviderServer:
    """The shared fake provider, cleared and back to its starting knobs."""
    fake_server.reset()
    return fake_server


class AppThread:
    """Any aiohttp app served from a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._ready = threading.Event()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> AppThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _odd_answer(request: web.Request) -> web.StreamResponse:
    """Answers that break the contract, chosen by the first path segment."""
    await request.read()
    mode = request.match_info["mode"]
    answers = {
        "html": (200, b"<html><body>Service OK</body></html>", "text/html"),
        "truncated": (200, b'{"id": "abc-1", "status": "acc', "application/json"),
        "int_id": (200, b'{"id": 12345, "status": "accepted"}', "application/json"),
        "null_id": (200, b'{"id": null, "status": "accepted"}', "application/json"),
        "empty_id": (202, b'{"id": "", "status": "accepted"}', "application/json"),
        "missing_id": (200, b'{"status": "accepted"}', "application/json"),
        "list": (200, b'[{"id": "abc-1"}]', "application/json"),
        "empty": (200, b"", "application/json"),
        "status_int": (200, b'{"id": "abc-1", "status": 1}', "application/json"),
    }
    if mode in answers:
        status, body, content_type = answers[mode]
        return web.Response(status=status, body=body, content_type=content_type)
    if mode == "drop":  # the request arrived, the connection dies before any answer
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.05)
        return web.Response(status=200)
    if mode == "phone_in_error":
        error = {"error": {"code": "invalid_recipient", "message": f"recipient {PHONE} is not valid"}}
        return web.json_response(error, status=422)
    if mode == "redirect":
        raise web.HTTPFound("https://elsewhere.example/v1/messages")
    if mode == "http_date":
        return web.json_response(
            {"error": {"code": "throttled", "message": "slow down"}},
            status=429,
            headers={"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)},
        )
    if mode == "duplicate_no_body":
        return web.Response(status=409, body=b"conflict")
    if mode == "gateway_html":
        return web.Response(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html")
    return web.Response(status=500, body=json.dumps({"error": {"code": "unknown_mode"}}).encode())


@pytest.fixture(scope="session")
def odd_server() -> Iterator[AppThread]:
    app = web.Application()
    app.router.add_route("*", "/{mode}/v1/messages", _odd_answer)
    with AppThread(app) as server:
        yield server
