"""A small HTTP/1.1 client for the provider's two requests: asyncio protocols, httptools, keep-alive.

The provider client sends one request per message, so on a busy worker the CPU each exchange
costs bounds the send rate. A general-purpose client (aiohttp) spends most of its time on what
these requests never need: redirects, cookies, compression, multipart, streaming readers and
tracing hooks. This one does only what the provider's API asks for:

- one origin (``http`` or ``https``), a keep-alive pool of connections to it, reused newest
  first and dropped after ``keepalive`` idle seconds; ``warm`` opens some ahead of the first
  requests, which take them over as they come;
- each connection straight to the origin or through a tunnel a proxy opens (``CONNECT``; the
  connection's, or the environment's: :func:`proxy_for`), inside TLS to the proxy for an
  ``https://`` one;
- one request at a time per connection (no pipelining), its head written in one piece;
- answers framed by ``Content-Length``, by chunks or by the connection closing, parsed by
  ``httptools`` (the C parser of Node's ``llhttp``), a head of at most ``MAX_HEAD`` bytes and
  a body of at most ``MAX_ANSWER``;
- a connect timeout, a read timeout (no byte of the answer for ``read_timeout`` seconds) and a
  bound on the whole answer (``total_timeout``).

Every failure is one of two exceptions, because the caller must tell them apart (docs/contracts.md §1):
:class:`ConnectFailed` when nothing was written (refused, DNS, TLS handshake, connect timeout, any
other error before the request's first byte): the provider cannot have the message;
:class:`RequestLost` when the request was written and no complete, well-formed answer came back
(closed, reset, timed out, malformed, too large): the provider may have it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

MAX_ANSWER = 1 << 20
"""Bytes of an answer's body read at most; the provider's answers are a few hundred bytes."""

MAX_HEAD = 64 << 10
"""Bytes of an answer's status line and headers read at most (interim answers' included)."""

#: Answer headers kept (lower case); the client reads nothing else.
_KEPT = frozenset({b"retry-after", b"content-length", b"transfer-encoding"})


class ConnectFailed(ConnectionError):
    """No connection could be opened; nothing of the request was written."""

    def __init__(self, message: str, *, configuration: str | None = None) -> None:
        super().__init__(message)
        #: set where waiting will not mend it (a configuration error, not an outage): the code
        #: ``tls_certificate`` (the provider's or the proxy's certificate was refused) or ``proxy_refused`` (the proxy
        #: answered the tunnel with a 4xx such as 407: its credentials or its rules)
        self.configuration = configuration


class RequestLost(ConnectionError):
    """The request was written, and no complete well-formed answer came back."""


class ReadTimeout(RequestLost, TimeoutError):
    """The request was written, and the answer did not come in time."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, the kept headers (lower-case names) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host, port and the base path, from a URL like ``https://h:8443/p``."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        """The origin of ``url``; ValueError naming what is wrong with it."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"provider URL {url!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"provider URL {url!r} must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"provider URL {url!r} has no host")
        try:
            parts.hostname.encode("idna")  # what name resolution does to it: empty or too long labels
        except UnicodeError:
            raise ValueError(
                f"provider URL {url!r} has a host name that cannot be looked up "
                "(an empty label or one longer than 63 characters)"
            ) from None
        if parts.query or parts.fragment:
            raise ValueError(f"provider URL {url!r} must not have a query or a fragment")
        if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
            raise ValueError(f"provider URL {url!r} has spaces or characters outside printable ASCII")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        """``host:port``, an IPv6 address in brackets: what a proxy's ``CONNECT`` names."""
        return f"{self._bracketed_host}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self._bracketed_host if self.port == default else self.authority

    @property
    def _bracketed_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy the requests to an origin go through, in a tunnel it opens (``CONNECT``)."""

    host: str
    port: int
    #: the ``Proxy-Authorization`` value (Basic) from the user and password in the proxy's URL
    authorization: str | None
    #: the proxy's URL without its password, for messages
    name: str
    #: an ``https://`` proxy: TLS to the proxy itself (its certificate checked), the tunnel inside it
    tls: bool = False


def proxy_for(origin: Origin) -> Proxy | None:
    """The proxy the environment names for ``origin``, or None to connect directly.

    ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the origin's scheme (either case; ``ALL_PROXY`` not read),
    unless ``NO_PROXY`` names the host (a name, a domain, an address, or a network such as
    ``10.0.0.0/8`` an address is in), as curl and Python's ``urllib`` read them. A loopback origin
    (``localhost``, 127.0.0.0/8, ``::1``) is always reached directly: a proxy's loopback is its own.
    ValueError naming the variable's value (without its password) when it is not an ``http://``
    or ``https://`` proxy URL.
    """
    url = environment_proxy(origin)
    return parse_proxy(url, f"the {origin.scheme} proxy the environment names") if url else None


def environment_proxy(origin: Origin) -> str | None:
    """The URL of the proxy the environment names for ``origin`` (as :func:`proxy_for` reads it), or None."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(origin.scheme)
    if not url or loopback(origin.host) or urllib.request.proxy_bypass(origin.host):
        return None
    if _in_a_network(origin.host, proxies.get("no", "")):
        return None
    return url


