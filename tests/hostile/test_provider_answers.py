"""Malformed provider answers are transient or unknown, never an acceptance.

``tests/providers/test_provider_answers.py`` covers HTML, truncated JSON, ids that are numbers,
null, empty or missing, a list body, an empty body, a dropped connection and every status code.
These add what a proxy, a broken gateway or a provider bug can put on the wire: ids of the wrong
shape, bodies that are not what their headers say (gzip garbage, a chunked body cut short, a
Content-Length that lies), and a server that closes without answering.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Callable, Iterator

import pytest

from careflow.providers.client import Message, Outcome, ProviderClient, classify_response
from support import ScriptedServer

JSON = b"Content-Type: application/json\r\n"


def answer(status: str, headers: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\n" + headers + b"Connection: close\r\n\r\n" + body


def sized(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return answer(status, JSON + extra + f"Content-Length: {len(body)}\r\n".encode(), body)


#: Raw HTTP answers to ``POST /v1/messages``, by name.
RAW: dict[str, bytes] = {
    "id-list": sized("200 OK", b'{"id": ["x"], "status": "accepted"}'),
    "id-object": sized("200 OK", b'{"id": {"$oid": "x"}, "status": "accepted"}'),
    "id-bool": sized("200 OK", b'{"id": true, "status": "accepted"}'),
    "id-float": sized("200 OK", b'{"id": 1.5, "status": "accepted"}'),
    "id-empty": sized("201 Created", b'{"id": "", "status": "accepted"}'),
    "id-null": sized("200 OK", b'{"id": null, "status": "accepted"}'),
    "status-missing": sized("200 OK", b'{"id": "abc-1"}'),
    "status-null": sized("200 OK", b'{"id": "abc-1", "status": null}'),
    "nan-in-body": sized("200 OK", b'{"id": "abc-1", "status": "accepted", "cost": NaN}'),
    "json-then-garbage": sized("200 OK", b'{"id": "abc-1", "status": "accepted"} <html>'),
    "two-documents": sized("200 OK", b'{"id": "a", "status": "accepted"}{"id": "b", "status": "accepted"}'),
    "bom-then-json-html-type": answer(
        "200 OK", b"Content-Type: text/html\r\nContent-Length: 7\r\n", b"\xef\xbb\xbfOK\r\n\r\n"
    ),
    "error-body-on-200": sized("200 OK", b'{"error": {"code": "invalid_recipient", "message": "no"}}'),
    "gzip-garbage": sized("200 OK", b"\x1f\x8b\x08\x00garbage, not gzip", b"Content-Encoding: gzip\r\n"),
    "gzip-truncated": sized(
        "200 OK", gzip.compress(b'{"id": "abc-1", "status": "accepted"}')[:20], b"Content-Encoding: gzip\r\n"
    ),
    "chunked-truncated": answer(
        "200 OK", JSON + b"Transfer-Encoding: chunked\r\n", b"40\r\n" + b'{"id": "abc-1", "status": "acc'
    ),
    "chunked-bad-size": answer("200 OK", JSON + b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
    "content-length-lies": answer(
        "200 OK", JSON + b"Content-Length: 500\r\n", b'{"id": "abc-1", "status": "accepted"}'
    ),
    "headers-only": b"HTTP/1.1 200 OK\r\n" + JSON,
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "closed-without-answer": b"",
    "html-gateway-503": answer(
        "503 Service Unavailable",
        b"Content-Type: text/html\r\nContent-Length: 20\r\n",
        b"<h1>upstream down</h1>"[:20],
    ),
    "status-line-garbage": b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}",
}


def request_name(request: bytes) -> str:
    """The RAW answer a request asks for: the first segment of its path."""
    return request.split(b" ")[1].decode().strip("/").split("/")[0]


def _raw_answer(n: int, request: bytes) -> Callable[[socket.socket], None]:
    # The raw bytes of the path's name, then the connection closes (the function returns None).
    return lambda conn: conn.sendall(RAW[request_name(request)])


@pytest.fixture(scope="module")
def raw_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(_raw_answer) as server:
        yield server


def message() -> Message:
    return Message(
        idempotency_key="cf-ex1-a1",
        channel="sms",
        to="+821055501234",
        body="내일 10:00 예약입니다",
        subject=None,
        metadata={"workflow_id": "wf", "node_id": "a1", "execution_id": "ex1"},
    )


def _cases() -> list:
    return sorted(RAW)


@pytest.mark.parametrize("name", _cases())
def test_a_malformed_answer_is_never_an_acceptance(raw_server: ScriptedServer, name: str) -> None:
    client = ProviderClient(f"{raw_server.url}/{name}", "token", timeout=2)
    [result] = client.send_batch([message()])
    # the request left: only the answer is broken
    assert name in [request_name(request) for request in raw_server.requests]
    assert result.outcome in (Outcome.UNKNOWN, Outcome.TRANSIENT), (name, result)
    assert not result.delivered and result.provider_id is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": ["x"], "status": "accepted"}',
        b'{"id": "", "status": "accepted"}',
        b'{"id": null, "status": "accepted"}',
        b'{"id": {"nested": "x"}, "status": "accepted"}',
        b'{"id": "abc", "status": ["accepted"]}',
        b'{"id": "abc", "status": "accepted", "id": ""}',  # the last duplicate wins, as in JavaScript
        b"\xef\xbb\xbf",
        b"\x00" * 16,
        b"[" * 10_000 + b"]" * 10_000,
        b'{"id": "' + b"x" * 100 + b'"',
    ],
)
def test_classify_never_accepts_a_malformed_2xx(body: bytes) -> None:
    for status in (200, 201, 202, 204):
        result = classify_response("k", status, body)
        assert result.outcome is Outcome.UNKNOWN and not result.delivered, (status, body[:40], result)
