"""The messaging provider's HTTP client (docs/contracts.md §1), plain asyncio, no Airflow.

One ``ProviderClient`` sends a batch of messages concurrently over keep-alive connections and
turns every answer into a ``SendResult`` with an ``Outcome``. It never raises for a single
message: a failure is a result, classified so the caller knows what to do next.

======================  =======================================================  ===================
outcome                 when                                                      caller does
======================  =======================================================  ===================
``ACCEPTED``            2xx with a well-formed ``{"id", "status"}``               record as sent
``DUPLICATE``           409: the key was already accepted                         record as sent
``PERMANENT``           400/422 (and other 4xx): this message will never go       record as failed
``CONFIGURATION``       401/403/404/3xx, a refused TLS certificate, a proxy       alert, do not retry
                        refusing the tunnel (407…): credentials or URL wrong;
                        batch stops
``THROTTLED``           429; the rest of the batch waits ``Retry-After``          retry later
``TRANSIENT``           5xx, 408, or the request never left (refused, DNS,        retry (same key)
                        connect timeout: ``request_sent=False``)
``UNKNOWN``             the request left but no proof of the outcome: read        reconcile with
                        timeout, dropped connection, malformed 2xx answer         ``lookup``
``NOT_SENT``            the batch stopped (gate open, configuration error,        send again later
                        throttled too long, lease expired) before this message
                        was sent
======================  =======================================================  ===================

Malformed answers are never ``ACCEPTED``: a 2xx body that is not the contract (HTML from a proxy,
truncated JSON, an ``id`` that is not a non-empty string) proves only that *something* answered,
not that the provider took the message. Recording it as sent could lose a patient's message;
recording it as failed and resending could send it twice. ``UNKNOWN`` sends the caller to
``lookup``, which asks the provider what it really has under that idempotency key.

Nothing here logs or raises with a message body or a recipient in it: ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import email.utils
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timezone
from enum import Enum
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import quote

import msgspec
from pydantic import BaseModel, ConfigDict, StringConstraints

from careflow.providers.http1 import (
    Answer,
    ConnectFailed,
    Http1Pool,
    Origin,
    RequestLost,
    parse_proxy,
    proxy_for,
)

log = logging.getLogger("careflow.providers")

T = TypeVar("T")

DEFAULT_RETRY_AFTER = 1.0
"""Seconds to pause after a 429 that carries no usable ``Retry-After``."""


class Outcome(str, Enum):  # noqa: UP042 (a StrEnum would change what str() of a member gives)
    """What became of one send (see the module docstring for the table)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"


@dataclass(frozen=True)
class Message:
    """One message to send. ``metadata`` carries ``workflow_id``, ``node_id`` and ``execution_id``."""

    idempotency_key: str
    channel: str
    to: str
    body: str
    subject: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep recipients and bodies out of tracebacks and logs
        return f"Message(idempotency_key={self.idempotency_key!r}, channel={self.channel!r})"


@dataclass(frozen=True)
class SendResult:
    """The outcome of one message. ``request_sent`` says whether the provider may have seen it."""

    idempotency_key: str
    outcome: Outcome
    provider_id: str | None = None
    status_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    latency_ms: float = 0.0
    request_sent: bool = False

    @property
    def delivered(self) -> bool:
        """True when the provider has the message (accepted now or before)."""
        return self.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE)


class SendGate(Protocol):
    """What the client asks before and tells after each send (the circuit breaker adapts to it)."""

    def before_send(self) -> float | None:
        """None: go ahead. A unix time: do not send, sending is paused until then."""

    def after_send(self, result: SendResult) -> None:
        """Called with every result of a request that was attempted."""


#: ``LeaseDeadline.renewed`` set below zero: the task is stopping (its execution timeout, Airflow
#: stopping it), and no request of a batch following it is written any more.
STOPPING = -1.0


