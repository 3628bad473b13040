"""The fake provider itself: what the demo, the tests and the benchmarks rely on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from careflow.providers import fake_server
from careflow.providers.client import Outcome, ProviderClient
from careflow.providers.fake_server import (
    FakeConfig,
    FakeProvider,
    FakeProviderServer,
    Request,
    config_from_args,
    main,
)

from .conftest import free_port, make_message

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def api(fake: FakeProviderServer, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=fake.url, headers={"Authorization": f"Bearer {token or fake.token}"}, timeout=5
    )


def post(http: httpx.Client, payload: object, key: str | None = "k1") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post("/v1/messages", content=body, headers=headers)


VALID = {"channel": "kakao", "to": "+821055501234", "body": "hello", "idempotency_key": "k1", "metadata": {}}


def test_token_and_body_validation(fake: FakeProviderServer) -> None:
    with api(fake, token="nope") as http:
        assert post(http, VALID).status_code == 401
        assert http.get("/v1/stats").status_code == 401
    with api(fake) as http:
        bad_json = post(http, b"{not json")
        assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "invalid_json")
        assert post(http, {**VALID, "to": None}).json()["error"]["code"] == "missing_recipient"
        assert (
            post(http, {**VALID, "idempotency_key": "other"}).json()["error"]["code"]
            == "idempotency_key_mismatch"
        )
        no_key = post(http, {k: v for k, v in VALID.items() if k != "idempotency_key"}, key=None)
        assert no_key.json()["error"]["code"] == "missing_idempotency_key"
        stats = http.get("/v1/stats").json()
    assert stats["unauthorized"] == 1 and stats["rejected_total"] == 4 and stats["accepted"] == 0


def test_store_lookup_list_and_stats_over_http(fake: FakeProviderServer) -> None:
    with api(fake) as http:
        first = post(http, VALID)
        again = post(http, VALID)
        before = time.time()
        post(http, {**VALID, "idempotency_key": "k2"}, key="k2")
        found = http.get("/v1/messages", params={"idempotency_key": "k1"})
        missing = http.get("/v1/messages", params={"idempotency_key": "zzz"})
        listing = http.get("/v1/messages").json()
        recent = http.get("/v1/messages", params={"since": before - 0.0001}).json()
        page = http.get("/v1/messages", params={"limit": 1, "offset": 1}).json()
        stats = http.get("/v1/stats").json()
        brief = http.get("/v1/stats", params={"brief": 1}).json()

    assert first.status_code == 202 and again.status_code == 409
    assert again.json()["id"] == first.json()["id"] == found.json()["id"]
    assert missing.status_code == 404
    assert [m["idempotency_key"] for m in listing["messages"]] == ["k1", "k2"] and listing["total"] == 2
    assert [m["idempotency_key"] for m in recent["messages"]] == ["k2"]
    assert [m["idempotency_key"] for m in page["messages"]] == ["k2"]
    assert stats["accepts_by_key"] == {"k1": 1, "k2": 1} and stats["attempts_by_key"] == {"k1": 2, "k2": 1}
    assert (stats["received"], stats["duplicates"], stats["lookups"], stats["accepted_twice"]) == (3, 1, 2, 0)
    assert "accepts_by_key" not in brief
    # k1 was accepted before ``before``, k2 after it
    assert brief["first_accepted_at"] < before < brief["last_accepted_at"]
    assert brief["last_accepted_at"] == listing["messages"][-1]["accepted_at"]


def test_http_edges_unknown_paths_wrong_methods_large_bodies_bad_requests(fake: FakeProviderServer) -> None:
    import socket

    with api(fake) as http:
        unknown = http.get("/v2/nothing")
        wrong_method = http.delete("/v1/stats")
        too_large = http.post("/v1/messages", content=b"x" * (1024 * 1024 + 1))
        # keep-alive: several requests on one connection, answered in order
        answers = [post(http, {**VALID, "idempotency_key": f"ka{i}"}, key=f"ka{i}") for i in range(3)]
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "too_large")
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [m["idempotency_key"] for m in fake.messages()] == ["ka0", "ka1", "ka2"]

    with socket.create_connection((fake.host, fake.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    assert fake.stats()["received"] == 3


def test_admin_config_and_reset_over_http(fake: FakeProviderServer) -> None:
    with api(fake) as http:
        changed = http.post(
            "/v1/admin/config", json={"error_rate": 1, "permanent_fail_recipients": ["+8210"]}
        )
        refused = http.post("/v1/admin/config", json={"colour": "red"})
        out_of_range = http.post("/v1/admin/config", json={"throttle_rate": 2})
        failing = post(http, VALID)
        http.post("/v1/admin/reset")
        after_reset = post(http, VALID)
        stats = http.get("/v1/stats").json()

    assert (
        changed.status_code == 200 and changed.json()["error_rate"] == 1.0 and "token" not in changed.json()
    )
    assert refused.status_code == 400 and "colour" in refused.json()["error"]["message"]
    assert out_of_range.status_code == 400
    assert failing.status_code == 503
    assert after_reset.status_code == 202 and stats["received"] == 1 and stats["errors"] == 0


def test_accepted_twice_catches_a_resend_when_idempotency_is_off(fake: FakeProviderServer) -> None:
    fake.configure(honour_idempotency=False)
    client = ProviderClient(fake.url, fake.token)
    results = client.send_batch([make_message(1)]) + client.send_batch([make_message(1)])

    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert fake.stats()["accepted_twice"] == 1  # the counter the exactly-once tests lean on can fail


def test_latency_is_timed_from_the_request_s_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that waited in the fake's own queue is not made to wait its whole latency again."""
    provider = FakeProvider(FakeConfig(latency_ms=200))
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(fake_server.asyncio, "sleep", sleep)

    async def send(key: str, waited: float | None) -> int:
        arrived = None if waited is None else asyncio.get_running_loop().time() - waited
        body = json.dumps({**VALID, "idempotency_key": key}).encode()
        headers = {"authorization": f"Bearer {provider.config.token}", "idempotency-key": key}
        response = await provider.post_message(Request("POST", "/v1/messages", {}, headers, body, arrived))
        return response.status

    async def scenario() -> list[int]:
        return [await send("fresh", None), await send("queued", 0.15), await send("late", 1.0)]

    assert asyncio.run(scenario()) == [202, 202, 202]
    assert waits == [pytest.approx(0.2, abs=0.01), pytest.approx(0.05, abs=0.01), 0.0]


