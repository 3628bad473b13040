"""A local fake messaging provider that speaks the provider contract (docs/contracts.md §1), for the demo,
the tests and the benchmarks.

Start it with ``python -m careflow.providers.fake_server --port 8025`` (or ``careflow
fake-provider``). It keeps accepted messages in memory (optionally also in a JSON-lines file,
``--record``), honours idempotency keys (a second POST with the same key answers 409 with the
same id), and misbehaves on demand: latency, random 503s and 429s, an outage window, recipients
that are always refused, and "accept then time out" (the message is stored, the answer never
comes in time: the case a client must reconcile with a lookup, never resend blindly).

Endpoints (all need ``Authorization: Bearer <token>``):

- ``POST /v1/messages``: send; ``GET /v1/messages?idempotency_key=K``: one message or 404;
  ``GET /v1/messages[?since=<unix time>&limit=&offset=]``: the accepted messages, oldest first.
- ``GET /v1/stats[?brief=1]``: counters, ``max_in_flight``, per-key counts and ``accepted_twice``
  (keys accepted more than once: always 0 while idempotency is honoured; tests use it to prove
  exactly-once).
- ``POST /v1/admin/config`` with knobs as JSON (see ``KNOBS``); ``POST /v1/admin/reset`` clears
  the messages and counters and restores the knobs the server started with.

In tests, ``FakeProviderServer`` runs it in a background thread on a free port.

It speaks HTTP/1.1 with keep-alive itself (``httptools`` parses the requests): a few tens of
microseconds of CPU per request, so that on a benchmark machine the fake provider takes as little
as it can of the CPU the client under test needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl

import httptools

CHANNELS = frozenset({"sms", "lms", "kakao", "email"})

KNOBS = (
    "latency_ms",
    "error_rate",
    "throttle_rate",
    "retry_after",
    "outage_until",
    "outage_seconds",
    "outage_from_first_send",
    "accept_then_timeout_rate",
    "stall_seconds",
    "permanent_fail_recipients",
    "honour_idempotency",
)
"""What ``POST /v1/admin/config`` and ``FakeProviderServer.configure`` may change."""


@dataclass(frozen=True)
class FakeConfig:
    """How the fake provider behaves. Rates are probabilities in [0, 1] per request."""

    token: str = "fake-token"
    latency_ms: float = 0.0
    """How long after its arrival a send is answered (at least: never sooner)."""
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    outage_until: float = 0.0
    """Unix time until which every request answers 503."""
    outage_seconds: float = 0.0
    """An outage of this many seconds from the moment the config is applied."""
    outage_from_first_send: float = 0.0
    """An outage of this many seconds from the first send that arrives after the config is applied."""
    accept_then_timeout_rate: float = 0.0
    stall_seconds: float = 30.0
    """How long an accept-then-timeout answer stalls (longer than the client's timeout)."""
    permanent_fail_recipients: tuple[str, ...] = ()
    honour_idempotency: bool = True
    """False makes the fake a provider that ignores idempotency keys (accepted_twice can then grow)."""
    seed: int | None = None
    record: str | None = None
    """A JSON-lines file every accepted message is appended to."""


def _coerce(name: str, value: Any) -> Any:
    if name == "permanent_fail_recipients":
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return tuple(str(v) for v in value or ())
    if name == "honour_idempotency":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    value = float(value)
    if name.endswith("_rate") and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


MAX_BODY = 1024 * 1024
"""Larger request bodies are refused with 413."""


@dataclass
class Request:
    """One parsed HTTP request: header names in lower case, the query's last value per name."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    arrived: float | None = None
    """When its first bytes were parsed (the event loop's clock): answers are timed from here."""

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    """One HTTP answer with a JSON body."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": {"code": code, "message": message}}, status, headers)


class FakeProvider:
    """The fake provider's state and request handlers (one per application)."""

    def __init__(self, config: FakeConfig) -> None:
        self.initial = self._resolve(config)
        self.config = self.initial
        self.rng = random.Random(config.seed)
        self._record: TextIO | None = None
        if config.record:
            Path(config.record).parent.mkdir(parents=True, exist_ok=True)
            self._record = open(config.record, "a", encoding="utf-8")  # noqa: SIM115 - closed on cleanup
        self.reset()

    @staticmethod
    def _resolve(config: FakeConfig) -> FakeConfig:
        if config.outage_seconds > 0:
            return replace(config, outage_until=time.time() + config.outage_seconds, outage_seconds=0.0)
        return config

    def reset(self) -> None:
        """Forget every message and counter; go back to the knobs the server started with."""
        self.config = self._resolve(replace(self.initial, outage_seconds=0.0))
        self.messages: dict[str, dict[str, Any]] = {}
        self.order: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.accepts_by_key: Counter[str] = Counter()
        self.attempts_by_key: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._next_id = 0

    def configure(self, **knobs: Any) -> FakeConfig:
        """Change knobs at run time (names in ``KNOBS``); returns the new configuration."""
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}; known: {', '.join(KNOBS)}")
        changes = {name: _coerce(name, value) for name, value in knobs.items()}
        self.config = self._resolve(replace(self.config, **changes))
        return self.config

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """Counters; ``accepted_twice`` is the number of keys accepted more than once."""
        data: dict[str, Any] = {
            "received": self.counters["received"],
            "accepted": self.counters["accepted"],
            "duplicates": self.counters["duplicates"],
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "throttled": self.counters["throttled"],
            "errors": self.counters["errors"],
            "unauthorized": self.counters["unauthorized"],
            "accept_then_timeout": self.counters["accept_then_timeout"],
            "lookups": self.counters["lookups"],
            "stored": len(self.messages),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "accepted_twice": sum(1 for n in self.accepts_by_key.values() if n > 1),
            # unix times of the first and the last message accepted (None before the first)
            "first_accepted_at": self.order[0]["accepted_at"] if self.order else None,
            "last_accepted_at": self.order[-1]["accepted_at"] if self.order else None,
        }
        if not brief:
            data["accepts_by_key"] = dict(self.accepts_by_key)
            data["attempts_by_key"] = dict(self.attempts_by_key)
        return data

    def list_messages(
        self, since: float | None = None, limit: int | None = None, offset: int = 0
    ) -> list[dict]:
        """Accepted messages, oldest first."""
        rows = self.order if since is None else [m for m in self.order if m["accepted_at"] > since]
        return rows[offset : offset + limit if limit is not None else None]

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.config.token}"

    # -- handlers --------------------------------------------------------------------------

    async def post_message(self, request: Request) -> Response:
        self.counters["received"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._post_message(request)
        finally:
            self.in_flight -= 1

    async def _post_message(self, request: Request) -> Response:
        config = self.config
        if not self._authorized(request):
            self.counters["unauthorized"] += 1
            return _error(401, "unauthorized", "missing or wrong bearer token")
        raw = await request.read()
        if config.outage_from_first_send > 0:
            # The first send arms the outage: it and everything for the next N seconds get 503.
            config = self.config = replace(
                config, outage_until=time.time() + config.outage_from_first_send, outage_from_first_send=0.0
            )
        if config.latency_ms > 0:
            # Timed from the request's arrival: the fake's own queue and parsing are part of the
            # latency it stands for, not added to it.
            now = asyncio.get_running_loop().time()
            arrived = now if request.arrived is None else request.arrived
            await asyncio.sleep(max(0.0, arrived + config.latency_ms / 1000 - now))
        config = self.config  # knobs may have changed while we slept
        if config.outage_until and time.time() < config.outage_until:
            self.counters["errors"] += 1
            return _error(503, "outage", "provider unavailable")
        if config.throttle_rate and self.rng.random() < config.throttle_rate:
            self.counters["throttled"] += 1
            return _error(429, "throttled", "too many requests", {"Retry-After": f"{config.retry_after:g}"})
        if config.error_rate and self.rng.random() < config.error_rate:
            self.counters["errors"] += 1
            return _error(503, "unavailable", "temporary failure")
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._reject(400, "invalid_json", "body is not JSON")
        if not isinstance(payload, dict):
            return self._reject(400, "invalid_json", "body is not a JSON object")
        header_key = request.headers.get("idempotency-key")
        key = payload.get("idempotency_key") or header_key
        if not isinstance(key, str) or not key:
            return self._reject(
                422, "missing_idempotency_key", "Idempotency-Key header or idempotency_key is required"
            )
        if header_key and header_key != key:
            return self._reject(422, "idempotency_key_mismatch", "header and body idempotency keys differ")
        self.attempts_by_key[key] += 1
        channel, to, body = payload.get("channel"), payload.get("to"), payload.get("body")
        if channel not in CHANNELS:
            return self._reject(
                422, "invalid_channel", f"channel must be one of {', '.join(sorted(CHANNELS))}"
            )
        if not isinstance(to, str) or not to.strip():
            return self._reject(422, "missing_recipient", "'to' is required")
        if not isinstance(body, str) or not body.strip():
            return self._reject(422, "empty_body", "'body' must not be empty")
        if to in config.permanent_fail_recipients:
            return self._reject(422, "recipient_rejected", "recipient cannot receive messages")
        existing = self.messages.get(key)
        if existing is not None and config.honour_idempotency:
            self.counters["duplicates"] += 1
            return _json(
                {
                    "id": existing["id"],
                    "status": "duplicate",
                    "error": {"code": "duplicate", "message": "idempotency key already accepted"},
                },
                409,
            )
        record = self._accept(key, payload)
        if config.accept_then_timeout_rate and self.rng.random() < config.accept_then_timeout_rate:
            self.counters["accept_then_timeout"] += 1
            await asyncio.sleep(config.stall_seconds)
        return _json({"id": record["id"], "status": "accepted"}, 202)

    def _reject(self, status: int, code: str, message: str) -> Response:
        self.rejected[code] += 1
        return _error(status, code, message)

    def _accept(self, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        metadata = payload.get("metadata")
        record = {
            "id": f"fake-{self._next_id:08d}",
            "idempotency_key": key,
            "status": "accepted",
            "channel": payload["channel"],
            "to": payload["to"],
            "body": payload["body"],
            "subject": payload.get("subject"),
            "metadata": metadata if isinstance(metadata, dict) else {},
            "accepted_at": time.time(),
        }
        self.messages[key] = record
        self.order.append(record)
        self.counters["accepted"] += 1
        self.accepts_by_key[key] += 1
        if self._record is not None:
            self._record.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._record.flush()
        return record

    async def get_messages(self, request: Request) -> Response:
        if not self._authorized(request):
            self.counters["unauthorized"] += 1
            return _error(401, "unauthorized", "missing or wrong bearer token")
        config = self.config
        if config.outage_until and time.time() < config.outage_until:
            return _error(503, "outage", "provider unavailable")
        query = request.query
        key = query.get("idempotency_key")
        if key is not None:
            self.counters["lookups"] += 1
            record = self.messages.get(key)
            if record is None:
                return _error(404, "not_found", "no message with this idempotency key")
            return _json(record)
        try:
            since = float(query["since"]) if "since" in query else None
            limit = int(query["limit"]) if "limit" in query else None
            offset = int(query.get("offset", 0))
        except ValueError:
            return _error(400, "invalid_query", "since must be a number, limit and offset integers")
        rows = self.list_messages(since, limit, offset)
        return _json({"messages": rows, "total": len(self.order)})

    async def get_stats(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        return _json(self.stats(brief=request.query.get("brief") in ("1", "true")))

    async def post_config(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise ValueError("body must be a JSON object of knobs")
            config = self.configure(**knobs)
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid_config", str(exc))
        return _json({k: v for k, v in asdict(config).items() if k != "token"})

    async def post_reset(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        self.reset()
        return _json({"status": "reset"})

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None


Handler = Callable[[Request], Awaitable[Response]]


def routes(provider: FakeProvider) -> dict[str, dict[str, Handler]]:
    """Path -> method -> handler."""
    return {
        "/v1/messages": {"POST": provider.post_message, "GET": provider.get_messages},
        "/v1/stats": {"GET": provider.get_stats},
        "/v1/admin/config": {"POST": provider.post_config},
        "/v1/admin/reset": {"POST": provider.post_reset},
    }


class _HttpConnection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests parsed by httptools, answered in order."""

    def __init__(self, table: dict[str, dict[str, Handler]], connections: set[_HttpConnection]) -> None:
        self._table = table
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._arrived = 0.0
        #: the answer of the request before: answers go out in the order the requests came
        self._last: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrade_not_supported", "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._fail(400, "bad_request", "the request is not valid HTTP/1.1")

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for task in self._tasks:  # answers still stalling end with the connection
            task.cancel()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0
        self._arrived = asyncio.get_running_loop().time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_BODY:  # past it the request gets 413: the rest is counted, not kept
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode("ascii", "replace"),
            path=url.path.decode("utf-8", "replace"),
            query=dict(parse_qsl(url.query.decode("utf-8", "replace"))) if url.query else {},
            headers=self._headers,
            body=b"".join(self._body),
            arrived=self._arrived,
        )
        too_large = self._size > MAX_BODY
        keep_alive = self._parser.should_keep_alive() and not too_large
        task = asyncio.get_running_loop().create_task(
            self._answer(request, keep_alive, too_large, self._last)
        )
        self._last = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # answers

    async def _answer(
        self, request: Request, keep_alive: bool, too_large: bool, before: asyncio.Task[None] | None
    ) -> None:
        try:
            response = await self._handle(request, too_large)
        except Exception as exc:  # a bug in a handler still gets an answer
            response = _error(500, "internal_error", f"{type(exc).__name__}: {exc}")
        if before is not None and not before.done():
            await asyncio.wait([before])
        self._write(response, keep_alive)

    async def _handle(self, request: Request, too_large: bool) -> Response:
        if too_large:
            return _error(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes")
        methods = self._table.get(request.path)
        if methods is None:
            return _error(404, "not_found", f"no endpoint {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        return await handler(request)

    def _write(self, response: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        head = [
            f"HTTP/1.1 {response.status} {reason}",
            "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(response.body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        head += [f"{name}: {value}" for name, value in (response.headers or {}).items()]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        if not keep_alive:
            transport.close()

    def _fail(self, status: int, code: str, message: str) -> None:
        self._write(_error(status, code, message), keep_alive=False)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class FakeHttpServer:
    """The fake provider served on a listening socket, on the running event loop."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self._table = routes(provider)
        self._connections: set[_HttpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(
        self, *, sock: socket.socket | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Listen on ``sock``, or on ``host``/``port``."""
        loop = asyncio.get_running_loop()

        def factory() -> _HttpConnection:
            return _HttpConnection(self._table, self._connections)

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock)
        else:
            self._server = await loop.create_server(factory, host=host, port=port, reuse_address=True)

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose, where it was asked for 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close every connection, close the record file."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.provider.close()


# -- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fake provider's options (shared by ``python -m`` and ``careflow fake-provider``)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8025, help="port (default 8025; 0: any free one)")
    parser.add_argument("--token", default="fake-token", help="bearer token clients must send")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="time from a send's arrival to its answer"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of sends answered 503")
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="share of sends answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on a 429")
    parser.add_argument("--outage-seconds", type=float, default=0.0, help="answer 503 to everything for N s")
    parser.add_argument(
        "--outage-from-first-send",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 503 to everything for N s, counted from the first send",
    )
    parser.add_argument(
        "--accept-then-timeout-rate",
        type=float,
        default=0.0,
        help="share of sends stored as accepted whose answer then stalls past the client's timeout",
    )
    parser.add_argument("--stall-seconds", type=float, default=30.0, help="how long such an answer stalls")
    parser.add_argument(
        "--permanent-fail",
        default="",
        metavar="RECIPIENTS",
        help="comma-separated recipients that always get 422",
    )
    parser.add_argument(
        "--ignore-idempotency", action="store_true", help="accept repeated keys again (to test exactly-once)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for the error and throttle rates")
    parser.add_argument(
        "--record", default=None, metavar="FILE", help="append accepted messages to FILE (JSON lines)"
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a port: a number from 1 to 65535, or 0 for any free one"
        )
    return port


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    """A ``FakeConfig`` from parsed command-line arguments."""
    return FakeConfig(
        token=args.token,
        latency_ms=_coerce("latency_ms", args.latency_ms),
        error_rate=_coerce("error_rate", args.error_rate),
        throttle_rate=_coerce("throttle_rate", args.throttle_rate),
        retry_after=_coerce("retry_after", args.retry_after),
        outage_seconds=_coerce("outage_seconds", args.outage_seconds),
        outage_from_first_send=_coerce("outage_from_first_send", args.outage_from_first_send),
        accept_then_timeout_rate=_coerce("accept_then_timeout_rate", args.accept_then_timeout_rate),
        stall_seconds=_coerce("stall_seconds", args.stall_seconds),
        permanent_fail_recipients=_coerce("permanent_fail_recipients", args.permanent_fail),
        honour_idempotency=not args.ignore_idempotency,
        seed=args.seed,
        record=args.record,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"careflow fake provider: {exc}", file=sys.stderr)
        return 2
    loop: asyncio.AbstractEventLoop
    try:  # uvloop, when installed, spends less CPU per request: more headroom for the client
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()

    async def serve() -> int:
        server = FakeHttpServer(FakeProvider(config))
        try:
            await server.start(host=args.host, port=args.port)
        except OSError as exc:  # the port taken, an address this machine does not have
            why = (
                exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
            )
            print(f"careflow fake provider: cannot listen on {args.host}:{args.port}: {why}", file=sys.stderr)
            server.provider.close()
            return 2
        print(
            f"careflow fake provider on http://{args.host}:{server.port} (token {config.token!r}, "
            f"latency {config.latency_ms:g} ms); Ctrl+C to stop",
            flush=True,
        )
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()
        return 0

    try:
        return loop.run_until_complete(serve())
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m careflow.providers.fake_server``."""
    parser = argparse.ArgumentParser(
        prog="python -m careflow.providers.fake_server", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


# -- in-process server for tests -------------------------------------------------------------


class FakeProviderServer:
    """The fake provider in a background thread on a free port, as a context manager.

    ``with FakeProviderServer(latency_ms=5) as fake: ProviderClient(fake.url, fake.token)...``
    """

    def __init__(self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", **knobs: Any) -> None:
        base = config or FakeConfig()
        if knobs:
            base = replace(base, **{k: _coerce(k, v) if k in KNOBS else v for k, v in knobs.items()})
        self.config = base
        self.host = host
        self.port = 0
        self.provider = FakeProvider(base)
        self._server = FakeHttpServer(self.provider)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:51234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        return self.provider.config.token

    def start(self) -> FakeProviderServer:
        """Start serving; returns once the port is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]

        async def serve() -> None:
            self._stopped = asyncio.Event()
            try:
                await self._server.start(sock=sock)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            ready.set()
            try:
                await self._stopped.wait()
            finally:
                await self._server.close()

        def target() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException:
                pass
            finally:
                # Answers still stalling (accept-then-timeout) end with the server.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=target, name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"fake provider did not start: {failure[0]!r}")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the server's loop, so state is only touched from its thread."""
        if self._loop is None:
            return fn(*args, **kwargs)

        async def call() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def configure(self, **knobs: Any) -> FakeConfig:
        """Change knobs (see ``KNOBS``), e.g. ``configure(error_rate=1.0)``."""
        return self._call(self.provider.configure, **knobs)

    def stats(self, brief: bool = False) -> dict[str, Any]:
        """The counters ``GET /v1/stats`` returns."""
        return self._call(self.provider.stats, brief)

    def messages(self) -> list[dict[str, Any]]:
        """The accepted messages, oldest first."""
        return self._call(lambda: [dict(m) for m in self.provider.order])

    def reset(self) -> None:
        """Clear messages and counters and restore the starting knobs."""
        self._call(self.provider.reset)


if __name__ == "__main__":
    raise SystemExit(main())
