"""The careflow view in a real browser, on the real api-server, after a short simulated run.

The api-server runs over the session's Airflow home, careflow's tables hold the demo clinic after
two simulated days of every example workflow, and headless Chromium signs in with Airflow's
session cookie. A screenshot of the workflow view is kept in ``artifacts/careflow-view.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from careflow.providers.fake_server import FakeProviderServer
from support import EXAMPLES, REPO, airflow_env, free_port

from .chromium import Chromium, Page, find_chromium, new_page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = REPO / "artifacts"
USER = "ops-kim"
DEMO_START = "2026-03-02"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    """Chromium, or a skip (a failure in CI, where .ci/run installs it)."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; .ci/run installs it before the tests")
        pytest.skip("chromium is not installed (apt-get install chromium); the browser test needs it")
    return binary


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def _request(
    url: str, *, token: str | None = None, cookie: str | None = None, data: Any = None
) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Server:
    """The running api-server, its careflow database and a signed-in user's token."""

    def __init__(self, base: str, db_url: str, token: str) -> None:
        self.base = base
        self.db_url = db_url
        self.token = token


@pytest.fixture(scope="module")
def server(
    airflow_home: Path, tmp_path_factory: pytest.TempPathFactory, chromium_binary: str
) -> Iterator[Server]:
    """Demo clinic, the examples published, two simulated days, and ``airflow api-server`` on a free port."""
    tmp = tmp_path_factory.mktemp("careflow-browser")
    workflows = tmp / "workflows"
    db_url = f"sqlite:///{tmp / 'careflow.db'}"
    password = secrets.token_urlsafe(16)
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps({USER: password}), encoding="utf-8")
    with FakeProviderServer(latency_ms=2) as fake:
        env = airflow_env(
            airflow_home,
            workflows,
            CAREFLOW_DB_URL=db_url,
            CAREFLOW_REDIS_URL="",
            AIRFLOW_CONN_CAREFLOW_MESSAGING=json.dumps(
                {"conn_type": "http", "host": fake.url, "password": fake.token, "extra": {"timeout": 5}}
            ),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(48),
            AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR",
        )
        careflow = [sys.executable, "-m", "careflow"]
        _run([*careflow, "db", "upgrade"], env)
        _run(
            [
                sys.executable,
                "-c",
                "from datetime import date\n"
                "from careflow.demo.data import generate, load\n"
                "from careflow.store.db import get_engine\n"
                f"load(get_engine(), generate(date.fromisoformat('{DEMO_START}'), patients=80))\n",
            ],
            env,
        )
        _run([*careflow, "workflows", "publish", *map(str, sorted(EXAMPLES.glob("*.json")))], env)
        _run(
            [*careflow, "simulate", "--workflow", "all", "--start", DEMO_START, "--days", "2", "--json"], env
        )

    port = free_port()
    # Served under a path, as behind a clinic's reverse proxy: every URL the view and Airflow's
    # navigation use must follow it.
    base = f"http://127.0.0.1:{port}/airflow"
    log = (tmp / "api-server.log").open("w")
    api = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**env, "AIRFLOW__API__BASE_URL": base},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert api.poll() is None, (tmp / "api-server.log").read_text()[-4000:]
            try:
                if _request(f"{base}/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the api-server did not answer within 180 s"
            time.sleep(0.5)
        status, body = _request(f"{base}/auth/token", data={"username": USER, "password": password})
        assert status == 201, body
        yield Server(base, db_url, body["access_token"])
    finally:
        api.terminate()
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(timeout=10)
        log.close()


def test_the_view_needs_airflows_login(server: Server) -> None:
    for path in ("/careflow/ui/", "/careflow/ui/app.js", "/careflow/api/failures", "/careflow/api/workflows"):
        assert _request(server.base + path)[0] == 401, path
        assert _request(server.base + path, cookie="forged")[0] in (401, 403), path
    status, page = _request(server.base + "/careflow/ui/", cookie=server.token)
    assert status == 200 and "<title>careflow</title>" in page


def test_airflow_lists_the_careflow_nav_entry(server: Server) -> None:
    status, body = _request(f"{server.base}/api/v2/plugins", token=server.token)
    assert status == 200, body
    [plugin] = [p for p in body["plugins"] if p["name"] == "careflow"]
    [view] = plugin["external_views"]
    assert (view["href"], view["destination"], view["url_route"]) == ("careflow/ui/", "nav", "careflow")
    assert "careflow.airflow.links.CareflowNodeLink" in str(plugin["operator_extra_links"])


def _busiest_run(db_url: str) -> tuple[str, str, dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """The (workflow, run) that moved the most steps and sent a message; its step and message counts."""
    from careflow.store import tables

    s, m = tables.steps, tables.messages
    engine = create_engine(db_url)
    with engine.connect() as conn:
        workflow_id, run_id = conn.execute(
            select(s.c.workflow_id, s.c.run_id)
            .join(m, (m.c.execution_id == s.c.execution_id) & (m.c.node_id == s.c.node_id))
            .where(m.c.status == "sent")
            .group_by(s.c.workflow_id, s.c.run_id)
            .order_by(func.count().desc(), s.c.run_id)
            .limit(1)
        ).one()
        steps: dict[str, dict[str, int]] = defaultdict(dict)
        for node, status, n in conn.execute(
            select(s.c.node_id, s.c.status, func.count())
            .where(s.c.workflow_id == workflow_id, s.c.run_id == run_id)
            .group_by(s.c.node_id, s.c.status)
        ):
            steps[node][status] = n
        messages: dict[str, dict[str, int]] = defaultdict(dict)
        for node, status, n in conn.execute(
            select(m.c.node_id, m.c.status, func.count())
            .join(s, (m.c.execution_id == s.c.execution_id) & (m.c.node_id == s.c.node_id))
            .where(s.c.workflow_id == workflow_id, s.c.run_id == run_id)
            .group_by(m.c.node_id, m.c.status)
        ):
            messages[node][status] = n
    engine.dispose()
    return workflow_id, run_id, dict(steps), dict(messages)


def _not_sent(db_url: str) -> tuple[str, str, str]:
    """A message the ledger did not send: its execution id, status and reason."""
    from careflow.store import tables

    m = tables.messages
    engine = create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            select(m.c.execution_id, m.c.status, m.c.reason)
            .where(m.c.status.in_(("skipped", "expired", "failed")))
            .order_by(m.c.execution_id)
            .limit(1)
        ).one()
    engine.dispose()
    return row.execution_id, row.status, row.reason


READY = "document.body.dataset.state === 'ready'"

COUNTS_JS = """
Object.fromEntries([...document.querySelectorAll('g.node')].map(g => [g.dataset.node, {
  steps: Object.fromEntries([...g.querySelectorAll('[data-counts=steps] tspan[data-status]')]
    .map(t => [t.dataset.status, Number(t.textContent.split(' ').pop())])),
  messages: Object.fromEntries([...g.querySelectorAll('[data-counts=messages] tspan[data-status]')]
    .map(t => [t.dataset.status, Number(t.textContent.split(' ').pop())])),
}]))
"""


def _signed_in(
    chromium_binary: str, server: Server, visit: Callable[[Page], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """What ``visit`` saw in a fresh tab of Chromium, signed in to Airflow as the test's user."""
    import aiohttp

    async def drive(port: int) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            page = await new_page(session, port)
            await page.send(
                "Network.setCookie",
                name="_token",
                value=server.token,
                url=server.base,
                path="/",
                httpOnly=True,
            )
            return await visit(page)

    browser = Chromium(chromium_binary)
    try:
        return asyncio.run(drive(browser.port))
    finally:
        browser.close()


def test_the_browser_shows_workflows_counts_and_why_a_message_was_not_sent(
    server: Server, chromium_binary: str
) -> None:
    workflow_id, run_id, steps, messages = _busiest_run(server.db_url)
    execution_id, status, reason = _not_sent(server.db_url)
    examples = sorted(p.stem for p in EXAMPLES.glob("*.json"))

    async def visit(page: Page) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await page.open(f"{server.base}/careflow/ui/#/", READY + " && !!document.querySelector('#workflows')")
        seen["workflows"] = await page.evaluate(
            "[...document.querySelectorAll('#workflows tr[data-workflow]')].map(r => r.dataset.workflow)"
        )
        seen["overview"] = await page.evaluate("document.body.innerText")
        await page.screenshot(ARTIFACTS / "careflow-overview.png")

        await page.open(
            f"{server.base}/careflow/ui/#/workflow/{workflow_id}?run={run_id}",
            READY + " && !!document.querySelector('svg.graph')",
        )
        seen["counts"] = await page.evaluate(COUNTS_JS)
        seen["selected_run"] = await page.evaluate("document.getElementById('run').value")
        await page.screenshot(ARTIFACTS / "careflow-view.png")

        await page.open(
            f"{server.base}/careflow/ui/#/execution/{execution_id}",
            READY + " && !!document.querySelector('#why')",
        )
        seen["why"] = await page.evaluate("document.querySelector('#why').innerText")
        seen["trace"] = await page.evaluate("document.body.innerText")
        await page.screenshot(ARTIFACTS / "careflow-trace.png")
        return seen

    seen = _signed_in(chromium_binary, server, visit)
    assert seen["workflows"] == examples
    assert "Circuit breakers" in seen["overview"] and "Recent failures" in seen["overview"]
    assert seen["selected_run"] == run_id
    for node_id, counts in seen["counts"].items():
        assert counts["steps"] == steps.get(node_id, {}), node_id
        assert counts["messages"] == messages.get(node_id, {}), node_id
    assert any(c["messages"].get("sent") for c in seen["counts"].values())
    assert f"message {status}: {reason}" in seen["why"]
    assert execution_id in seen["trace"]
    assert (ARTIFACTS / "careflow-view.png").stat().st_size > 10_000


def test_airflows_navigation_opens_the_view_under_airflows_path(server: Server, chromium_binary: str) -> None:
    # The nav entry's page in Airflow's own UI frames the view: at the path Airflow is served
    # under, which a reverse proxy in front of it forwards, not at the host's root.
    frame = "document.querySelector('iframe[title=careflow]')"

    async def visit(page: Page) -> dict[str, Any]:
        await page.open(
            f"{server.base}/plugin/careflow",
            f"{frame}?.contentDocument?.body?.dataset.state === 'ready'",
            timeout=60,
        )
        seen = {
            "path": await page.evaluate(f"{frame}.contentWindow.location.pathname"),
            "workflows": await page.evaluate(
                f"{frame}.contentDocument.querySelectorAll('#workflows tr[data-workflow]').length"
            ),
        }
        await page.screenshot(ARTIFACTS / "careflow-in-airflow.png")
        return seen

    seen = _signed_in(chromium_binary, server, visit)
    assert seen["path"] == "/airflow/careflow/ui/"
    assert seen["workflows"] == len(list(EXAMPLES.glob("*.json")))


def test_the_view_says_what_the_api_could_not_read(server: Server, chromium_binary: str) -> None:
    """The API's answers where careflow's database or the workflows directory fails, as the page's
    own fetch receives them: the workflows list's problem headers are notices above the overview,
    and a 503's ``detail`` is the page's error. (The answers themselves are tested in tests/ui; a
    database made to fail here would fail every test after this one on the shared server.)"""
    from careflow.airflow.api import (
        DATABASE_PROBLEM_HEADER,
        SNAPSHOTS_PROBLEM_HEADER,
        SNAPSHOTS_UNLISTED,
        UNREACHABLE,
    )

    cases = {  # by the page's hash: what the API answers, by route
        "listed": {
            "workflows": {
                "status": 200,
                "body": [],
                "headers": {
                    DATABASE_PROBLEM_HEADER: UNREACHABLE,
                    SNAPSHOTS_PROBLEM_HEADER: SNAPSHOTS_UNLISTED,
                },
            }
        },
        "failing": {"failures": {"status": 503, "body": {"detail": UNREACHABLE}, "headers": {}}},
        "hints": {"metrics": {"status": 503, "body": {"detail": UNREACHABLE}, "headers": {}}},
    }
    replay = (
        f"const cases = {json.dumps(cases)};\n"
        "const realFetch = window.fetch;\n"
        "window.fetch = (url, init) => {\n"
        "  const route = new URL(url, document.baseURI).pathname.split('/careflow/api/')[1];\n"
        "  const answer = (cases[location.hash.split('?case=')[1]] || {})[route];\n"
        "  if (!answer) return realFetch(url, init);\n"
        "  const headers = {'Content-Type': 'application/json', ...answer.headers};\n"
        "  return Promise.resolve(new Response(JSON.stringify(answer.body), {status: answer.status, headers}));\n"
        "};\n"
    )

    async def visit(page: Page) -> dict[str, Any]:
        await page.send("Page.addScriptToEvaluateOnNewDocument", source=replay)
        seen = {}
        for case in ("listed", "failing"):
            await page.open("about:blank", "true")  # each case a page load of its own, not a hash change
            await page.open(f"{server.base}/careflow/ui/#/?case={case}", READY)
            seen[case] = await page.evaluate(
                "({notices: [...document.querySelectorAll('.notice')].map(p => p.innerText),"
                " error: document.querySelector('#error')?.innerText ?? null,"
                " breakers: !!document.querySelector('#breakers')})"
            )
        # A workflow's page does not wait for its hints: they say what failed in their own section.
        await page.open("about:blank", "true")
        await page.open(
            f"{server.base}/careflow/ui/#/workflow/new-patient-welcome?case=hints",
            READY + " && document.querySelector('#hints')?.dataset.state === 'error'",
        )
        seen["hints"] = await page.evaluate(
            "({hints: document.querySelector('#hints .error').innerText,"
            " graph: !!document.querySelector('svg.graph'), error: !!document.querySelector('#error')})"
        )
        return seen

    seen = _signed_in(chromium_binary, server, visit)
    assert seen["hints"] == {
        "hints": f"{UNREACHABLE} (HTTP 503 from metrics?workflow=new-patient-welcome)",
        "graph": True,
        "error": False,
    }
    assert seen["listed"] == {
        "notices": [
            f"Only the snapshots on disk are listed: {UNREACHABLE}",
            f"No published snapshot could be read: {SNAPSHOTS_UNLISTED}",
        ],
        "error": None,
        "breakers": True,
    }
    # The overview asks for the failures too: their 503 is the page's error, in the API's words.
    assert seen["failing"] == {
        "notices": [],
        "error": f"{UNREACHABLE} (HTTP 503 from failures?limit=25)",
        "breakers": False,
    }


def test_a_workflow_page_shows_what_its_figures_suggest_changing(
    server: Server, chromium_binary: str
) -> None:
    """The hints of ``careflow metrics`` for the workflow, each linking to its node; none said as
    such. Two simulated days of 80 patients give too few messages for any: the ledger is given a
    node's worth of skipped messages (and they are taken out again for the tests after this one)."""
    from datetime import datetime, timezone

    from sqlalchemy import delete, insert

    from careflow.store import tables

    node_id, hinted = "hint_probe", "new-patient-welcome"
    m = tables.messages
    at = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)
    rows = [
        {
            "idempotency_key": f"zz-hint-{i}",
            "execution_id": f"zz-hint-{i}",  # after every real execution, by id
            "workflow_id": hinted,
            "node_id": node_id,
            "version": 1,
            "channel": "sms",
            "purpose": "care",
            "patient_id": f"zz-hint-{i}",
            "status": "skipped",
            "reason": "no_phone",
            "due_at": at,
            "updated_at": at,
        }
        for i in range(20)
    ]
    engine = create_engine(server.db_url)
    with engine.begin() as conn:
        conn.execute(insert(m), rows)

    async def visit(page: Page) -> dict[str, Any]:
        seen = {}
        for wid in sorted(p.stem for p in EXAMPLES.glob("*.json")):
            await page.open(
                f"{server.base}/careflow/ui/#/workflow/{wid}",
                # a hash change: the page before stays (and ready) until this one is rendered
                READY + f" && document.querySelector('#workflow')?.dataset.workflow === '{wid}'"
                " && document.querySelector('#hints')?.dataset.state === 'ready'",
            )
            seen[wid] = await page.evaluate(
                "(async () => ({shown: [...document.querySelectorAll('#hints li')].map(li => ({code: li.dataset.code,"
                " node: li.dataset.node, href: li.querySelector('a')?.getAttribute('href'), text: li.innerText})),"
                " said: document.querySelector('#hints').innerText,"
                f" api: await fetch('../api/metrics?workflow={wid}').then(r => r.json())}}))()"
            )
            if wid == hinted:
                await page.screenshot(ARTIFACTS / "careflow-hints.png")
        return seen

    try:
        seen = _signed_in(chromium_binary, server, visit)
    finally:
        with engine.begin() as conn:
            conn.execute(delete(m).where(m.c.node_id == node_id))
        engine.dispose()
    (item,) = seen[hinted]["api"]["workflows"]
    assert [h["code"] for h in item["hints"] if h["node_id"] == node_id] == ["MOSTLY_SKIPPED"]
    for wid, page in seen.items():
        # a workflow nothing has run yet (one not active) is not in the report: no hint either
        hints = [h for item in page["api"]["workflows"] for h in item["hints"]]
        assert page["shown"] == [
            {
                "code": h["code"],
                "node": h["node_id"] or "",
                "href": f"#/workflow/{wid}/node/{h['node_id']}" if h["node_id"] else None,
                "text": f"{h['code']} {h['node_id'] or 'the workflow'}: {h['text']}",
            }
            for h in hints
        ], wid
        said_none = "Nothing in this workflow's figures suggests a change." in page["said"]
        assert said_none == (not hints), wid
    assert any(not page["shown"] for page in seen.values())  # the page without hints is seen too
