"""MessagingHook: a provider client from the ``careflow_messaging`` connection (docs/contracts.md §3)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from careflow.exceptions import ConfigurationError
from careflow.providers.client import LeaseDeadline, Outcome
from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.hook import MessagingHook
from support import ScriptedServer

from .conftest import make_message


@pytest.fixture(autouse=True)
def env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREFLOW_CONNECTIONS_FROM_ENV_ONLY", "1")
    monkeypatch.delenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", raising=False)


def test_uri_connection_with_extras_in_the_query(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:{fake.token}@127.0.0.1:{fake.port}?max_concurrency=7"
    )
    hook = MessagingHook()
    client = hook.get_client()

    assert (client.base_url, client.token, client.max_concurrency, client.timeout) == (
        fake.url,
        fake.token,
        7,
        10.0,
    )
    assert hook.get_client() is client
    assert [r.outcome for r in hook.send_batch([make_message(1)])] == [Outcome.ACCEPTED]


def test_the_hook_writes_nothing_past_a_batchs_lease(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:{fake.token}@127.0.0.1:{fake.port}")
    [result] = MessagingHook().send_batch([make_message(2)], deadline=LeaseDeadline(0.0))

    assert (result.outcome, result.error_code) == (Outcome.NOT_SENT, "lease_expired")
    assert fake.stats()["received"] == 0


def test_json_connection(fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "http",
        "host": fake.url,
        "password": fake.token,
        "extra": {"max_concurrency": 3, "timeout": 2.5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", json.dumps(conn))
    client = MessagingHook().get_client()

    assert (client.base_url, client.max_concurrency, client.timeout) == (fake.url, 3, 2.5)
    assert client.send_batch([make_message(1)])[0].outcome is Outcome.ACCEPTED


def test_airflow_style_uri_with_an_encoded_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING",
        f"http://:tok@{quote('https://sms.example.com', safe='')}?timeout=4",
    )
    client = MessagingHook().get_client()
    assert (client.base_url, client.token, client.timeout) == ("https://sms.example.com", "tok", 4.0)


def test_a_uri_connection_keeps_its_path_and_an_ipv6_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow reads a URI's path as the connection's schema, and its host without brackets.
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", "https://:tok@sms.example.com/api?timeout=4")
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_PROVIDER", "http://:tok@[::1]:8025/base/v2")
    assert MessagingHook().get_client().base_url == "https://sms.example.com/api"
    assert (
        MessagingHook(careflow_conn_id="kakao_provider").get_client().base_url == "http://[::1]:8025/base/v2"
    )
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", "http://:tok@[::1]:8025")
    assert MessagingHook().get_client().base_url == "http://[::1]:8025"


def test_a_uri_connection_posts_under_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'{"id": "p-1", "status": "accepted"}'
    with ScriptedServer(
        lambda n, _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    ) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:tok@127.0.0.1:{server.port}/api")
        [result] = MessagingHook().send_batch([make_message(3)])
    assert result.outcome is Outcome.ACCEPTED
    assert server.requests[0].startswith(b"POST /api/v1/messages HTTP/1.1\r\n")


def test_another_connection_id(fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_PROVIDER", f"http://:{fake.token}@127.0.0.1:{fake.port}")
    client = MessagingHook(careflow_conn_id="kakao_provider").get_client()
    assert (client.base_url, client.name) == (fake.url, "kakao_provider")


def test_a_missing_connection_says_what_to_add() -> None:
    with pytest.raises(ConfigurationError, match="AIRFLOW_CONN_CAREFLOW_MESSAGING"):
        MessagingHook().get_client()
    ok, message = MessagingHook(careflow_conn_id="nowhere").test_connection()
    assert not ok and "nowhere" in message


def test_test_connection(fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:{fake.token}@127.0.0.1:{fake.port}")
    assert MessagingHook().test_connection()[0] is True
    monkeypatch.setenv("AIRFLOW_CONN_CAREFLOW_MESSAGING", f"http://:wrong@127.0.0.1:{fake.port}")
    ok, message = MessagingHook().test_connection()
    assert not ok and "401" in message


def test_hook_metadata() -> None:
    assert (MessagingHook.conn_name_attr, MessagingHook.default_conn_name) == (
        "careflow_conn_id",
        "careflow_messaging",
    )
    assert (MessagingHook.conn_type, MessagingHook.hook_name) == ("http", "careflow messaging")
    assert MessagingHook.get_ui_field_behaviour()["relabeling"]["host"] == "Base URL"


def test_a_base_url_that_is_not_a_url_names_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAREFLOW_MESSAGING",
        f"http://:tok@{quote('https://sms.example.com/v1?region=kr', safe='')}",
    )
    with pytest.raises(ConfigurationError, match="'careflow_messaging': provider URL .* query"):
        MessagingHook().get_client()


def test_a_schema_of_http_or_https_is_the_scheme_as_airflows_http_hook_reads_it() -> None:
    from careflow.settings import ConnectionInfo, messaging_base_url

    def base(**fields: object) -> str:
        info = {"conn_id": "m", "conn_type": "http", "host": "sms.example.com", "port": None}
        info |= {"login": "", "password": "tok", "schema": "", "extra": {}} | fields
        return messaging_base_url(ConnectionInfo(**info))  # type: ignore[arg-type]

    assert base(schema="https") == "https://sms.example.com"
    assert base(schema="HTTP", port=8025) == "http://sms.example.com:8025"
    assert base(schema="api/") == "http://sms.example.com/api"
    assert base(host="https://sms.example.com/", schema="https") == "https://sms.example.com"
