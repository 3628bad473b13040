"""The provider client through the HTTP proxy the environment names (a CONNECT tunnel)."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.providers.conftest import free_port, make_message
from tests.providers.test_http1 import accepted

from careflow.providers.client import Outcome, ProviderClient
from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.http1 import Origin, proxy_for
from support import ScriptedServer

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
    """A CONNECT proxy on a free port: it tunnels ``provider.test:<port>`` to 127.0.0.1:<port> (a name
    nothing else resolves, so a request that arrives went through it) and records each CONNECT."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.connects: list[tuple[str, str | None]] = []  # (target, Proxy-Authorization)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._start(self._accept)

    def url(self, user_info: str = "") -> str:
        return f"http://{user_info}127.0.0.1:{self.port}"

    @staticmethod
    def _start(target: Callable[..., None], *args: object) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self._start(self._tunnel, client)

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        authorization = fields.get("Proxy-Authorization")
        self.connects.append((target, authorization))
        expected = (
            "Basic " + base64.b64encode(self.credentials.encode()).decode() if self.credentials else None
        )
        if expected is not None and authorization != expected:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        host, port = target.rsplit(":", 1)
        assert host == "provider.test", target
        try:
            upstream = socket.create_connection(("127.0.0.1", int(port)))
        except OSError:  # the provider is down: what a proxy answers then
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._start(self._pump, client, upstream)
        self._pump(upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with ScriptedServer(lambda n, _: accepted(f"p-{n}"), context) as server:
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


def test_a_proxy_that_refuses_the_credentials_is_a_configuration_error_that_names_it(
    no_proxy_env: pytest.MonkeyPatch, proxy: TunnelProxy
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", proxy.url("careflow:wrong@"))
    client = ProviderClient("http://provider.test:8025", "t", max_concurrency=1)
    result, rest = client.send_batch([make_message(1), make_message(2)])
    # waiting will not mend a wrong password: the batch stops and the alert says why
    assert result.outcome is Outcome.CONFIGURATION and result.error_code == "proxy_refused"
    assert rest.outcome is Outcome.NOT_SENT and client.refused
    assert not result.request_sent and len(proxy.connects) == 1
    assert result.error_message is not None
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
        ValueError, match=r"\(socks5://proxy.internal:1080\) must be an http:// proxy URL"
    ) as raised:
        ProviderClient("https://sms.example.com", "t")
    assert "secret" not in str(raised.value)
