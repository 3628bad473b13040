"""The provider client's own HTTP/1.1 transport: keep-alive, framing, timeouts, TLS, bad URLs.

A scripted server on a real socket answers each request with the bytes a test chooses, and
counts the connections it accepted, so reuse and closing are seen from the server's side.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.providers.conftest import make_message

from careflow.providers.client import Outcome, ProviderClient
from careflow.providers.http1 import MAX_ANSWER, ConnectFailed, Http1Pool, Origin, RequestLost
from support import Answer, ScriptedServer, server_context

HEAD_CAP = 64 << 10  # bytes of an answer's status line and headers read at most


def accepted(provider_id: str = "p-1", *, close: bool = False, length: bool = True) -> bytes:
    body = json.dumps({"id": provider_id, "status": "accepted"}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(answer: Answer, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(answer, tls).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


def send_one_by_one(client: ProviderClient, count: int, pause: float = 0.0) -> list:
    """Send ``count`` messages one after the other over one pool, pausing between them."""

    async def run() -> list:
        results = []
        async with client:
            for i in range(count):
                results += await client.send_many([make_message(i)])
                await asyncio.sleep(pause)
        return results

    return asyncio.run(run())


def test_one_connection_carries_many_requests(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: accepted(f"p-{n}"))
    results = send_one_by_one(ProviderClient(server.url, "t", max_concurrency=4), 20)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 20
    assert [r.provider_id for r in results] == [f"p-{n}" for n in range(1, 21)]
    assert server.connections == 1


def test_the_request_is_what_the_provider_api_asks_for(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: accepted())
    client = ProviderClient(f"{server.url}/api/", "tok-1", max_concurrency=1)
    [result] = client.send_batch([make_message(7, body="내일 10:00 예약입니다")])
    assert result.outcome is Outcome.ACCEPTED
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v1/messages HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["authorization"] == "Bearer tok-1"
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "wf1:a1:ex7"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["body"] == "내일 10:00 예약입니다"


def test_a_lookup_quotes_the_key_in_the_query(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: accepted("p-9"))
    client = ProviderClient(server.url, "t")
    found = client.lookup_many(["wf1:a1:ex 1&x=2"])
    assert found["wf1:a1:ex 1&x=2"].provider_id == "p-9"  # type: ignore[union-attr]
    assert server.requests[0].startswith(
        b"GET /v1/messages?idempotency_key=wf1%3Aa1%3Aex%201%26x%3D2 HTTP/1.1\r\n"
    )


def test_connection_close_is_honoured_and_a_new_connection_opened(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda n, _: accepted(f"p-{n}", close=True))
    results = send_one_by_one(ProviderClient(server.url, "t"), 3)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert server.connections == 3


def test_an_idle_connection_the_server_closed_is_not_used_again(serve: Callable[..., ScriptedServer]) -> None:
    # The server answers with keep-alive, then closes while the connection is idle: the next
    # message goes on a new connection and is accepted, not lost on the dead one.
    def answer(n: int, request: bytes) -> Callable[[socket.socket], None]:
        def then_close(conn: socket.socket) -> None:
            conn.sendall(accepted(f"p-{n}"))
            time.sleep(0.05)

        return then_close

    server = serve(answer)
    results = send_one_by_one(ProviderClient(server.url, "t"), 3, pause=0.3)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert server.connections == 3


def test_a_connection_the_server_closed_before_the_next_request_is_not_written_to(
    serve: Callable[..., ScriptedServer],
) -> None:
    # Each answer is keep-alive (no Connection: close) and the server closes right after it, as
    # it may between requests. The close has reached the client when the next message is sent,
    # but its loop has not read it yet (on_result runs between the two and holds the loop).
    def answer(n: int, _: bytes) -> Callable[[socket.socket], None]:
        return lambda conn: conn.sendall(accepted(f"p-{n}"))

    server = serve(answer)
    results = ProviderClient(server.url, "t", max_concurrency=1).send_batch(
        [make_message(i) for i in range(6)], on_result=lambda _: time.sleep(0.1)
    )
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.ACCEPTED, None)] * 6
    assert len(server.requests) == server.connections == 6


def test_an_answer_that_ends_with_the_connection_is_read_whole(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: accepted("p-close", close=True, length=False))
    [result] = ProviderClient(server.url, "t").send_batch([make_message()])
    assert result.outcome is Outcome.ACCEPTED and result.provider_id == "p-close"


def test_a_chunked_answer_is_read_whole(serve: Callable[..., ScriptedServer]) -> None:
    body = b'{"id": "p-chunked", "status": "accepted"}'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    server = serve(lambda n, _: chunked)
    results = send_one_by_one(ProviderClient(server.url, "t"), 2)
    assert [r.provider_id for r in results] == ["p-chunked"] * 2
    assert server.connections == 1


def test_interim_answers_before_the_final_one_are_passed_over(serve: Callable[..., ScriptedServer]) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    server = serve(lambda n, _: b"HTTP/1.1 100 Continue\r\n\r\n" + early + accepted(f"p-{n}"))
    results = send_one_by_one(ProviderClient(server.url, "t"), 3)
    assert [(r.outcome, r.status_code, r.provider_id) for r in results] == [
        (Outcome.ACCEPTED, 200, f"p-{n}") for n in (1, 2, 3)
    ]
    assert server.connections == 1  # the connection stays usable after the interim answers


def test_an_answer_larger_than_the_cap_is_unknown(serve: Callable[..., ScriptedServer]) -> None:
    big = b"x" * (MAX_ANSWER + 1)
    server = serve(lambda n, _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
    [result] = ProviderClient(server.url, "t").send_batch([make_message()])
    assert result.outcome is Outcome.UNKNOWN and result.request_sent
    assert "larger than" in (result.error_message or "")


@pytest.mark.parametrize("pieces", [1, 40], ids=["in-one-piece", "never-ending"])
def test_an_answer_head_larger_than_the_cap_is_unknown(
    serve: Callable[..., ScriptedServer], pieces: int
) -> None:
    # One header of 100 KiB, whole or streamed 40 times over (a head that never ends): the answer
    # is given up at once, not read into memory until a timeout.
    junk = b"a" * (100 << 10)

    def big_head(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Junk: ")
        for _ in range(pieces):
            conn.sendall(junk)
        conn.sendall(b"\r\n" + accepted()[len(b"HTTP/1.1 200 OK\r\n") :])
        time.sleep(1)

    server = serve(lambda n, _: big_head)
    started = time.monotonic()
    [result] = ProviderClient(server.url, "t", timeout=5).send_batch([make_message()])
    assert (result.outcome, result.error_code, result.request_sent) == (
        Outcome.UNKNOWN,
        "connection_lost",
        True,
    )
    assert f"head is larger than {HEAD_CAP} bytes" in (result.error_message or "")
    assert time.monotonic() - started < 2


def test_an_answer_head_just_under_the_cap_is_read(serve: Callable[..., ScriptedServer]) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Junk: %s\r\n" % (b"a" * (HEAD_CAP - 200))
    server = serve(lambda n, _: head + accepted()[len(b"HTTP/1.1 200 OK\r\n") :])
    [result] = ProviderClient(server.url, "t").send_batch([make_message()])
    assert result.outcome is Outcome.ACCEPTED


def test_no_answer_is_a_read_timeout_and_unknown(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: lambda conn: time.sleep(3))
    started = time.monotonic()
    [result] = ProviderClient(server.url, "t", timeout=0.3).send_batch([make_message()])
    assert result.outcome is Outcome.UNKNOWN and result.error_code == "timeout" and result.request_sent
    assert time.monotonic() - started < 2


def test_an_answer_dripping_in_is_cut_at_twice_the_timeout(serve: Callable[..., ScriptedServer]) -> None:
    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(40):  # one byte every 0.1 s: never 0.3 s without data, 4 s in all
            time.sleep(0.1)
            conn.sendall(b" ")

    server = serve(lambda n, _: drip)
    started = time.monotonic()
    [result] = ProviderClient(server.url, "t", timeout=0.3).send_batch([make_message()])
    assert result.outcome is Outcome.UNKNOWN and result.error_code == "timeout"
    assert 0.5 < time.monotonic() - started < 2


def test_an_unreachable_host_is_transient_and_nothing_was_sent() -> None:
    with socket.socket() as sock:  # a port that is bound but does not listen: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        [result] = ProviderClient(f"http://127.0.0.1:{port}", "t").send_batch([make_message()])
    assert result.outcome is Outcome.TRANSIENT and result.error_code == "connect_failed"
    assert not result.request_sent


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("127.0.0.1:8025", "http:// or https://"),
        ("ftp://provider.example", "http:// or https://"),
        ("http://", "no host"),
        ("http://provider.example:99999", "not a URL"),
        ("http://provider.example/v1?x=1", "query"),
        ("http://provider example.com", "printable ASCII"),
        ("http://a..b:8025", "cannot be looked up"),
        (f"http://{'x' * 64}.example:8025", "cannot be looked up"),
    ],
)
def test_a_url_that_is_not_usable_is_refused_by_name(url: str, words: str) -> None:
    with pytest.raises(ValueError, match="provider URL") as caught:
        ProviderClient(url, "t")
    assert words in str(caught.value)


def test_a_token_that_cannot_go_in_a_header_is_refused() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        ProviderClient("http://127.0.0.1:8025", "abc\r\nX-Evil: 1")


def test_origin_host_header_keeps_a_non_default_port_and_brackets_ipv6() -> None:
    assert Origin.parse("https://p.example").host_header == "p.example"
    assert Origin.parse("https://p.example:8443/base/").host_header == "p.example:8443"
    assert Origin.parse("https://p.example:8443/base/").path == "/base"
    assert Origin.parse("http://[::1]:8025").host_header == "[::1]:8025"


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(serve: Callable[..., ScriptedServer], certificate: tuple[Path, Path]) -> ScriptedServer:
    return serve(lambda n, _: accepted(f"p-tls-{n}"), tls=server_context(certificate))


def test_a_certificate_the_system_does_not_trust_is_a_configuration_error(tls_server: ScriptedServer) -> None:
    client = ProviderClient(tls_server.url, "t", max_concurrency=1)
    first, second = client.send_batch([make_message(1), make_message(2)])
    assert first.outcome is Outcome.CONFIGURATION and first.error_code == "tls_certificate"
    assert not first.request_sent and tls_server.requests == []
    assert second.outcome is Outcome.NOT_SENT and client.refused


def test_https_with_a_trusted_certificate_sends_and_keeps_the_connection(
    tls_server: ScriptedServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # how an operator trusts a private CA
    results = send_one_by_one(ProviderClient(tls_server.url, "t"), 3)
    assert [r.provider_id for r in results] == ["p-tls-1", "p-tls-2", "p-tls-3"]
    assert tls_server.connections == 1


def test_the_pool_tells_not_written_from_written(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: None)  # reads the request, closes without a word

    async def run() -> None:
        pool = Http1Pool(
            Origin.parse(server.url), limit=2, connect_timeout=1, read_timeout=1, total_timeout=2
        )
        with pytest.raises(RequestLost, match="closed before the answer"):
            await pool.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await pool.close()
        with pytest.raises(ConnectFailed, match="closed"):
            await pool.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    asyncio.run(run())


def test_a_host_name_resolution_refuses_is_a_connect_failure() -> None:
    # Past Origin.parse's checks (built by hand): the resolver raises UnicodeError (a
    # UnicodeEncodeError on 3.13), not OSError.
    async def run() -> None:
        pool = Http1Pool(
            Origin("http", "a..b", 8025, ""), limit=1, connect_timeout=1, read_timeout=1, total_timeout=2
        )
        with pytest.raises(ConnectFailed, match="Unicode(Encode)?Error"):
            await pool.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    asyncio.run(run())


@pytest.mark.parametrize("error", [ValueError("bad"), RuntimeError("loop trouble")])
def test_any_error_before_the_request_is_written_is_a_connect_failure(
    serve: Callable[..., ScriptedServer], error: Exception
) -> None:
    server = serve(lambda n, _: accepted())

    async def run() -> None:
        loop = asyncio.get_running_loop()

        async def refuse(*args: object, **kwargs: object) -> None:
            raise error

        loop.create_connection = refuse  # type: ignore[method-assign,assignment]
        pool = Http1Pool(
            Origin.parse(server.url), limit=1, connect_timeout=1, read_timeout=1, total_timeout=2
        )
        with pytest.raises(ConnectFailed, match=type(error).__name__):
            await pool.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    asyncio.run(run())
    assert server.requests == []


def test_the_tls_context_is_built_once_and_again_when_the_trusted_cas_change(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.providers.http1 import default_ssl_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    first = default_ssl_context()
    assert default_ssl_context() is first
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    trusting = default_ssl_context()
    assert trusting is not first and default_ssl_context() is trusting


def test_a_slow_answer_leaves_no_timeout_behind_for_the_next_request_on_its_connection(
    serve: Callable[..., ScriptedServer],
) -> None:
    # timeout 0.3 s: no gap of 0.3 s without data, and 0.6 s for a whole answer. The first answer
    # comes in three pieces over 0.4 s (its read-timeout check is put off once); the second one,
    # on the same connection, in two over 0.25 s, and is still coming when the first one's
    # 0.6 s would be up.
    body = b'{"id": "p-%d", "status": "accepted"}'

    def drip(n: int, _: bytes) -> Callable[[socket.socket], bool]:
        def write(conn: socket.socket) -> bool:
            text = body % n
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text) + text[:5])
            pieces = [text[5:15], text[15:]] if n == 1 else [text[5:]]
            for piece in pieces:
                time.sleep(0.2 if n == 1 else 0.25)
                conn.sendall(piece)
            return True

        return write

    server = serve(drip)
    results = send_one_by_one(ProviderClient(server.url, "t", timeout=0.3), 2)
    assert [(r.outcome, r.provider_id) for r in results] == [
        (Outcome.ACCEPTED, "p-1"),
        (Outcome.ACCEPTED, "p-2"),
    ]
    assert server.connections == 1


def pool_for(url: str, limit: int = 4) -> Http1Pool:
    return Http1Pool(Origin.parse(url), limit=limit, connect_timeout=1, read_timeout=1, total_timeout=2)


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_connections_opened_ahead_are_taken_over_by_the_first_requests(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda n, _: accepted(f"p-{n}"))

    async def run() -> list[int]:
        pool = pool_for(server.url)
        pool.warm(10)  # at most the pool's limit
        answers = await asyncio.gather(*(pool.request(REQUEST) for _ in range(4)))
        await pool.close()
        return [a.status for a in answers]

    assert asyncio.run(run()) == [200] * 4
    assert server.connections == 4  # the four opened ahead; no request opened one of its own


def test_connections_opened_ahead_and_not_taken_wait_idle_for_the_next_requests(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda n, _: accepted(f"p-{n}"))

    async def run() -> None:
        pool = pool_for(server.url)
        pool.warm(3)
        for _ in range(50):  # until they are open
            if len(pool._idle) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(pool._idle) == 3 and not pool._opening
        for _ in range(3):
            await pool.request(REQUEST)
        pool.warm(3)  # three are open already: nothing more to open
        assert not pool._opening
        await pool.close()

    asyncio.run(run())
    assert server.connections == 3


def test_a_request_that_takes_over_a_failed_connect_fails_as_not_written() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> None:
        pool = pool_for(f"http://127.0.0.1:{port}")
        pool.warm(2)
        with pytest.raises(ConnectFailed, match="could not connect"):
            await pool.request(REQUEST)
        await asyncio.sleep(0.05)  # the other one fails too, and is dropped
        assert not pool._opening and not pool._idle
        await pool.close()

    asyncio.run(run())


def test_closing_the_pool_drops_the_connections_still_opening(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n, _: accepted())

    async def run() -> None:
        pool = pool_for(server.url)
        pool.warm(4)
        await pool.close()
        assert not pool._opening and not pool._idle
        pool.warm(4)  # a closed pool opens nothing
        assert not pool._opening
        with pytest.raises(ConnectFailed, match="closed"):
            await pool.request(REQUEST)

    asyncio.run(run())