class LeaseDeadline:
    """When the claim a batch is sent under runs out (a unix time): no request of it is written after.

    ``own`` comes with the batch (its claim). ``renewed``, when given, is moved by every renewal of
    the claims in flight and counts once it is later than ``own``; in shared memory, a send
    process sees it move. Both are wall-clock times: other workers judge the lease by theirs.
    ``renewed`` set to ``STOPPING`` ends the lease at once: the task sending the batch is stopping.
    """

    __slots__ = ("own", "renewed")

    def __init__(self, own: float, renewed: ctypes.c_double | None = None) -> None:
        self.own = own
        self.renewed = renewed

    def __repr__(self) -> str:
        renewed = None if self.renewed is None else self.renewed.value
        return f"LeaseDeadline(own={self.own!r}, renewed={renewed!r})"

    def passed(self, now: float) -> bool:
        """True once ``now`` (``time.time()``) is past both the batch's own deadline and the renewal's.

        True at once when the task is stopping.
        """
        if self.renewed is None:
            return now >= self.own
        renewed = self.renewed.value
        return renewed < 0 or (now >= self.own and now >= renewed)

    @property
    def stopping(self) -> bool:
        """Whether the task sending the batch is stopping (``renewed`` is ``STOPPING``)."""
        return self.renewed is not None and self.renewed.value < 0

    def check(self) -> None:
        """Raise ``LeaseExpired`` once the deadline has passed (asked right before a request is written)."""
        if self.passed(time.time()):
            raise LeaseExpired(self.stopping)


class LeaseExpired(Exception):
    """The lease of a batch ran out before a request of it was written; nothing of it was.

    ``stopping``: it ended because the task is stopping, not because the claim aged.
    """

    def __init__(self, stopping: bool = False) -> None:
        super().__init__("the task is stopping" if stopping else "the claim ran out")
        self.stopping = stopping


class _LeasedPool:
    """A connection pool as one batch sends through it: no request is written once its lease ran out.

    The lease is checked again once a connection is ready, as opening one can take up to the
    connect timeout.
    """

    __slots__ = ("_check", "pool")

    def __init__(self, pool: Http1Pool, deadline: LeaseDeadline) -> None:
        self.pool = pool
        self._check = deadline.check

    def request(self, request: bytes) -> Awaitable[Answer]:
        return self.pool.request(request, self._check)


# -- the provider's answers ------------------------------------------------------------------

#: The longest provider id or status careflow takes (both readings of an answer hold to it).
_FIELD_MAX = 512
NonEmptyStr = Annotated[str, StringConstraints(min_length=1, max_length=_FIELD_MAX)]


class AcceptedBody(BaseModel):
    """A 2xx answer (and a lookup record): strict, so ``{"id": 123}`` is not an acceptance.

    Both fields of docs/contracts.md §1 are required: an answer without a status proves as little as one
    without an id.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: NonEmptyStr
    status: NonEmptyStr


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: The request's body: compact UTF-8 JSON (about a tenth of ``json.dumps``'s time a message).
_REQUEST_JSON = msgspec.json.Encoder()

#: One decoder for every answer: ``json.loads`` with ``parse_constant`` builds a new one per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


_Field = Annotated[str, msgspec.Meta(min_length=1, max_length=_FIELD_MAX)]


class Accepted(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What careflow keeps of a 2xx answer (and of a lookup record): the provider's id and status."""

    id: _Field
    status: _Field


#: The answer as the contract writes it: one UTF-8 JSON object with ``id`` and ``status`` and
#: nothing else, read in a tenth of a microsecond. Anything else goes to ``AcceptedBody``.
_PLAIN_ANSWER = msgspec.json.Decoder(Accepted)


def parse_accepted(raw: bytes) -> Accepted:
    """The body of a 2xx answer, read as strict JSON (no NaN or Infinity anywhere in it).

    Raises ValueError (ValidationError included) when it is not ``{"id": str, "status": str}``.
    Bytes are decoded as ``json.loads`` decodes them (UTF-8, -16 or -32, a UTF-8 BOM allowed).

    An answer of exactly those two fields in UTF-8 is read by msgspec, which makes of it what
    ``json.loads`` and ``AcceptedBody`` make of it (the last of a repeated key, the same escapes,
    the same length limits) or refuses it; whatever it refuses, or an answer with more fields (a
    number too long for ``int``, NaN, nesting deeper than Python's recursion), is read the long
    way, which decides.
    """
    try:
        return _PLAIN_ANSWER.decode(raw)
    except msgspec.MsgspecError:
        pass
    try:
        document = _STRICT_JSON.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:  # nested deeper than the parser goes: certainly not an acceptance
        raise ValueError("the answer is nested too deeply") from None
    body = AcceptedBody.model_validate(document)
    return Accepted(body.id, body.status)