def _in_a_network(host: str, no_proxy: str) -> bool:
    """Whether ``host`` is an address in a network ``no_proxy`` names (``10.0.0.0/8``), which
    ``urllib`` does not read and curl and requests do."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name
        return False
    for entry in no_proxy.split(","):
        try:
            if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def parse_proxy(url: str, what: str) -> Proxy:
    """The proxy of a URL (``http://`` or ``https://``, a user and password for Basic
    authentication); ValueError naming ``what`` and the URL without its password otherwise."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        raise ValueError(
            f"{what} ({parts.scheme}://{parts.hostname}) has a port that is not 1 to 65535"
        ) from None
    name = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{what} ({name}) must be an http:// or https:// proxy URL such as http://proxy.internal:3128"
        )
    authorization = None
    if parts.username is not None:
        user_and_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(user_and_password.encode()).decode("ascii")
    tls = parts.scheme == "https"
    return Proxy(parts.hostname, port or (443 if tls else 80), authorization, name, tls)


def loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost`` (and its subdomains), 127.0.0.0/8, ``::1``."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def default_ssl_context() -> ssl.SSLContext:
    """The system's verifying TLS context, built once per process (loading the CA bundle is slow).

    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` (how an operator trusts a private CA) are read each
    time, so a change to them takes effect.
    """
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _contexts.get(key)
    if context is None:
        context = _contexts[key] = ssl.create_default_context()
    return context


