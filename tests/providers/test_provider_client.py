"""ProviderClient against the fake provider over real HTTP: every outcome a caller must handle."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time

import pytest

from careflow.providers.client import LeaseDeadline, Message, Outcome, ProviderClient, SendResult
from careflow.providers.fake_server import FakeProviderServer
from careflow.providers.http1 import Http1Pool

from .conftest import BODY, PHONE, free_port, make_message


def client_for(fake: FakeProviderServer, **kwargs: object) -> ProviderClient:
    return ProviderClient(fake.url, fake.token, **kwargs)  # type: ignore[arg-type]


def test_accepted_in_input_order_with_the_contract_fields(fake: FakeProviderServer) -> None:
    messages = [make_message(i) for i in range(20)]
    messages[3] = make_message(3, channel="email", subject="Your check-up")

    results = client_for(fake, max_concurrency=8).send_batch(messages)

    assert [r.idempotency_key for r in results] == [m.idempotency_key for m in messages]
    assert all(r.outcome is Outcome.ACCEPTED and r.delivered and r.request_sent for r in results)
    assert all(r.status_code == 202 and r.latency_ms > 0 for r in results)
    stored = {m["idempotency_key"]: m for m in fake.messages()}
    assert {r.provider_id for r in results} == {m["id"] for m in stored.values()}
    email = stored["wf1:a1:ex3"]
    assert (email["channel"], email["to"], email["body"], email["subject"]) == (
        "email",
        PHONE,
        BODY,
        "Your check-up",
    )
    assert email["metadata"] == {"workflow_id": "wf1", "node_id": "a1", "execution_id": "ex3"}
    assert stored["wf1:a1:ex4"]["subject"] is None
    assert fake.stats()["accepted_twice"] == 0


def test_409_is_a_duplicate_success_with_the_same_id(fake: FakeProviderServer) -> None:
    client = client_for(fake)
    [first] = client.send_batch([make_message(1)])
    [again] = client.send_batch([make_message(1)])

    assert again.outcome is Outcome.DUPLICATE and again.delivered
    assert again.provider_id == first.provider_id and again.status_code == 409
    stats = fake.stats()
    assert (stats["accepted"], stats["duplicates"], stats["accepted_twice"]) == (1, 1, 0)


def test_permanent_refusals_carry_the_provider_code_and_spare_the_rest(fake: FakeProviderServer) -> None:
    fake.configure(permanent_fail_recipients=["+821000000000"])
    messages = [
        make_message(1, channel="fax"),
        make_message(2, body="  "),
        make_message(3, to=""),
        make_message(4, to="+821000000000"),
        make_message(5),
    ]
    results = client_for(fake).send_batch(messages)

    assert [r.outcome for r in results] == [Outcome.PERMANENT] * 4 + [Outcome.ACCEPTED]
    assert [r.error_code for r in results[:4]] == [
        "invalid_channel",
        "empty_body",
        "missing_recipient",
        "recipient_rejected",
    ]
    assert all(r.status_code == 422 and not r.delivered for r in results[:4])


def test_wrong_token_stops_the_batch_at_once(fake: FakeProviderServer) -> None:
    client = ProviderClient(fake.url, "wrong-token", max_concurrency=2)
    results = client.send_batch([make_message(i) for i in range(30)])

    configuration = [r for r in results if r.outcome is Outcome.CONFIGURATION]
    not_sent = [r for r in results if r.outcome is Outcome.NOT_SENT]
    assert 1 <= len(configuration) <= 2 and len(configuration) + len(not_sent) == 30
    assert configuration[0].status_code == 401
    assert all(r.error_code == "configuration" and not r.request_sent for r in not_sent)
    assert fake.stats()["received"] <= 2


def test_a_refused_client_sends_nothing_more_in_later_batches(fake: FakeProviderServer) -> None:
    client = ProviderClient(fake.url, "wrong-token", max_concurrency=2)
    client.send_batch([make_message(i) for i in range(5)])
    received = fake.stats()["received"]
    assert client.refused and 1 <= received <= 2

    later = client.send_batch([make_message(i) for i in range(5, 15)])

    assert [r.outcome for r in later] == [Outcome.NOT_SENT] * 10
    assert all(r.error_code == "configuration" and not r.request_sent for r in later)
    assert fake.stats()["received"] == received
    # A client built with the right token is not affected.
    fresh = ProviderClient(fake.url, fake.token).send_batch([make_message(20)])
    assert fresh[0].outcome is Outcome.ACCEPTED


def test_429_pauses_the_rest_of_the_batch_for_retry_after(fake: FakeProviderServer) -> None:
    fake.configure(throttle_rate=1.0, retry_after=0.25)
    started = time.monotonic()
    results = client_for(fake, max_concurrency=1).send_batch([make_message(i) for i in range(3)])
    elapsed = time.monotonic() - started

    assert [r.outcome for r in results] == [Outcome.THROTTLED] * 3
    assert all(r.retry_after == pytest.approx(0.25) and r.status_code == 429 for r in results)
    assert elapsed >= 0.5  # two pauses of 0.25 s between three requests
    assert fake.stats()["throttled"] == 3


def test_a_retry_after_longer_than_the_batch_may_wait_returns_the_rest_not_sent(
    fake: FakeProviderServer,
) -> None:
    fake.configure(throttle_rate=1.0, retry_after=120)
    started = time.monotonic()
    results = client_for(fake, max_concurrency=1).send_batch([make_message(i) for i in range(5)])

    assert time.monotonic() - started < 2
    assert results[0].outcome is Outcome.THROTTLED and results[0].retry_after == 120
    assert [r.outcome for r in results[1:]] == [Outcome.NOT_SENT] * 4
    assert all(r.error_code == "throttled" and r.retry_after > 100 for r in results[1:])


def test_5xx_and_outages_are_transient(fake: FakeProviderServer) -> None:
    client = client_for(fake)
    fake.configure(error_rate=1.0)
    [error] = client.send_batch([make_message(1)])
    fake.configure(error_rate=0.0, outage_seconds=30)
    [outage] = client.send_batch([make_message(2)])
    fake.configure(outage_until=0)
    [after] = client.send_batch([make_message(2)])

    assert (error.outcome, error.status_code, error.error_code) == (Outcome.TRANSIENT, 503, "unavailable")
    assert (outage.outcome, outage.error_code) == (Outcome.TRANSIENT, "outage")
    assert after.outcome is Outcome.ACCEPTED


def test_connection_refused_is_transient_and_nothing_was_sent() -> None:
    client = ProviderClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    results = client.send_batch([make_message(1), make_message(2)])

    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 2
    assert all(r.request_sent is False and r.error_code == "connect_failed" for r in results)


def test_timeout_after_the_request_left_is_unknown_and_lookup_reconciles(fake: FakeProviderServer) -> None:
    fake.configure(accept_then_timeout_rate=1.0, stall_seconds=1.5)
    client = client_for(fake, timeout=0.2)
    [result] = client.send_batch([make_message(7)])

    assert result.outcome is Outcome.UNKNOWN and result.request_sent and not result.delivered
    assert result.error_code == "timeout"
    [stored] = fake.messages()

    found = asyncio.run(client.lookup(make_message(7).idempotency_key))
    assert found is not None and found.outcome is Outcome.ACCEPTED and found.provider_id == stored["id"]
    assert asyncio.run(client.lookup("wf1:a1:never-sent")) is None

    fake.configure(accept_then_timeout_rate=0.0)
    [resent] = client.send_batch([make_message(7)])  # what a careless retry would see
    assert resent.outcome is Outcome.DUPLICATE and resent.provider_id == stored["id"]
    assert fake.stats()["accepted_twice"] == 0


def test_lookup_many_and_a_failed_lookup_is_not_not_found(fake: FakeProviderServer) -> None:
    client = client_for(fake)
    client.send_batch([make_message(i) for i in range(3)])
    keys = [make_message(i).idempotency_key for i in range(5)]

    found = client.lookup_many(keys)
    assert list(found) == keys
    assert [r.outcome if r else None for r in found.values()] == [Outcome.ACCEPTED] * 3 + [None, None]

    offline = ProviderClient(f"http://127.0.0.1:{free_port()}", "t", timeout=1)
    [failed] = offline.lookup_many([keys[0]]).values()
    assert failed is not None and failed.outcome is Outcome.UNKNOWN


@pytest.mark.parametrize("limit", [1, 5])
def test_concurrency_never_exceeds_max_concurrency(fake: FakeProviderServer, limit: int) -> None:
    fake.configure(latency_ms=25)
    results = client_for(fake, max_concurrency=limit).send_batch([make_message(i) for i in range(6 * limit)])

    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert fake.stats()["max_in_flight"] == limit


def test_sends_really_run_concurrently(fake: FakeProviderServer) -> None:
    fake.configure(latency_ms=20)
    started = time.monotonic()
    results = client_for(fake, max_concurrency=50).send_batch([make_message(i) for i in range(200)])

    assert sum(r.delivered for r in results) == 200
    assert time.monotonic() - started < 2.0  # one at a time would take 4 s


class CountingGate:
    """Lets ``allow`` sends through, then reports the breaker open for 30 s."""

    def __init__(self, allow: int) -> None:
        self.allow = allow
        self.asked = 0
        self.seen: list[SendResult] = []
        self.until = time.time() + 30

    def before_send(self) -> float | None:
        self.asked += 1
        return None if self.asked <= self.allow else self.until

    def after_send(self, result: SendResult) -> None:
        self.seen.append(result)


def test_gate_stopping_mid_batch_returns_the_rest_not_sent(fake: FakeProviderServer) -> None:
    gate = CountingGate(allow=3)
    results = client_for(fake, max_concurrency=1).send_batch([make_message(i) for i in range(10)], gate=gate)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3 + [Outcome.NOT_SENT] * 7
    assert all(r.error_code == "breaker_open" and 25 < r.retry_after <= 30 for r in results[3:])
    assert [r.idempotency_key for r in gate.seen] == [m.idempotency_key for m in results[:3]]
    assert fake.stats()["received"] == 3


def test_a_failing_gate_stops_the_batch_without_raising(fake: FakeProviderServer) -> None:
    class BrokenGate:
        def before_send(self) -> float | None:
            raise ConnectionError("redis down")

        def after_send(self, result: SendResult) -> None:  # pragma: no cover - never reached
            pass

    results = client_for(fake).send_batch([make_message(i) for i in range(4)], gate=BrokenGate())
    assert {(r.outcome, r.error_code) for r in results} == {(Outcome.NOT_SENT, "gate_error")}
    assert fake.stats()["received"] == 0


def test_on_result_hears_every_message_once(fake: FakeProviderServer) -> None:
    heard: list[SendResult] = []
    gate = CountingGate(allow=4)
    messages = (make_message(i) for i in range(10))  # any iterable, a generator too
    results = client_for(fake, max_concurrency=2).send_batch(messages, gate=gate, on_result=heard.append)

    assert sorted(r.idempotency_key for r in heard) == sorted(r.idempotency_key for r in results)
    assert len(heard) == 10 and sum(r.outcome is Outcome.NOT_SENT for r in heard) == 6


def test_a_failing_on_result_stops_the_batch_and_is_raised(fake: FakeProviderServer) -> None:
    def ledger_write(result: SendResult) -> None:
        raise RuntimeError("ledger unavailable")

    with pytest.raises(RuntimeError, match="ledger unavailable"):
        client_for(fake, max_concurrency=1).send_batch(
            [make_message(i) for i in range(10)], on_result=ledger_write
        )
    assert fake.stats()["received"] == 1


def test_send_batch_works_from_a_plain_thread_and_from_inside_a_running_loop(
    fake: FakeProviderServer,
) -> None:
    client = client_for(fake)
    box: list[list[SendResult]] = []
    thread = threading.Thread(target=lambda: box.append(client.send_batch([make_message(1)])))
    thread.start()
    thread.join(10)

    async def inside_a_loop() -> list[SendResult]:
        return client.send_batch([make_message(2)])

    assert box[0][0].outcome is Outcome.ACCEPTED
    assert asyncio.run(inside_a_loop())[0].outcome is Outcome.ACCEPTED


def test_one_session_can_serve_several_batches(fake: FakeProviderServer) -> None:
    async def two_batches() -> tuple[list[SendResult], list[SendResult]]:
        async with client_for(fake) as client:
            first = await client.send_many([make_message(1)])
            second = await client.send_many([make_message(1), make_message(2)])
            return first, second

    first, second = asyncio.run(two_batches())
    assert [r.outcome for r in first + second] == [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.ACCEPTED]


def test_logs_name_ids_never_recipients_or_bodies(
    fake: FakeProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.configure(permanent_fail_recipients=[PHONE])
    client_for(fake).send_batch([make_message(i) for i in range(5)])
    ProviderClient(fake.url, "wrong").send_batch([make_message(9)])

    assert "batch of 5" in caplog.text and "stopped (configuration)" in caplog.text
    assert PHONE not in caplog.text and BODY not in caplog.text
    assert PHONE not in repr(make_message(1)) and BODY not in repr(make_message(1))


def test_an_unusable_idempotency_key_is_refused_before_sending(fake: FakeProviderServer) -> None:
    results = client_for(fake).send_batch(
        [make_message(1, idempotency_key="a\nb"), make_message(2, idempotency_key="")]
    )

    assert [(r.outcome, r.error_code, r.request_sent) for r in results] == [
        (Outcome.PERMANENT, "invalid_idempotency_key", False)
    ] * 2
    assert fake.stats()["received"] == 0


def test_the_request_body_is_compact_utf8_json_of_the_contract_fields() -> None:
    import json

    from aiohttp import web

    from .conftest import AppThread

    bodies: list[tuple[str | None, bytes]] = []

    async def keep(request: web.Request) -> web.Response:
        bodies.append((request.headers.get("Content-Length"), await request.read()))
        return web.json_response({"id": f"m{len(bodies)}", "status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/messages", keep)
    korean = '김민지님, 내일 10:00 임플란트 검진입니다 "확인" \\ 😀'
    messages = [make_message(1, body=korean), make_message(2, channel="email", subject="검진 안내")]
    with AppThread(app) as server:
        results = ProviderClient(server.url, "token").send_batch(messages)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
    by_key = {}
    for length, raw in bodies:
        assert length == str(len(raw))
        document = json.loads(raw)
        # No space between tokens, and text as UTF-8 (no \u escapes): the fewest bytes.
        assert raw == json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        by_key[document["idempotency_key"]] = document
    assert by_key["wf1:a1:ex1"] == {
        "channel": "sms",
        "to": PHONE,
        "body": korean,
        "idempotency_key": "wf1:a1:ex1",
        "metadata": {"workflow_id": "wf1", "node_id": "a1", "execution_id": "ex1"},
    }
    assert by_key["wf1:a1:ex2"]["subject"] == "검진 안내"


def test_a_message_that_cannot_be_written_as_json_is_refused_before_sending(fake: FakeProviderServer) -> None:
    results = client_for(fake).send_batch(
        [
            make_message(1, body="half an emoji \ud83d"),
            make_message(2, metadata={"workflow_id": object()}),
            make_message(3),
        ]
    )

    assert [(r.outcome, r.error_code, r.request_sent) for r in results[:2]] == [
        (Outcome.PERMANENT, "invalid_message", False)
    ] * 2
    assert results[2].outcome is Outcome.ACCEPTED
    assert fake.stats()["received"] == 1


def test_message_defaults() -> None:
    message = Message("k", "sms", PHONE, BODY)
    assert message.subject is None and message.metadata == {}


# -- the lease a batch is sent under --------------------------------------------------------------


def test_a_batch_whose_lease_has_run_out_writes_no_request(fake: FakeProviderServer) -> None:
    gate = CountingGate(allow=10)
    results = client_for(fake).send_batch(
        [make_message(i) for i in range(5)], gate=gate, deadline=LeaseDeadline(time.time() - 1)
    )

    assert [(r.outcome, r.error_code, r.request_sent) for r in results] == [
        (Outcome.NOT_SENT, "lease_expired", False)
    ] * 5
    assert fake.stats()["received"] == 0
    # the gate's permit goes back with a NOT_SENT (a half-open breaker gets its probe slot back)
    assert gate.asked == len(gate.seen) == 1 and gate.seen[0].outcome is Outcome.NOT_SENT


def test_a_renewed_lease_is_followed_until_it_runs_out(fake: FakeProviderServer) -> None:
    renewed = ctypes.c_double(time.time() + 60)
    # The claim's own lease ran out; a renewal since then moved it.
    deadline = LeaseDeadline(time.time() - 1, renewed)
    accepted: list[SendResult] = []

    def lease_runs_out_after_three(result: SendResult) -> None:
        if result.delivered:
            accepted.append(result)
        if len(accepted) == 3:
            renewed.value = time.time() - 1

    results = client_for(fake, max_concurrency=1).send_batch(
        [make_message(i) for i in range(10)], on_result=lease_runs_out_after_three, deadline=deadline
    )

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3 + [Outcome.NOT_SENT] * 7
    assert {r.error_code for r in results[3:]} == {"lease_expired"}
    assert fake.stats()["received"] == 3


def test_a_stopping_task_ends_the_lease_of_its_batches_at_once(fake: FakeProviderServer) -> None:
    from careflow.providers.client import STOPPING

    # A renewal an hour away and a claim just made: only the stop ends the lease.
    renewed = ctypes.c_double(time.time() + 3600)
    deadline = LeaseDeadline(time.time() + 3600, renewed)
    accepted: list[SendResult] = []

    def stopped_after_two(result: SendResult) -> None:
        if result.delivered:
            accepted.append(result)
        if len(accepted) == 2:
            renewed.value = STOPPING

    results = client_for(fake, max_concurrency=1).send_batch(
        [make_message(i) for i in range(6)], on_result=stopped_after_two, deadline=deadline
    )

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2 + [Outcome.NOT_SENT] * 4
    assert {(r.error_code, r.request_sent) for r in results[2:]} == {("task_stopped", False)}
    assert fake.stats()["received"] == 2
    assert deadline.stopping and deadline.passed(0.0)
    assert not LeaseDeadline(time.time() + 3600, ctypes.c_double(0.0)).passed(time.time())


def test_a_lease_running_out_mid_batch_stops_what_is_not_written_yet(fake: FakeProviderServer) -> None:
    fake.configure(latency_ms=800)
    results = client_for(fake, max_concurrency=1).send_batch(
        [make_message(i) for i in range(5)], deadline=LeaseDeadline(time.time() + 0.5)
    )

    # The first request was written in time; the second would have been, after its answer, too late.
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] + [Outcome.NOT_SENT] * 4
    assert fake.stats()["received"] == 1


def test_a_lease_running_out_while_a_connection_opens_writes_no_request(
    fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = Http1Pool._connect

    async def slow_connect(self: Http1Pool, loop: asyncio.AbstractEventLoop) -> object:
        await asyncio.sleep(0.4)  # a connection that takes longer than the lease has left
        return await connect(self, loop)

    monkeypatch.setattr(Http1Pool, "_connect", slow_connect)
    gate = CountingGate(allow=10)
    results = client_for(fake, max_concurrency=2).send_batch(
        [make_message(i) for i in range(4)], gate=gate, deadline=LeaseDeadline(time.time() + 0.2)
    )

    assert [(r.outcome, r.error_code, r.request_sent) for r in results] == [
        (Outcome.NOT_SENT, "lease_expired", False)
    ] * 4
    assert fake.stats()["received"] == 0
    assert {r.outcome for r in gate.seen} == {Outcome.NOT_SENT}