def test_outage_ends_by_itself() -> None:
    with FakeProviderServer(outage_seconds=0.3) as fake:
        client = ProviderClient(fake.url, fake.token)
        [during] = client.send_batch([make_message(1)])
        time.sleep(0.35)
        [after] = client.send_batch([make_message(1)])
    assert (during.outcome, after.outcome) == (Outcome.TRANSIENT, Outcome.ACCEPTED)


def test_an_outage_can_start_with_the_first_send() -> None:
    with FakeProviderServer(outage_from_first_send=0.4) as fake:
        time.sleep(0.5)  # armed, not started: nothing has been sent yet
        client = ProviderClient(fake.url, fake.token)
        [first] = client.send_batch([make_message(1)])
        [during] = client.send_batch([make_message(2)])
        time.sleep(0.45)
        [after] = client.send_batch([make_message(1)])
    assert [r.outcome for r in (first, during, after)] == [
        Outcome.TRANSIENT,
        Outcome.TRANSIENT,
        Outcome.ACCEPTED,
    ]


def test_error_and_throttle_rates_are_reproducible_with_a_seed() -> None:
    def outcomes() -> list[Outcome]:
        with FakeProviderServer(FakeConfig(seed=7, error_rate=0.3, throttle_rate=0.2, retry_after=0)) as fake:
            client = ProviderClient(fake.url, fake.token, max_concurrency=1)
            return [r.outcome for r in client.send_batch([make_message(i) for i in range(40)])]

    first = outcomes()
    assert first == outcomes()
    assert {Outcome.ACCEPTED, Outcome.TRANSIENT, Outcome.THROTTLED} <= set(first)


def test_record_file_lets_another_process_see_what_was_accepted(tmp_path: Path) -> None:
    record = tmp_path / "sent.jsonl"
    with FakeProviderServer(FakeConfig(record=str(record))) as fake:
        ProviderClient(fake.url, fake.token).send_batch([make_message(i) for i in range(3)])
        lines = [json.loads(line) for line in record.read_text().splitlines()]
    # The client sends concurrently, so the record holds every accepted key in arrival order.
    assert sorted(line["idempotency_key"] for line in lines) == [f"wf1:a1:ex{i}" for i in range(3)]


def test_command_line_options() -> None:
    import argparse

    from careflow.providers.fake_server import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(
        parser.parse_args(
            ["--latency-ms", "20", "--error-rate", "0.1", "--permanent-fail", "+8210,+8211", "--seed", "3"]
        )
    )
    assert (config.latency_ms, config.error_rate, config.seed) == (20.0, 0.1, 3)
    assert config.permanent_fail_recipients == ("+8210", "+8211")
    assert main(["--error-rate", "3"]) == 2  # refused before serving


def test_one_command_starts_it() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    command = [sys.executable, "-m", "careflow.providers.fake_server", "--port", str(port), "--token", "T"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                stats = httpx.get(f"http://127.0.0.1:{port}/v1/stats", headers={"Authorization": "Bearer T"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("fake provider did not start")
                time.sleep(0.1)
        assert stats.status_code == 200 and stats.json()["received"] == 0
    finally:
        process.terminate()
        process.wait(10)


def test_a_port_it_cannot_listen_on_is_named_and_nothing_claims_to_serve(capsys) -> None:  # type: ignore[no-untyped-def]
    """The port taken (or an address this machine does not have): one line that says so, exit 2,
    and no "fake provider on …" line before it that a script would wait on."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert main(["--port", str(port)]) == 2
    finally:
        taken.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"careflow fake provider: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize("port", ["80000", "-1", "eighty"])
def test_a_port_that_is_not_one_is_refused_by_name(port: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as refused:
        main(["--port", port])
    assert refused.value.code == 2
    assert (
        f"argument --port: {port!r} is not a port: a number from 1 to 65535, or 0 for any free one"
    ) in capsys.readouterr().err


def test_port_0_serves_on_a_free_port_and_says_which() -> None:
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    command = [sys.executable, "-m", "careflow.providers.fake_server", "--port", "0", "--token", "T"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("careflow fake provider on http://127.0.0.1:") and ":0 " not in line
        port = int(line.split("http://127.0.0.1:")[1].split(" ")[0])
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/stats", headers={"Authorization": "Bearer T"})
        assert stats.status_code == 200
    finally:
        process.terminate()
        process.wait(10)