class _TunnelAnswer(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT``: its head (a tunnel's answer has no body)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if not self.answer.done() and (b"\r\n\r\n" in self._head or len(self._head) > 65_536):
            self.answer.set_result(self._head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result(self._head)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` writes a request and waits for its answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0  # bytes of the heads parsed, interim answers' included
        self._head_read = 0  # bytes read while a head was unfinished
        self._headers_done = False
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._headers_done and self._until_close():
            self._answer()  # an answer without length or chunks ends where the connection does
        else:
            reason = "reset" if exc is not None else "closed"
            waiter.set_exception(RequestLost(f"the connection was {reason} before the answer was complete"))

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        if self._waiter is None or self._waiter.done():
            self._fail(RequestLost("the server sent bytes nobody asked for"))
            return
        if not self._headers_done:
            self._head_read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RequestLost("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(RequestLost(f"the answer is not HTTP/1.1: {exc}"))
        else:
            # The parser keeps an unfinished header whole until its line ends: a head that never
            # ends is cut here, by the bytes read, all of them head bytes while it is unfinished.
            if not self._headers_done and self._head_read > MAX_HEAD:
                self._fail(RequestLost(f"the answer's head is larger than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides about the answer

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():  # a second answer to one request
            self.reusable = False

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status) + 15)  # "HTTP/1.1 200 " and CRLF

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        name = name.lower()
        if name in _KEPT:
            self._headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            self._fail(RequestLost(f"the answer's head is larger than {MAX_HEAD} bytes"))
            raise RequestLost("head too large")  # stops the parser

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_ANSWER:
            self._fail(RequestLost(f"the answer is larger than {MAX_ANSWER} bytes"))
            raise RequestLost("answer too large")  # stops the parser
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is None or self._waiter.done():  # a second answer to one request
            self.reusable = False
            return
        if self._status < 200:
            # An interim answer (100 Continue, 103 Early Hints from a proxy or CDN): the final
            # one follows on this connection, and is the answer (RFC 9110 §15.2).
            self._status, self._headers, self._body, self._size = 0, {}, [], 0
            self._headers_done = False
            return
        keep = self._parser.should_keep_alive()
        self._answer()
        self.reusable = keep and not self.closed

    # -- the exchange ----------------------------------------------------------------------------

    def _until_close(self) -> bool:
        return "content-length" not in self._headers and "transfer-encoding" not in self._headers

    def _answer(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(Answer(self._status, self._headers, body))

    def _fail(self, exc: RequestLost) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def writable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def exchange(self, request: bytes, read_timeout: float, total_timeout: float) -> Answer:
        """Write ``request`` and wait for its answer (RequestLost or ReadTimeout otherwise).

        ConnectFailed when the transport refuses the write: then nothing of it was written.
        """
        assert self.transport is not None
        self._status, self._headers, self._body, self._size = 0, {}, [], 0
        self._head_size = self._head_read = 0
        self._headers_done = self.reusable = False
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self._waiter = waiter
        try:
            self.transport.write(request)
        except Exception as exc:
            self._waiter = None
            raise ConnectFailed(f"the request could not be written: {type(exc).__name__}: {exc}") from exc
        started = self._last_data = self.loop.time()
        deadline = started + total_timeout
        self._timer = self.loop.call_at(
            min(started + read_timeout, deadline), self._check_time, deadline, read_timeout
        )
        try:
            return await waiter
        finally:
            # The check as last rescheduled: never left to fire on the next request.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None

    def _check_time(self, deadline: float, read_timeout: float) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        now = self.loop.time()
        if now >= deadline:
            self._fail(ReadTimeout("the answer did not end in time"))
        elif now - self._last_data >= read_timeout:
            self._fail(ReadTimeout(f"no answer for {read_timeout:g}s"))
        else:
            self._timer = self.loop.call_at(
                min(self._last_data + read_timeout, deadline), self._check_time, deadline, read_timeout
            )


class Http1Pool:
    """Keep-alive connections to one origin, opened as needed, reused newest first.

    The caller bounds how many requests run at once; the pool keeps up to ``limit`` idle
    connections. It belongs to the event loop that first uses it. ``request`` raises
    :class:`ConnectFailed` (nothing written) or :class:`RequestLost` (written, no proof of an
    answer); cancelling it drops the connection.
    """

    def __init__(
        self,
        origin: Origin,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        keepalive: float = 30.0,
        ssl_context: Callable[[], ssl.SSLContext] = default_ssl_context,
        proxy: Proxy | None = None,
    ) -> None:
        self.origin = origin
        #: where connections go through to the origin (None: straight to it)
        self.proxy = proxy
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.keepalive = keepalive
        self._ssl_context = ssl_context
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        #: connects ``warm`` started that no request has taken over yet
        self._opening: deque[asyncio.Task[_Connection]] = deque()
        self.closed = False

    def warm(self, count: int) -> None:
        """Start opening connections so that ``count`` are open or opening (at most ``limit``).

        Each is a connect started early: a request that finds no idle connection takes over the
        oldest still opening, and raises what that connect raised, as if it had started it
        (:class:`ConnectFailed`: nothing was written). One that no request took over joins the
        idle connections; one that failed is dropped. Needs a running event loop.
        """
        loop = asyncio.get_running_loop()
        wanted = min(count, self.limit) - len(self._idle) - len(self._busy) - len(self._opening)
        for _ in range(max(0, wanted) if not self.closed else 0):
            task = loop.create_task(self._connect(loop))
            task.add_done_callback(self._opened)
            self._opening.append(task)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        if task not in self._opening:  # taken over by a request, which has its outcome
            return
        self._opening.remove(task)
        if task.cancelled() or task.exception() is not None:
            return  # the requests after it connect themselves, and see their own failure
        self._keep_unused(task.result())

    async def request(self, request: bytes, before_write: Callable[[], object] | None = None) -> Answer:
        """Send one whole request (head and body) and return its answer.

        ``before_write`` is called once a connection is ready, right before the request is
        written to it: what it raises is raised as is, and nothing is written.
        """
        loop = asyncio.get_running_loop()
        connection = await self._reuse(loop) or await self._take_over() or await self._connect(loop)
        if before_write is not None:
            try:
                before_write()
            except BaseException:
                self._keep_unused(connection)
                raise
        self._busy.add(connection)
        try:
            answer = await connection.exchange(request, self.read_timeout, self.total_timeout)
        except BaseException:
            connection.abort()
            raise
        finally:
            self._busy.discard(connection)
        if connection.reusable and not self.closed and len(self._idle) < self.limit:
            connection.idle_since = loop.time()
            self._idle.append(connection)
        else:
            self._close(connection)
        return answer

    async def _reuse(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        if self._idle:
            # A server may close an idle connection at any time: a close that has arrived but
            # that the loop has not read yet would have the request written to a dead connection
            # (lost, UNKNOWN). One turn of the loop lets it be read first.
            await asyncio.sleep(0)
        if self.closed:
            raise ConnectFailed("the connection pool is closed")
        stale_before = loop.time() - self.keepalive
        while self._idle:
            connection = self._idle.pop()
            if connection.writable() and connection.idle_since > stale_before:
                return connection
            self._close(connection)
        return None

    async def _take_over(self) -> _Connection | None:
        """The oldest connect ``warm`` started, awaited as if this request had started it; None if none."""
        if not self._opening:
            return None
        return await self._opening.popleft()

    def _keep_unused(self, connection: _Connection) -> None:
        if connection.writable() and not self.closed and len(self._idle) < self.limit:
            self._idle.append(connection)
        else:
            self._close(connection)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        origin, proxy = self.origin, self.proxy
        context = self._verifying() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None:
                    return await self._through_proxy(loop, proxy, context)
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except ConnectFailed:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(
                f"the server's TLS certificate was refused: {exc.verify_message}",
                configuration="tls_certificate",
            ) from exc
        except TimeoutError as exc:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g}s") from exc
        except Exception as exc:  # refused, DNS, TLS; a name the resolver cannot encode (UnicodeError)
            raise ConnectFailed(f"could not connect: {type(exc).__name__}: {exc}") from exc
        return connection

    def _verifying(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = self._ssl_context()
        return self._ssl

    async def _through_proxy(
        self, loop: asyncio.AbstractEventLoop, proxy: Proxy, context: ssl.SSLContext | None
    ) -> _Connection:
        """A connection to the origin in a tunnel ``proxy`` opens (``CONNECT``; inside TLS to the
        proxy for an ``https://`` one), with the origin's own TLS inside it for an ``https`` origin."""
        try:
            transport, opening = await loop.create_connection(
                lambda: _TunnelAnswer(loop),
                proxy.host,
                proxy.port,
                ssl=self._verifying() if proxy.tls else None,
                server_hostname=proxy.host if proxy.tls else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(
                f"the proxy {proxy.name}'s TLS certificate was refused: {exc.verify_message}",
                configuration="tls_certificate",
            ) from exc
        except OSError as exc:  # refused, DNS, TLS
            raise ConnectFailed(
                f"could not connect to the proxy {proxy.name}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            transport.write(self._connect_request(proxy))
            self._check_tunnel(proxy, await opening.answer)
            connection = _Connection(loop)
            if context is None:
                transport.set_protocol(connection)
            else:
                inner = await loop.start_tls(transport, connection, context, server_hostname=self.origin.host)
                if inner is None:  # the connection closed during the handshake
                    raise ConnectFailed(f"the tunnel through the proxy {proxy.name} closed during TLS")
                transport = inner
            connection.connection_made(transport)
        except BaseException:
            transport.abort()
            raise
        return connection

    def _connect_request(self, proxy: Proxy) -> bytes:
        target = self.origin.authority
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        return f"{head}\r\n".encode("ascii")

    def _check_tunnel(self, proxy: Proxy, answer: bytes) -> None:
        """Raise :class:`ConnectFailed` unless ``answer`` is the proxy's 2xx to ``CONNECT``."""
        target = self.origin.authority
        if b"\r\n\r\n" not in answer:
            raise ConnectFailed(f"the proxy {proxy.name} did not answer CONNECT {target}")
        status = answer.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = status.partition(" ")
        if not (version.startswith("HTTP/1.") and rest[:1] == "2" and answer.endswith(b"\r\n\r\n")):
            # 407 (its credentials), 403 (its rules), 405 (no CONNECT there): wrong until
            # someone changes them; 408, 429 and 5xx (the provider unreachable from it): an outage.
            refused = rest[:1] == "4" and rest[:3] not in ("408", "429")
            raise ConnectFailed(
                f"the proxy {proxy.name} refused a tunnel to {target}: {status[:200]}",
                configuration="proxy_refused" if refused else None,
            )

    @staticmethod
    def _close(connection: _Connection) -> None:
        if connection.transport is not None and not connection.closed:
            connection.transport.close()

    async def close(self) -> None:
        """Close the idle connections and drop the busy ones; the pool takes no more requests."""
        self.closed = True
        idle, self._idle = self._idle, []
        opening, self._opening = self._opening, deque()
        for task in opening:
            task.cancel()
        for connection in idle:
            self._close(connection)
        for connection in list(self._busy):
            connection.abort()
        if opening:
            # a connect that ended before its cancel arrived: its connection is not kept
            for opened in await asyncio.gather(*opening, return_exceptions=True):
                if isinstance(opened, _Connection):
                    self._close(opened)
        if idle:
            await asyncio.sleep(0)  # let the transports run their close callbacks
