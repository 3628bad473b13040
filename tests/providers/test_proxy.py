"""The provider client through the HTTP proxy the environment names (a CONNECT tunnel)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.providers.conftest import free_port, make_message
from tests.providers.test_http1 import accepted

from careflow.providers.client import Outcome, ProviderClient, SendResult
from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.http1 import Origin, proxy_for
from support import ScriptedServer, server_context

PROXY_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


class TunnelProxy:
    """A CONNECT proxy on a free port, on an event loop of its own: it tunnels ``provider.test:<port>``
    to 127.0.0.1:<port> (a name nothing else resolves, so a request that arrives went through it)
    and records each CONNECT. With ``tls``, an ``https://`` proxy: clients speak TLS to it first."""

    def __init__(self, credentials: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.credentials = credentials
        self.tls = tls
        self.connects: list[tuple[str, str | None]] = []  # (target, Proxy-Authorization)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._tunnel, "127.0.0.1", 0, ssl=tls), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, user_info: str = "") -> str:
        return f"{'https' if self.tls else 'http'}://{user_info}127.0.0.1:{self.port}"

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        authorization = fields.get("Proxy-Authorization")
        self.connects.append((target, authorization))
        expected = (
            "Basic " + base64.b64encode(self.credentials.encode()).decode() if self.credentials else None
        )
        if expected is not None and authorization != expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        assert host == "provider.test", target
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
        except OSError:  # the provider is down: what a proxy answers then
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tunnels = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tunnels:
                task.cancel()
            await asyncio.gather(*tunnels, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[TunnelProxy]:
    server = TunnelProxy(credentials="careflow:p@ss")
    yield server
    server.close()


def stopped_by_configuration(origin: str, code: str) -> SendResult:
    """Two messages to ``origin``, one at a time: the first comes back a configuration error
    ``code`` with nothing written, and the batch stops there; that first result."""
    client = ProviderClient(origin, "t", max_concurrency=1)
    result, rest = client.send_batch([make_message(1), make_message(2)])
    assert result.outcome is Outcome.CONFIGURATION and result.error_code == code
    assert rest.outcome is Outcome.NOT_SENT and client.refused and not result.request_sent
    assert result.error_message is not None
    return result


@pytest.fixture
def tls_proxy(certificate: tuple[Path, Path]) -> Iterator[TunnelProxy]:
    server = TunnelProxy(credentials="careflow:p@ss", tls=server_context(certificate))
    yield server
    server.close()


def test_messages_go_through_the_proxy_in_tunnels_that_are_kept(
    no_proxy_env: pytest.MonkeyPatch, proxy: TunnelProxy
) -> None:
    with FakeProviderServer(token="t") as fake:
        port = fake.url.rsplit(":", 1)[1]
        no_proxy_env.setenv("HTTP_PROXY", proxy.url("careflow:p%40ss@"))  # a quoted @ in the password
        client = ProviderClient(f"http://provider.test:{port}", "t", max_concurrency=4)
        results = client.send_batch([make_message(i) for i in range(40)])
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 40
        assert fake.stats()["accepted"] == 40
    assert 1 <= len(proxy.connects) <= 4  # one tunnel a connection, each carrying many requests
    credentials = "Basic " + base64.b64encode(b"careflow:p@ss").decode()
    assert set(proxy.connects) == {(f"provider.test:{port}", credentials)}


def test_https_goes_through_the_tunnel_with_the_provider_s_certificate_checked(
    no_proxy_env: pytest.MonkeyPatch,
    proxy: TunnelProxy,
    certificate: tuple[Path, Path],
) -> None:
    with ScriptedServer(lambda n, _: accepted(f"p-{n}"), server_context(certificate)) as server:
        port = server.url.rsplit(":", 1)[1]
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url("careflow:p%40ss@"))
        origin = f"https://provider.test:{port}"
        # first without trusting the certificate: the tunnel opens, TLS refuses the provider
        [refused] = ProviderClient(origin, "t", max_concurrency=1).send_batch([make_message(1)])
        assert refused.outcome is Outcome.CONFIGURATION and refused.error_code == "tls_certificate"
        no_proxy_env.setenv("SSL_CERT_FILE", str(certificate[0]))
        results = ProviderClient(origin, "t", max_concurrency=1).send_batch(
            [make_message(i) for i in range(3)]
        )
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
        assert server.requests and all(b"Host: provider.test:" in r for r in server.requests)
    assert [target for target, _ in proxy.connects] == [f"provider.test:{port}"] * 2


def test_an_https_proxy_carries_the_provider_s_tls_inside_its_own(
    no_proxy_env: pytest.MonkeyPatch, tls_proxy: TunnelProxy, certificate: tuple[Path, Path]
) -> None:
    no_proxy_env.setenv("SSL_CERT_FILE", str(certificate[0]))  # the proxy's CA, and the provider's
    no_proxy_env.setenv("HTTPS_PROXY", tls_proxy.url("careflow:p%40ss@"))
    with ScriptedServer(lambda n, _: accepted(f"p-{n}"), server_context(certificate)) as server:
        port = server.url.rsplit(":", 1)[1]
        client = ProviderClient(f"https://provider.test:{port}", "t", max_concurrency=2)
        results = client.send_batch([make_message(i) for i in range(6)])
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 6
        assert len(server.requests) == 6 and all(b"Host: provider.test:" in r for r in server.requests)
    credentials = "Basic " + base64.b64encode(b"careflow:p@ss").decode()
    assert 1 <= len(tls_proxy.connects) <= 2
    assert set(tls_proxy.connects) == {(f"provider.test:{port}", credentials)}


def test_an_https_proxy_carries_plain_http_too(
    no_proxy_env: pytest.MonkeyPatch, tls_proxy: TunnelProxy, certificate: tuple[Path, Path]
) -> None:
    no_proxy_env.setenv("SSL_CERT_FILE", str(certificate[0]))
    no_proxy_env.setenv("HTTP_PROXY", tls_proxy.url("careflow:p%40ss@"))
    with FakeProviderServer(token="t") as fake:
        port = fake.url.rsplit(":", 1)[1]
        results = ProviderClient(f"http://provider.test:{port}", "t", max_concurrency=2).send_batch(
            [make_message(i) for i in range(6)]
        )
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 6
        assert fake.stats()["accepted"] == 6


def test_an_https_proxy_whose_certificate_is_not_trusted_is_a_configuration_error(
    no_proxy_env: pytest.MonkeyPatch, tls_proxy: TunnelProxy
) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", tls_proxy.url("careflow:p%40ss@"))
    result = stopped_by_configuration("https://provider.test:8443", "tls_certificate")
    assert result.error_message.startswith(
        f"the proxy https://127.0.0.1:{tls_proxy.port}'s TLS certificate was refused: "
    )
    assert tls_proxy.connects == []  # nothing was said to a proxy careflow could not trust


def test_a_proxy_that_refuses_the_credentials_is_a_configuration_error_that_names_it(
    no_proxy_env: pytest.MonkeyPatch, proxy: TunnelProxy
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", proxy.url("careflow:wrong@"))
    # waiting will not mend a wrong password: the batch stops and the alert says why
    result = stopped_by_configuration("http://provider.test:8025", "proxy_refused")
    assert len(proxy.connects) == 1
    assert (
        f"the proxy http://127.0.0.1:{proxy.port} refused a tunnel to provider.test:8025"
        in result.error_message
    )
    assert "407 Proxy Authentication Required" in result.error_message
    assert "wrong" not in result.error_message  # the password is never in a message


def test_a_proxy_that_cannot_reach_the_provider_is_a_transient_connect_failure(
    no_proxy_env: pytest.MonkeyPatch, proxy: TunnelProxy
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", proxy.url("careflow:p%40ss@"))
    port = free_port()  # nothing listens there: the proxy answers 502
    [result] = ProviderClient(f"http://provider.test:{port}", "t", max_concurrency=1).send_batch(
        [make_message(1)]
    )
    assert result.outcome is Outcome.TRANSIENT and result.error_code == "connect_failed"
    assert not result.request_sent
    assert result.error_message is not None
    assert "502 Bad Gateway" in result.error_message


def test_a_proxy_that_cannot_be_reached_is_named_in_the_connect_failure(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    [result] = ProviderClient("http://provider.test:8025", "t", max_concurrency=1).send_batch(
        [make_message(1)]
    )
    assert result.outcome is Outcome.TRANSIENT and not result.request_sent
    assert result.error_message is not None
    assert result.error_message.startswith(
        f"could not connect to the proxy http://127.0.0.1:{port}: ConnectionRefused"
    )


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://sms.example.com", None),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "https://sms.example.com", ("proxy.internal", 3128)),
        ({"https_proxy": "proxy.internal:3128"}, "https://sms.example.com", ("proxy.internal", 3128)),
        ({"HTTPS_PROXY": "http://proxy.internal"}, "https://sms.example.com", ("proxy.internal", 80)),
        ({"HTTPS_PROXY": "https://proxy.internal"}, "https://sms.example.com", ("proxy.internal", 443)),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "http://sms.example.com", None),  # HTTP_PROXY's
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, "http://sms.example.com", ("proxy.internal", 3128)),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "example.com"},
            "https://sms.example.com",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "other.org"},
            "https://sms.example.com",
            ("proxy.internal", 3128),
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "example.com,10.0.0.0/8"},
            "https://10.20.0.7:8443",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "no_proxy": "10.0.0.0/8, fd00::/8"},
            "https://[fd00::7]:8443",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "10.0.0.0/8,not/a/network"},
            "https://192.168.0.7:8443",
            ("proxy.internal", 3128),
        ),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, "http://127.0.0.1:8025", None),  # loopback
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, "http://localhost:8025", None),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, "http://[::1]:8025", None),
    ],
)
def test_which_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: tuple[str, int] | None
) -> None:
    for name, value in env.items():
        no_proxy_env.setenv(name, value)
    proxy = proxy_for(Origin.parse(url))
    assert (proxy.host, proxy.port) == expected if proxy is not None else expected is None


def test_a_proxy_that_is_not_an_http_url_is_refused_before_anything_is_sent(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", "socks5://user:secret@proxy.internal:1080")
    with pytest.raises(
        ValueError, match=r"\(socks5://proxy.internal:1080\) must be an http:// or https:// proxy URL"
    ) as raised:
        ProviderClient("https://sms.example.com", "t")
    assert "secret" not in str(raised.value)