_PHONE_OR_EMAIL = re.compile(r"\+?\d[\d\-\s().]{5,}\d|[\w.+-]+@[\w-]+\.[\w.-]+")


def redact(text: str, limit: int = 200) -> str:
    """A provider's error text without anything that looks like a phone number or an e-mail."""
    return _PHONE_OR_EMAIL.sub("[redacted]", text)[:limit]


#: What a provider's error code must look like to be kept: a short identifier, no spaces, no ``@``.
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")


def _error_details(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """(code, message, id) from ``{"error": {"code", "message"}}`` or ``{"id"}``, leniently."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than the parser goes
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    code = message = None
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
    elif isinstance(error, str):
        code = error
    if code is not None and not _ERROR_CODE.fullmatch(code):
        # A code goes into reasons, metrics tags and the task log: one that is not a short
        # identifier (a recipient quoted in it, free text) is dropped for the HTTP status.
        code = None
    provider_id = data.get("id") if isinstance(data.get("id"), str) and data.get("id") else None
    return code, (redact(message) if message else None), provider_id


def parse_retry_after(value: str | None, *, now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when is None:
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:  # the asctime and "-0000" forms: an HTTP date is always UTC
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return DEFAULT_RETRY_AFTER
    return max(0.0, seconds)


def classify_response(
    key: str, status: int, raw: bytes, retry_after: str | None = None, latency_ms: float = 0.0
) -> SendResult:
    """Turn one HTTP answer to ``POST /v1/messages`` into a ``SendResult`` (pure, no I/O)."""
    if 200 <= status < 300:
        try:
            accepted = parse_accepted(raw)
        except ValueError:
            # See the module docstring: a 2xx we cannot read proves nothing.
            return SendResult(
                key,
                Outcome.UNKNOWN,
                status_code=status,
                error_code="malformed_response",
                error_message=f"HTTP {status} answer is not {{'id': str, 'status': str}}",
                latency_ms=latency_ms,
                request_sent=True,
            )
        return SendResult(
            key,
            Outcome.ACCEPTED,
            provider_id=accepted.id,
            status_code=status,
            latency_ms=latency_ms,
            request_sent=True,
        )
    code, message, provider_id = _error_details(raw)
    if status == 409:
        outcome = Outcome.DUPLICATE
    elif status == 429:
        return SendResult(
            key,
            Outcome.THROTTLED,
            status_code=status,
            error_code=code or "throttled",
            error_message=message,
            retry_after=parse_retry_after(retry_after),
            latency_ms=latency_ms,
            request_sent=True,
        )
    elif status in (401, 403, 404, 405) or 300 <= status < 400:
        # Wrong token, wrong base URL or a redirect (http -> https): every message would fail alike.
        outcome = Outcome.CONFIGURATION
    elif status == 408 or status >= 500:
        outcome = Outcome.TRANSIENT
    elif 400 <= status < 500:
        outcome = Outcome.PERMANENT
    else:  # 1xx or nonsense: the request left, the outcome is not proven
        outcome = Outcome.UNKNOWN
    return SendResult(
        key,
        outcome,
        provider_id=provider_id if outcome is Outcome.DUPLICATE else None,
        status_code=status,
        error_code=code or (None if outcome is Outcome.DUPLICATE else f"http_{status}"),
        error_message=message,
        latency_ms=latency_ms,
        request_sent=True,
    )


def classify_exception(key: str, exc: BaseException, latency_ms: float = 0.0) -> SendResult:
    """Turn a transport failure into a ``SendResult``: did the request leave or not?"""
    if isinstance(exc, ConnectFailed):
        if exc.configuration is not None:
            return SendResult(
                key,
                Outcome.CONFIGURATION,
                error_code=exc.configuration,
                error_message=str(exc)[:200],
                latency_ms=latency_ms,
            )
        # Refused, DNS, TLS handshake, connect timeout: nothing was written.
        return SendResult(
            key,
            Outcome.TRANSIENT,
            error_code="connect_failed",
            error_message=str(exc)[:200],
            latency_ms=latency_ms,
        )
    # Read timeout, connection closed or reset, a malformed or truncated answer, anything else:
    # the provider may have the message. Never resend blindly; reconcile with lookup().
    code = "timeout" if isinstance(exc, TimeoutError) else "connection_lost"
    message = str(exc)[:200] if isinstance(exc, RequestLost) else type(exc).__name__
    return SendResult(
        key, Outcome.UNKNOWN, error_code=code, error_message=message, latency_ms=latency_ms, request_sent=True
    )


_KEY_OK = re.compile(r"^[\x21-\x7e]{1,255}$")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    # uvloop (installed with Airflow's API server) spends about a third less CPU per request than
    # the default loop; on a worker the client's CPU per message bounds the send rate.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _run(coro: Awaitable[T]) -> T:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(main())
    # Called from inside a running loop (a trigger, a notebook): use a private thread.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="careflow-provider-client", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class _Transport:
    """One connection pool and its semaphore; both belong to the event loop that created them."""

    pool: Http1Pool
    semaphore: asyncio.Semaphore
    loop: asyncio.AbstractEventLoop


@dataclass
class _BatchState:
    stop_code: str | None = None
    stop_until: float | None = None  # unix time, when known
    pause_until: float = 0.0  # loop.time()
    callback_error: BaseException | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_code is not None

    def stop(self, code: str, until: float | None = None) -> None:
        if self.stop_code is None:
            self.stop_code, self.stop_until = code, until


class ProviderClient:
    """Sends messages to one provider over HTTP (docs/contracts.md §1). Cheap to build, safe to share.

    Each batch (or each ``async with client:`` block) uses one keep-alive pool of its own, and
    ``max_concurrency`` bounds the requests in flight within it; batches running side by side in
    several threads each get their own bound (the Airflow pool caps those).

    Parameters: ``base_url`` like ``http://127.0.0.1:8025``; ``token`` the bearer token;
    ``max_concurrency`` requests in flight at most (also the connection pool size); ``timeout``
    seconds to connect and, separately, to wait for the answer; ``name`` the provider's name
    (the circuit breaker and the metrics key on it); ``max_throttle_wait`` the longest shared
    pause a 429 may impose on a batch before the rest of it comes back ``NOT_SENT``. A URL that
    is not ``http(s)://host[:port][/path]`` or a token that cannot go in an HTTP header is a
    ValueError here, before anything is sent. Every connection goes through ``proxy`` where it is
    given (the connection's own), else through the proxy the environment names for the URL's
    scheme (``HTTPS_PROXY``, ``HTTP_PROXY``; ``NO_PROXY`` respected:
    :func:`~careflow.providers.http1.proxy_for`); one that is not an ``http://`` or ``https://``
    URL is a ValueError here too.

    Once the provider answers a send with a configuration error (wrong token or URL), the client
    sends nothing more: every later message, in this batch or the next, comes back ``NOT_SENT``
    with ``error_code="configuration"``. Its credentials do not change while it lives; build a
    new one once the connection is fixed.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        max_concurrency: int = 50,
        timeout: float = 10.0,
        name: str = "default",
        max_throttle_wait: float = 30.0,
        proxy: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.base_url = base_url.rstrip("/")
        token = token or ""  # no token: the provider refuses it (401), a configuration error
        self.token = token
        origin = Origin.parse(self.base_url)
        if not all(0x20 <= ord(c) < 0x7F for c in token):
            raise ValueError("the provider token must be printable ASCII: it goes in an HTTP header")
        self._origin = origin
        self._proxy = parse_proxy(proxy, "the proxy") if proxy else proxy_for(origin)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.name = name
        self.max_throttle_wait = float(max_throttle_wait)
        # Everything a request's head has but its key and length, built once.
        common = (
            f"Host: {origin.host_header}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\nUser-Agent: careflow\r\n"
        )
        self._messages_path = f"{origin.path}/v1/messages"
        self._post_head = (
            f"POST {self._messages_path} HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
        ).encode("ascii")
        self._get_tail = f" HTTP/1.1\r\n{common}\r\n".encode("ascii")
        self._shared: _Transport | None = None
        #: the provider refused this client's credentials or URL: it sends nothing more
        self.refused = False

    def __repr__(self) -> str:
        return f"ProviderClient(name={self.name!r}, base_url={self.base_url!r}, max_concurrency={self.max_concurrency})"

    # -- connections ------------------------------------------------------------------------

    def _open_transport(self) -> _Transport:
        # The answer's total bound (a slow drip) is longer than the read timeout; both start
        # once the request is written, so either one means UNKNOWN, never "not sent".
        pool = Http1Pool(
            self._origin,
            limit=self.max_concurrency,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            total_timeout=2 * self.timeout,
            keepalive=30.0,
            proxy=self._proxy,
        )
        return _Transport(pool, asyncio.Semaphore(self.max_concurrency), asyncio.get_running_loop())

    async def __aenter__(self) -> ProviderClient:
        """Keep one connection pool open across several ``send_many``/``lookup`` calls in this loop."""
        if self._shared is None:
            self._shared = self._open_transport()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def warm(self, count: int) -> None:
        """Start opening up to ``count`` connections (at most ``max_concurrency``) in the pool ``async with`` keeps.

        The first requests take them over as they come (``Http1Pool.warm``). Outside ``async with``
        there is no pool to keep them in, and nothing is opened.
        """
        shared = self._shared
        if shared is not None and shared.loop is asyncio.get_running_loop():
            shared.pool.warm(count)  # the pool keeps at most max_concurrency

    async def aclose(self) -> None:
        """Close the connections opened by ``async with``."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.pool.close()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[_Transport]:
        shared = self._shared
        if shared is not None and shared.loop is asyncio.get_running_loop() and not shared.pool.closed:
            yield shared
            return
        transport = self._open_transport()
        try:
            yield transport
        finally:
            await transport.pool.close()

    # -- sending -----------------------------------------------------------------------------

    async def _post(self, pool: Http1Pool | _LeasedPool, message: Message) -> SendResult:
        key = message.idempotency_key
        if not isinstance(key, str) or not _KEY_OK.match(key):
            return SendResult(
                str(key)[:255],
                Outcome.PERMANENT,
                error_code="invalid_idempotency_key",
                error_message="idempotency key must be 1-255 printable ASCII characters",
            )
        payload: dict[str, Any] = {
            "channel": message.channel,
            "to": message.to,
            "body": message.body,
            "idempotency_key": key,
            "metadata": message.metadata,
        }
        if message.subject is not None:
            payload["subject"] = message.subject
        try:
            data = _REQUEST_JSON.encode(payload)
        except (TypeError, ValueError, msgspec.EncodeError):  # a lone surrogate is a ValueError
            return SendResult(
                key,
                Outcome.PERMANENT,
                error_code="invalid_message",
                error_message="message is not JSON-serialisable",
            )
        request = b"%sIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._post_head,
            key.encode("ascii"),
            len(data),
            data,
        )
        started = time.perf_counter()
        try:
            answer = await pool.request(request)
        except asyncio.CancelledError:
            raise
        except LeaseExpired as exc:
            return self._lease_expired(key, stopping=exc.stopping)
        except Exception as exc:
            return classify_exception(key, exc, (time.perf_counter() - started) * 1000)
        latency_ms = (time.perf_counter() - started) * 1000
        return classify_response(
            key, answer.status, answer.body, answer.headers.get("retry-after"), latency_ms
        )

    @staticmethod
    def _lease_expired(key: str, *, stopping: bool = False) -> SendResult:
        if stopping:
            return SendResult(
                key,
                Outcome.NOT_SENT,
                error_code="task_stopped",
                error_message="not sent: the task was stopped before this message's request was written",
            )
        return SendResult(
            key,
            Outcome.NOT_SENT,
            error_code="lease_expired",
            error_message="not sent: the claim on this message ran out before its request was written",
        )

    @staticmethod
    def _not_sent(key: str, state: _BatchState) -> SendResult:
        retry_after = max(0.0, state.stop_until - time.time()) if state.stop_until else None
        return SendResult(
            key,
            Outcome.NOT_SENT,
            error_code=state.stop_code,
            error_message=f"not sent: batch stopped ({state.stop_code})",
            retry_after=retry_after,
        )

    async def send_many(
        self,
        messages: Iterable[Message],
        *,
        gate: SendGate | None = None,
        on_result: Callable[[SendResult], None] | None = None,
        deadline: LeaseDeadline | None = None,
    ) -> list[SendResult]:
        """Send messages concurrently; one result per message, in input order. Never raises per message.

        ``gate.before_send()`` is asked before each request (a unix time stops the batch) and
        ``gate.after_send(result)`` hears every attempted request. A ``CONFIGURATION`` outcome
        stops the batch at once; a ``THROTTLED`` one pauses the rest of it for ``Retry-After``.
        Once ``deadline`` has passed, checked right before each request is written, the batch
        stops with ``error_code="lease_expired"``: another worker may own its messages by now
        (``"task_stopped"`` when the task is stopping: the requests already written finish).
        Messages not sent once the batch stopped come back ``NOT_SENT``. ``on_result`` is called
        once per message as soon as its result is known (``NOT_SENT`` included). If it raises,
        the batch stops, the requests in flight finish, and the first error is re-raised.
        """
        loop = asyncio.get_running_loop()
        state = _BatchState()
        results: dict[int, SendResult] = {}
        items = enumerate(messages)
        started = time.perf_counter()

        def emit(index: int, result: SendResult) -> None:
            results[index] = result
            if on_result is not None and state.callback_error is None:
                try:
                    on_result(result)
                except Exception as exc:
                    state.callback_error = exc
                    state.stop("result_callback_failed")

        async with self._transport() as transport:
            semaphore = transport.semaphore
            pool = transport.pool if deadline is None else _LeasedPool(transport.pool, deadline)

            async def worker() -> None:
                for index, message in items:  # shared iterator: each message is taken once
                    if self.refused:
                        state.stop("configuration")
                    if state.stopped:
                        emit(index, self._not_sent(message.idempotency_key, state))
                        continue
                    wait = state.pause_until - loop.time()
                    if wait > 0:
                        if wait > self.max_throttle_wait:
                            state.stop("throttled", time.time() + wait)
                        else:
                            await asyncio.sleep(wait)
                        if state.stopped:
                            emit(index, self._not_sent(message.idempotency_key, state))
                            continue
                    if gate is not None:
                        try:
                            until = gate.before_send()
                        except Exception:
                            log.exception("provider %s: send gate failed; stopping the batch", self.name)
                            until, code = time.time(), "gate_error"
                        else:
                            code = "breaker_open"
                        if until is not None:
                            state.stop(code, until)
                            emit(index, self._not_sent(message.idempotency_key, state))
                            continue
                    async with semaphore:
                        # Checked after every wait (a 429's pause, the gate, a free connection) and,
                        # by the pool, once a connection is ready, right before the request is
                        # written: a worker that stalled past its lease sends nothing of the batch
                        # once it resumes. A NOT_SENT given to the gate below hands back a
                        # half-open breaker's probe slot.
                        if deadline is not None and deadline.passed(time.time()):
                            result = self._lease_expired(message.idempotency_key, stopping=deadline.stopping)
                        else:
                            result = await self._post(pool, message)
                        if result.outcome is Outcome.NOT_SENT:
                            state.stop(result.error_code or "lease_expired")
                    if gate is not None:
                        try:
                            gate.after_send(result)
                        except Exception:
                            log.exception("provider %s: send gate failed to record a result", self.name)
                    if result.outcome is Outcome.CONFIGURATION:
                        self.refused = True
                        state.stop("configuration")
                    elif result.outcome is Outcome.THROTTLED:
                        state.pause_until = max(state.pause_until, loop.time() + (result.retry_after or 0.0))
                    emit(index, result)

            size = len(messages) if hasattr(messages, "__len__") else self.max_concurrency  # type: ignore[arg-type]
            workers = max(1, min(self.max_concurrency, size))
            await asyncio.gather(*(worker() for _ in range(workers)))

        ordered = [results[i] for i in range(len(results))]
        self._log_batch(ordered, state, time.perf_counter() - started)
        if state.callback_error is not None:
            raise state.callback_error
        return ordered

    def _log_batch(self, results: list[SendResult], state: _BatchState, seconds: float) -> None:
        if not results:
            return
        counts = Counter(r.outcome.value for r in results)
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        if state.stopped:
            log.warning(
                "provider %s: batch of %d stopped (%s) after %.2fs: %s",
                self.name,
                len(results),
                state.stop_code,
                seconds,
                summary,
            )
        else:
            log.info("provider %s: batch of %d in %.2fs: %s", self.name, len(results), seconds, summary)

    def send_batch(
        self,
        messages: Iterable[Message],
        *,
        gate: SendGate | None = None,
        on_result: Callable[[SendResult], None] | None = None,
        deadline: LeaseDeadline | None = None,
    ) -> list[SendResult]:
        """``send_many`` from synchronous code (an Airflow task): runs its own event loop."""
        return _run_sync(lambda: self.send_many(messages, gate=gate, on_result=on_result, deadline=deadline))

    # -- reconciling -------------------------------------------------------------------------

    async def _get(self, pool: Http1Pool, key: str) -> SendResult | None:
        started = time.perf_counter()
        target = f"GET {self._messages_path}?idempotency_key={quote(str(key), safe='')}"
        try:
            answer: Answer = await pool.request(target.encode("ascii") + self._get_tail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = classify_exception(key, exc, (time.perf_counter() - started) * 1000)
            # A lookup changes nothing at the provider: "unknown" here just means "still unknown".
            return (
                result
                if result.outcome is Outcome.CONFIGURATION
                else replace(result, outcome=Outcome.UNKNOWN)
            )
        latency_ms = (time.perf_counter() - started) * 1000
        status, raw, retry_after = answer.status, answer.body, answer.headers.get("retry-after")
        if status == 404:
            return None
        if status == 200:
            try:
                record = parse_accepted(raw)
            except ValueError:
                return SendResult(
                    key,
                    Outcome.UNKNOWN,
                    status_code=200,
                    error_code="malformed_response",
                    latency_ms=latency_ms,
                )
            return SendResult(
                key,
                Outcome.ACCEPTED,
                provider_id=record.id,
                status_code=200,
                latency_ms=latency_ms,
                request_sent=True,
            )
        result = classify_response(key, status, raw, retry_after, latency_ms)
        if result.outcome is Outcome.CONFIGURATION:
            return result
        return replace(result, outcome=Outcome.UNKNOWN)

    async def lookup(self, idempotency_key: str) -> SendResult | None:
        """What the provider has under this key: ``ACCEPTED`` with its id, or None when it has nothing.

        A lookup that itself fails is not "nothing": it answers ``UNKNOWN`` (or ``CONFIGURATION``
        for a refused token) so that the caller keeps the message unresolved.
        """
        async with self._transport() as transport, transport.semaphore:
            return await self._get(transport.pool, idempotency_key)

    async def lookup_many_async(self, keys: Iterable[str]) -> dict[str, SendResult | None]:
        """``lookup`` for many keys, ``max_concurrency`` at a time."""
        keys = list(dict.fromkeys(keys))
        async with self._transport() as transport:

            async def one(key: str) -> SendResult | None:
                async with transport.semaphore:
                    return await self._get(transport.pool, key)

            found = await asyncio.gather(*(one(k) for k in keys))
        return dict(zip(keys, found, strict=True))

    def lookup_many(self, keys: Iterable[str]) -> dict[str, SendResult | None]:
        """``lookup`` for many keys from synchronous code, concurrently."""
        return _run_sync(lambda: self.lookup_many_async(keys))

    def refused_empty_message(self) -> int:
        """POST a message without fields to the messages endpoint; the HTTP status it gets.

        Nothing can be sent by it: a provider refuses it as invalid (400 or 422) once it has
        accepted the token, which tells a provider that is there from a URL that answers 404 to
        any path. A request that fails raises.
        """

        async def probe() -> int:
            request = b"%sContent-Length: 2\r\n\r\n{}" % self._post_head
            async with self._transport() as transport:
                answer: Answer = await transport.pool.request(request)
            return answer.status

        return _run_sync(probe)
