"""The Airflow hook of the messaging provider: a ``ProviderClient`` built from a connection.

The connection (docs/contracts.md §3) is ``careflow_messaging``, type http: ``host`` is the base URL
(``http://127.0.0.1:8025``), ``password`` the bearer token, extra ``{"max_concurrency": 50,
"timeout": 10}``. ``careflow.settings`` reads it (environment first, then Airflow's secrets
backends); this hook only turns it into a client.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from airflow.sdk import BaseHook

from careflow import settings
from careflow.exceptions import ConfigurationError, ConnectionMissing
from careflow.providers.client import LeaseDeadline, Message, Outcome, ProviderClient, SendGate, SendResult


def _config_for(conn_id: str) -> settings.MessagingConfig:
    if conn_id == settings.MESSAGING_CONN_ID:
        return settings.messaging_config()
    # Another provider's connection: same shape as careflow_messaging.
    conn = settings.get_connection(conn_id)
    if conn is None:
        raise ConnectionMissing(
            conn_id,
            f"connection {conn_id!r} is not defined: add it (type http, host = provider base URL, "
            "password = bearer token)",
        )
    return settings.MessagingConfig.of(conn, conn_id)


class MessagingHook(BaseHook):
    """Talks to the messaging provider of an Airflow connection.

    :param careflow_conn_id: the connection id (default ``careflow_messaging``).
    """

    conn_name_attr = "careflow_conn_id"
    default_conn_name = settings.MESSAGING_CONN_ID
    conn_type = "http"
    hook_name = "careflow messaging"

    def __init__(self, careflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.careflow_conn_id = careflow_conn_id
        self._client: ProviderClient | None = None

    def get_config(self) -> settings.MessagingConfig:
        """The connection as a ``MessagingConfig`` (ConfigurationError when it is missing or has no host)."""
        config = _config_for(self.careflow_conn_id)
        if config.base_url in ("", "http://", "https://"):
            raise ConfigurationError(
                f"connection {self.careflow_conn_id!r} has no host: set it to the provider's base URL"
            )
        return config

    def get_client(self) -> ProviderClient:
        """The provider client of this connection (built once per hook)."""
        if self._client is None:
            config = self.get_config()
            try:
                self._client = ProviderClient(
                    config.base_url,
                    config.token,
                    max_concurrency=config.max_concurrency,
                    timeout=config.timeout,
                    name=config.name,
                    proxy=config.proxy,
                )
            except ValueError as exc:
                raise ConfigurationError(f"connection {self.careflow_conn_id!r}: {exc}") from None
        return self._client

    def get_conn(self) -> ProviderClient:
        """Airflow's name for ``get_client``."""
        return self.get_client()

    def send_batch(
        self,
        messages: Iterable[Message],
        *,
        gate: SendGate | None = None,
        on_result: Callable[[SendResult], None] | None = None,
        deadline: LeaseDeadline | None = None,
    ) -> list[SendResult]:
        """``ProviderClient.send_batch`` on this connection's client."""
        return self.get_client().send_batch(messages, gate=gate, on_result=on_result, deadline=deadline)

    def test_connection(self) -> tuple[bool, str]:
        """Ask the provider for a key it cannot have, then send it a message without fields.

        The lookup answers 404 and the empty message 400 or 422 only where the messages endpoint
        is and the token is accepted; a wrong base URL answers 404 to both. Nothing is sent.
        """
        try:
            client = self.get_client()
            found = client.lookup_many([f"careflow-connection-test-{uuid.uuid4().hex}"])
        except ConfigurationError as exc:
            return False, str(exc)
        result = next(iter(found.values()))
        if result is not None and result.outcome is Outcome.CONFIGURATION:
            if result.status_code is None:  # its certificate, or the proxy: in their own words
                return False, f"could not reach the provider: {result.error_message or result.error_code}"
            return False, f"provider refused the connection ({result.error_code}, HTTP {result.status_code})"
        if result is not None and result.status_code is None and result.error_message:
            # Not reached, or no answer: the client's own words ("could not connect:
            # ConnectionRefusedError: [Errno 111] Connection refused") say where to look.
            return False, f"provider did not answer ({result.error_code}: {result.error_message})"
        if result is not None:
            return False, f"provider did not answer as expected ({result.error_code})"
        endpoint = f"{client.base_url}/v1/messages"
        try:
            status = client.refused_empty_message()
        except Exception as exc:
            return False, f"{endpoint} did not answer a test message ({type(exc).__name__})"
        if status in (400, 422):
            return True, "provider reachable, token accepted"
        if status in (401, 403):
            return False, f"provider refused the connection (HTTP {status})"
        if status in (404, 405):
            return False, f"no messages endpoint at {endpoint} (HTTP {status}): check the base URL"
        return False, f"provider did not answer as expected (HTTP {status} to a message without fields)"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """How the connection form looks in the Airflow UI."""
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"host": "Base URL", "password": "Bearer token"},
            "placeholders": {
                "host": "http://127.0.0.1:8025",
                "extra": '{"max_concurrency": 50, "timeout": 10}',
            },
        }
