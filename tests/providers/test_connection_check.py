"""The Airflow connection test of ``careflow_messaging``: only a provider that is there passes."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.hook import MessagingHook
from support import refusing_port


@pytest.fixture(autouse=True)
def env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")


@pytest.fixture
def not_a_provider() -> Iterator[str]:
    """A web server that answers 404 to every path, like a static site or another service."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check(monkeypatch: pytest.MonkeyPatch, host: str, token: str) -> tuple[bool, str]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps({"conn_type": "http", "host": host, "password": token})
    )
    return MessagingHook().test_connection()


def test_the_provider_with_its_token_passes_and_nothing_is_sent(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check(monkeypatch, fake.url, fake.token) == (True, "provider reachable, token accepted")
    assert fake.stats()["accepted"] == 0


def test_a_wrong_base_path_on_the_providers_host_fails(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = check(monkeypatch, f"{fake.url}/api", fake.token)
    assert not ok and f"no messages endpoint at {fake.url}/api/v1/messages (HTTP 404)" in message


def test_a_server_that_answers_404_to_everything_fails(
    not_a_provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = check(monkeypatch, not_a_provider, "any-token")
    assert not ok and "check the base URL" in message


def test_a_provider_that_cannot_be_reached_is_said_in_the_clients_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with refusing_port() as port:
        ok, message = check(monkeypatch, f"http://127.0.0.1:{port}", "any-token")
    assert not ok
    assert message == (
        "provider did not answer (connect_failed: could not connect: ConnectionRefusedError: "
        "[Errno 111] Connection refused)"
    )


def test_a_wrong_token_fails(fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, message = check(monkeypatch, fake.url, "wrong")
    assert not ok and "401" in message


def test_a_proxy_that_refuses_the_tunnel_fails_in_its_own_words(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.providers.test_proxy import PROXY_ENV, TunnelProxy

    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    proxy = TunnelProxy(credentials="careflow:right")
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url("careflow:wrong@"))
        ok, message = check(monkeypatch, fake.url.replace("127.0.0.1", "provider.test"), fake.token)
    finally:
        proxy.close()
    assert not ok
    assert message.startswith(
        f"could not reach the provider: the proxy http://127.0.0.1:{proxy.port} refused"
    )
    assert "407 Proxy Authentication Required" in message and "wrong" not in message


def test_a_proxy_the_connection_names_is_used_instead_of_the_environment_s(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.providers.test_proxy import PROXY_ENV, TunnelProxy

    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the environment's: nothing listens there
    proxy = TunnelProxy(credentials="careflow:right")
    try:
        conn = {
            "conn_type": "http",
            "host": fake.url.replace("127.0.0.1", "provider.test"),
            "password": fake.token,
            "extra": {"proxies": {"http": proxy.url("careflow:right@"), "https": "http://127.0.0.1:9"}},
        }
        monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
        assert MessagingHook().test_connection() == (True, "provider reachable, token accepted")
        assert proxy.connects and {target for target, _ in proxy.connects} == {
            f"provider.test:{fake.url.rsplit(':', 1)[1]}"
        }
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("proxies", "error"),
    [
        ("http://proxy.internal:3128", "extra.proxies must be an object of proxy URLs by scheme"),
        (
            {"https": "socks5://u:secret@proxy.internal:1080"},
            "(socks5://proxy.internal:1080) must be an http://",
        ),
        ({"https": "http://u:secret@proxy.internal:31280000"}, "has a port that is not 1 to 65535"),
    ],
)
def test_a_proxy_the_connection_cannot_use_is_refused_by_name(
    proxies: object, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.exceptions import ConfigurationError

    conn = {
        "conn_type": "http",
        "host": "https://sms.example.com",
        "password": "t",
        "extra": {"proxies": proxies},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
    with pytest.raises(ConfigurationError) as refused:
        MessagingHook().get_client()
    assert error in str(refused.value) and "careflow_messaging" in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"max_concurrency": "fifty"}, "extra.max_concurrency must be a whole number, got 'fifty'"),
        ({"max_concurrency": 2.5}, "extra.max_concurrency must be a whole number, got 2.5"),
        ({"timeout": "10s"}, "extra.timeout must be a number, got '10s'"),
        ({"timeout": "nan"}, "extra.timeout must be a number, got 'nan'"),
        ({"max_concurrency": 0}, "max_concurrency must be at least 1, got 0"),
    ],
)
def test_limits_the_connection_cannot_have_are_refused_by_name(
    extra: dict[str, object], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from careflow.exceptions import ConfigurationError

    conn = {"conn_type": "http", "host": "https://sms.example.com", "password": "t", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
    with pytest.raises(ConfigurationError, match="careflow_messaging") as refused:
        MessagingHook().get_client()
    assert error in str(refused.value)


def test_limits_given_as_text_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "http",
        "host": "https://sms.example.com",
        "password": "t",
        "extra": {"max_concurrency": "20", "timeout": "2.5"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
    client = MessagingHook().get_client()
    assert (client.max_concurrency, client.timeout) == (20, 2.5)
