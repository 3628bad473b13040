"""Alerts: failed tasks and runs, an open breaker, Redis lost, a provider setup to fix, a missed run deadline.

Every alert goes through :func:`send_alert`: it is logged, and posted as Slack-compatible JSON
(``{"text", "blocks"}``), or as careflow's own JSON object where the connection's extra says
``"format": "json"``, to the ``careflow_alerts`` connection when it is defined. An alert names the
workflow, node, run and a link into the Airflow UI (``[api] base_url``), never a patient: the
failure text of a task is included only for the exceptions careflow and Airflow word themselves,
with anything that looks like a phone number or an e-mail address masked.

Wiring (the DAG factory calls :func:`task_callbacks` and :func:`dag_callbacks`):

- ``on_failure_callback`` on every task and on the DAG run: :class:`CareflowNotifier`;
- engine and breaker events (``provider_configuration_error``, ``breaker_transition`` to open,
  ``breaker_redis_fallback``, ``breaker_wait_not_ended``) through
  :mod:`careflow.airflow.observability`, at most once per :data:`COOLDOWN_SECONDS` per subject
  (every process that shares careflow's Redis agrees through it; without Redis, per process); a
  ``provider_configuration_error`` is sending that cannot work as configured (a refused token, a
  wrong base URL, an untrusted certificate, a proxy's refusal), or the ``careflow_messaging`` or
  ``careflow_redis`` connection unusable;
- ``settings.run_deadline_hours``: a ``DeadlineAlert`` on the run's queued time whose
  ``AsyncCallback`` (:func:`run_deadline_missed`) runs in the triggerer (Airflow marks Deadline
  Alerts experimental).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

from careflow import settings
from careflow.airflow import observability

log = logging.getLogger(__name__)

#: An event-driven alert about the same subject is sent at most once per this many seconds.
COOLDOWN_SECONDS = 15 * 60
TIMEOUT_SECONDS = 5.0
DAG_PREFIX = "careflow__"

_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
#: A date (and time) as Airflow writes it in run ids and logical dates: told, not masked.
_ISO_TIME = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?!\d)"
)
#: An IPv4 address (a proxy's, a Redis server's), four numbers of 0 to 255: told, not masked.
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
)
_CONTACT = re.compile(f"(?P<time>{_ISO_TIME.pattern}|{_IPV4.pattern})|{_PHONE.pattern}")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_recent: dict[tuple[str, ...], float] = {}
_recent_lock = threading.Lock()


@dataclass
class Alert:
    """One alert: what happened, where, and a link; ids only."""

    kind: str
    title: str
    workflow_id: str | None = None
    node_id: str | None = None
    run_id: str | None = None
    detail: str | None = None
    link: str | None = None
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line: the title, then workflow, node and run, what to do and the link."""
        where = [
            f"workflow {self.workflow_id}" if self.workflow_id else "",
            f"node {self.node_id}" if self.node_id else "",
            f"run {self.run_id}" if self.run_id else "",
        ]
        text = f"careflow: {self.title}"
        located = ", ".join(w for w in where if w)
        if located:
            text += f" ({located})"
        if self.detail:
            text += f": {self.detail}"
        if self.link:
            text += f" {self.link}"
        return text

    @property
    def text(self) -> str:
        """:attr:`summary` behind a chat's alarm emoji: the log line, and the chat message's text."""
        return f":rotating_light: {self.summary}"

    def to_json(self) -> dict[str, Any]:
        """careflow's own webhook JSON (``"format": "json"``), for an on-call service or a receiver
        of one's own: every field by name, absent ones null."""
        return {
            "source": "careflow",
            "kind": self.kind,
            "title": self.title,
            "summary": self.summary,
            "workflow_id": self.workflow_id,
            "node_id": self.node_id,
            "run_id": self.run_id,
            "detail": self.detail,
            "link": self.link,
            "facts": dict(self.facts),
        }

    def to_slack(self) -> dict[str, Any]:
        """Slack-compatible webhook JSON: ``text`` (also read by Mattermost, Teams connectors…) and blocks."""
        fields = {
            "Workflow": self.workflow_id,
            "Node": self.node_id,
            "Run": self.run_id,
            **self.facts,
        }
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": f"careflow: {self.title}"[:150]}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n`{value}`"}
                    for name, value in fields.items()
                    if value
                ][:10],
            },
        ]
        if self.detail:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": self.detail[:2900]}})
        if self.link:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"<{self.link}|Open in Airflow>"}}
            )
        return {"text": self.text, "blocks": blocks}


def scrub(text: str, limit: int = 300) -> str:
    """Mask phone numbers and e-mail addresses and cut to ``limit`` characters; dates and IPv4 addresses stay."""
    text = _EMAIL.sub("<email>", _CONTACT.sub(lambda match: match["time"] or "<number>", text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def base_url() -> str:
    """The Airflow UI's address (``[api] base_url``)."""
    try:
        from airflow.configuration import conf

        value = conf.get("api", "base_url", fallback=None)
    except Exception:
        value = None
    return str(value or "http://localhost:8080").rstrip("/")


def ui_link(dag_id: str | None, run_id: str | None = None, task_id: str | None = None) -> str | None:
    """The Airflow UI page of a DAG, a run or a task instance."""
    if not dag_id:
        return None
    link = f"{base_url()}/dags/{quote(dag_id, safe='')}"
    if run_id:
        link += f"/runs/{quote(run_id, safe='')}"
        if task_id:
            link += f"/tasks/{quote(task_id, safe='')}"
    return link


def workflow_of(dag_id: str | None) -> str | None:
    """The workflow id of a careflow DAG id."""
    if dag_id and dag_id.startswith(DAG_PREFIX):
        return dag_id[len(DAG_PREFIX) :]
    return dag_id


#: The shapes an alert is posted in (``careflow_alerts``' extra ``format``), by name.
ALERT_FORMATS = {"slack": Alert.to_slack, "json": Alert.to_json}


@dataclass(frozen=True)
class Webhook:
    """Where alerts are posted: the URL, the proxy the connection names for it (else the
    environment's), the shape of the JSON (:data:`ALERT_FORMATS`) and headers of its own (a
    receiver's key, say)."""

    url: str
    proxy: str | None = None
    format: str = "slack"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a key


def webhook() -> Webhook | None:
    """The ``careflow_alerts`` webhook, or None when the connection is not defined or has no host."""
    conn = settings.get_connection(settings.ALERTS_CONN_ID)
    if conn is None:
        return None
    if conn.extra.get("webhook_url"):
        url = str(conn.extra["webhook_url"])
    elif conn.host:
        host = conn.host
        if "://" not in host:
            scheme = "https" if conn.conn_type == "https" or conn.extra.get("https") else "http"
            host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        path = conn.schema or str(conn.extra.get("endpoint") or "")
        url = host.rstrip("/") + ("/" + path.lstrip("/") if path else "")
    else:
        return None
    return Webhook(url, settings.connection_proxy(conn, url), *_shape(conn.extra))


#: What no header name or value may hold (the request would be refused, and the alert lost).
_BREAKS_A_HEADER = re.compile(r"[\r\n\x00]")


def _shape(extra: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The connection's ``format`` and ``headers``. One careflow cannot use is said in the log and
    left out (Slack's shape, no headers of its own): the alert is still posted."""
    shape = extra.get("format") or "slack"
    if not isinstance(shape, str) or shape not in ALERT_FORMATS:
        log.error(
            "careflow: the careflow_alerts connection's format %r is not one careflow posts (%s): "
            "alerts go as Slack JSON",
            shape,
            ", ".join(ALERT_FORMATS),
        )
        shape = "slack"
    headers = extra.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(name, str) and isinstance(value, str) and not _BREAKS_A_HEADER.search(name + value)
        for name, value in headers.items()
    ):
        log.error(
            "careflow: the careflow_alerts connection's headers must be an object of header names to "
            "text values of one line (%s given): alerts go without them",
            type(headers).__name__ if not isinstance(headers, dict) else "an object with other values",
        )
        headers = {}
    return shape, tuple(headers.items())


def send_alert(alert: Alert) -> bool:
    """Log the alert and post it to ``careflow_alerts``; True when the webhook accepted it. Never raises."""
    return _post(alert, _read_webhook())


def send_in_background(alert: Alert) -> threading.Thread:
    """:func:`send_alert` on its own thread: breaker events fire inside the send path, which must not
    wait for a webhook. The thread is not a daemon, so a process that ends normally still posts it.

    The webhook is read first, on the thread that raised the alert, and the new thread only posts:
    a lookup on a thread of its own could come at any moment of the task, and Airflow's in-process
    task runner (``dag.test()``, ``airflow dags test``) is not safe to ask from two threads at once
    (see :func:`careflow.settings.connections_read_once`).
    """
    thread = threading.Thread(target=_post, args=(alert, _read_webhook()), name="careflow-alert")
    thread.start()
    return thread


def _read_webhook() -> Webhook | None:
    """:func:`webhook`, or None (said in the log) when the connection cannot be read."""
    try:
        return webhook()
    except Exception:
        log.warning("careflow: cannot read the careflow_alerts connection", exc_info=True)
        return None


def _post(alert: Alert, hook: Webhook | None) -> bool:
    """Log the alert and post it to ``hook`` (None: nowhere); True when the webhook accepted it."""
    log.warning("%s", alert.text)
    observability.stats_incr(f"careflow.alerts.{observability.part(alert.kind)}")
    if hook is None:
        return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(_proxies(hook)))
    request = urllib.request.Request(
        hook.url,
        data=json.dumps(ALERT_FORMATS[hook.format](alert), ensure_ascii=False).encode("utf-8"),
        headers={**dict(hook.headers), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            return 200 <= response.status < 300
    except Exception as exc:
        log.error("careflow: alert webhook failed (%s): %s", type(exc).__name__, alert.kind)
        return False


def _proxies(hook: Webhook) -> dict[str, str]:
    """The webhook's proxy as urllib takes it: the connection's, else the one the environment names
    for it as the provider client reads it (``NO_PROXY`` networks, a loopback webhook direct)."""
    try:
        from careflow.providers.http1 import Origin, environment_proxy

        proxy = hook.proxy or environment_proxy(Origin.parse(hook.url))
    except ValueError:  # a URL the client would not take: urllib's own reading then
        return urllib.request.getproxies()
    return {hook.url.split("://", 1)[0].lower(): proxy} if proxy else {}


def _first_time(key: tuple[str, ...], now: float | None = None) -> bool:
    """Whether ``key``'s alert has not gone out in the last ``COOLDOWN_SECONDS``: here, or anywhere.

    The processes of one problem (each attempt of a task runs in a new one, each worker its own)
    agree through Redis where ``careflow_redis`` is set up; without it, or with Redis out of
    reach, each process decides for itself.
    """
    now = time.monotonic() if now is None else now
    with _recent_lock:
        last = _recent.get(key)
        if last is not None and now - last < COOLDOWN_SECONDS:
            return False
        _recent[key] = now
    return _first_anywhere(key)


def _first_anywhere(key: tuple[str, ...]) -> bool:
    """Whether no process sharing careflow's Redis took ``key``'s alert in the cooldown (True without Redis)."""
    try:
        url = settings.redis_url()
        if not url:
            return True
        from careflow.resilience.redis_link import DOWN, key_prefix, link_for

        digest = hashlib.sha256("\x1f".join(key).encode("utf-8")).hexdigest()[:32]
        name = f"{key_prefix()}:alert:{digest}"
        taken = link_for(url).run(lambda client: client.set(name, 1, nx=True, ex=COOLDOWN_SECONDS))
    except Exception:
        log.warning("careflow: alerts cannot agree through Redis; this process alerts", exc_info=True)
        return True
    return taken is DOWN or bool(taken)


def _failure_detail(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    from careflow.exceptions import CareflowError

    name = type(exc).__name__
    # A database error's own class names the condition (psycopg2's ReadOnlySqlTransaction on a
    # standby, SerializationFailure, QueryCanceled for a statement timeout, TooManyConnections…),
    # where SQLAlchemy's wrapper says only InternalError or OperationalError; its message, which
    # may quote row values, is left to the task's log.
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException) and type(orig).__name__ not in (name, "Error"):
        name = f"{name} ({type(orig).__name__})"
    # A database that cannot be reached or takes no writes is named, in careflow's words.
    from careflow.store.db import database_unusable

    problem = database_unusable(exc, driver_message=False)
    if problem is not None:
        return f"{name}: {problem}"
    # Messages careflow and Airflow write name ids; a driver's or a library's may quote row values.
    own = isinstance(exc, CareflowError) or type(exc).__module__.startswith(("airflow.", "careflow."))
    return f"{name}: {scrub(str(exc))}" if own and str(exc) else name


def _caused_by_configuration(exc: BaseException | None) -> bool:
    """Whether a task stopped where its ``provider_configuration_error`` event alerted already."""
    from airflow.sdk.exceptions import AirflowException

    from careflow.exceptions import ConfigurationError, ProviderConfigurationError

    cause = getattr(exc, "__cause__", None)
    if isinstance(exc, ProviderConfigurationError) or isinstance(cause, ProviderConfigurationError):
        return True
    # The action task stops on a messaging connection it cannot use (missing, no host) this way;
    # a missing one after its retries.
    return isinstance(exc, AirflowException) and isinstance(cause, ConfigurationError)


def _dag_and_run(context: dict[str, Any]) -> tuple[str | None, str | None]:
    """The DAG id and run id of a task or DAG-run callback context (None where it has none)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run, dag = context.get("dag_run"), context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None) or context.get("run_id")
    return dag_id, run_id


def _task_states(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """Airflow's task states of one run by task id, or None when they cannot be read.

    Asked through the process' supervisor (the triggerer's, the DAG processor's): outside one,
    or without an answer, the caller alerts as if it knew nothing.
    """
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id])
    except Exception as exc:
        log.warning(
            "careflow: the task states of %s %s could not be read (%s)", dag_id, run_id, type(exc).__name__
        )
        return None
    return states.get(run_id) or {}


def alert_from_context(kind: str, context: Any) -> Alert:
    """The alert for a task or DAG-run callback context (task instance, run, exception)."""
    context = context or {}
    ti = context.get("ti") or context.get("task_instance")
    dag_id, run_id = _dag_and_run(context)
    task_id = getattr(ti, "task_id", None) if kind == "task_failed" else None
    facts = {}
    if kind == "task_failed" and getattr(ti, "try_number", None):
        facts["Attempt"] = str(ti.try_number)
    elif kind != "task_failed" and getattr(ti, "task_id", None):
        facts["Last task"] = str(ti.task_id)
    if kind == "task_failed":
        title = "a task failed"
        detail = _failure_detail(context.get("exception"))
    else:
        title = "a DAG run failed"
        reason = context.get("reason")
        detail = scrub(str(reason)) if reason else None
    return Alert(
        kind=kind,
        title=title,
        workflow_id=workflow_of(dag_id),
        node_id=task_id,
        run_id=run_id,
        detail=detail,
        link=ui_link(dag_id, run_id, task_id),
        facts=facts,
    )


class CareflowNotifier(BaseNotifier):
    """Post an alert for a failed task (``kind="task_failed"``) or DAG run (``"dag_run_failed"``).

    :param kind: which failure the callback reports.
    """

    template_fields = ()

    def __init__(self, kind: str = "task_failed") -> None:
        super().__init__()
        self.kind = kind

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (no template fields), so no Jinja environment is asked of the DAG.

        ``airflow dags test`` runs a failed run's callbacks with the scheduler's ``SerializedDAG``
        in the context, which has none: the base notifier's rendering fails there before the
        alert is built.
        """

    def notify(self, context: Any) -> None:
        """Build the alert from the callback context and send it."""
        if self.kind == "dag_run_failed" and _told_by_task_alerts(context or {}):
            return
        exc = (context or {}).get("exception")
        ti = (context or {}).get("ti")
        if _caused_by_configuration(exc) and ti is not None:
            key = (
                "provider_configuration_error",
                str(workflow_of(ti.dag_id)),
                str(ti.task_id),
                str(ti.run_id),
            )
            if not _first_time(key):
                return  # the configuration alert for this attempt went out already
        send_alert(alert_from_context(self.kind, context))

    async def async_notify(self, context: Any) -> None:
        """The same, off the event loop."""
        await asyncio.to_thread(self.notify, context)


TASK_FAILED = CareflowNotifier("task_failed")
DAG_RUN_FAILED = CareflowNotifier("dag_run_failed")


def _told_by_task_alerts(context: dict[str, Any]) -> bool:
    """Whether the failed run's failure was alerted already, task by task.

    True when Airflow's task states of the run name at least one failed task and each failed task
    alerts on its own (a task-failed ``CareflowNotifier`` among its failure callbacks, as
    careflow's node and wake tasks have): those alerts went out as the tasks failed, and the run's would tell the same
    failure a second time, later (a run stays open while ``careflow_wake`` waits). Tasks
    ``upstream_failed`` are the failed task's consequence. False, and the run's alert goes out,
    when the states cannot be read, when no task failed (the run failed for another reason), or
    when a failed task has no alert of its own.
    """
    dag = context.get("dag")
    dag_id, run_id = _dag_and_run(context)
    if dag is None or not dag_id or not run_id:
        return False
    states = _task_states(dag_id, run_id)
    if states is None:  # the run's alert goes out
        return False
    failed = [task_id for task_id, state in states.items() if state == "failed"]
    if not failed:
        return False
    for task_id in failed:
        try:
            callbacks = dag.get_task(task_id).on_failure_callback
        except Exception:  # a task no longer in the DAG
            return False
        listed = callbacks if isinstance(callbacks, list) else [callbacks]
        if not any(isinstance(c, CareflowNotifier) and c.kind == "task_failed" for c in listed):
            return False
    log.info("careflow: run %s of %s failed; its failed tasks %s alerted already", run_id, dag_id, failed)
    return True


def task_callbacks() -> dict[str, Any]:
    """``default_args`` entries: alert on failure; report cache metrics when a task ends."""
    return {
        "on_failure_callback": [TASK_FAILED, observability.report_task_metrics],
        "on_success_callback": [observability.report_task_metrics],
    }


def run_deadline(compiled: Any) -> Any:
    """A ``DeadlineAlert`` on the run's queued time when ``settings.run_deadline_hours`` is set, else None."""
    hours = getattr(compiled.settings, "run_deadline_hours", None)
    if not hours:
        return None
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=float(hours)),
        callback=AsyncCallback(
            run_deadline_missed, kwargs={"workflow_id": compiled.workflow_id, "hours": float(hours)}
        ),
        name=f"careflow run deadline ({hours:g} h)",
    )


def dag_callbacks(compiled: Any) -> dict[str, Any]:
    """``DAG(...)`` keyword arguments: the run-failure notifier and the run deadline, if any."""
    options: dict[str, Any] = {"on_failure_callback": DAG_RUN_FAILED}
    deadline = run_deadline(compiled)
    if deadline is not None:
        options["deadline"] = deadline
    return options


#: Task states that no longer change without an operator (a node task that ended, one way or another).
_ENDED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


async def run_deadline_missed(workflow_id: str, hours: float, context: dict[str, Any] | None = None) -> None:
    """Deadline Alert callback (runs in the triggerer): the run's node tasks have not ended ``hours`` after it was queued.

    A run whose node tasks have all ended stays running while ``careflow_wake`` waits in the
    triggerer for the next parked execution, sometimes until the next scheduled run: that is its
    plan, not a run behind, and is not alerted (a node task that failed was alerted when it
    failed). When the task states cannot be read, the alert goes out.
    """
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id")
    dag_id = dag_run.get("dag_id") or f"{DAG_PREFIX}{workflow_id}"
    if run_id and await _only_the_wake_is_left(dag_id, str(run_id)):
        log.info(
            "careflow %s: run %s is past its deadline only waiting for its next wake", workflow_id, run_id
        )
        return
    alert = Alert(
        kind="run_deadline_missed",
        title=f"the scheduled run has not finished {hours:g} hours after it was queued",
        workflow_id=workflow_id,
        run_id=run_id,
        link=ui_link(dag_id, run_id),
        facts={"Queued at": str(dag_run.get("queued_at") or "")},
    )
    await asyncio.to_thread(send_alert, alert)


async def _only_the_wake_is_left(dag_id: str, run_id: str) -> bool:
    """Whether every task of the run but ``careflow_wake`` has ended (False when that cannot be told)."""
    from careflow.workflow.validation import WAKE_TASK_ID

    states = await asyncio.to_thread(_task_states, dag_id, run_id)
    if states is None:  # not in a triggerer, or the API server did not answer: alert
        return False
    nodes = {task: state for task, state in states.items() if task != WAKE_TASK_ID}
    return WAKE_TASK_ID in states and bool(nodes) and all(state in _ENDED for state in nodes.values())


def _configuration_problem(fields: dict[str, Any]) -> tuple[str, str]:
    """Title and detail of a ``provider_configuration_error`` alert, by the event's ``problem``.

    ``connection_missing`` and ``connection_unusable`` are the action task's messaging connection,
    before anything was sent; the others stopped a batch (:class:`ProviderConfigurationError`):
    ``http_<status>``, ``tls_certificate``, ``proxy_refused``. Without one, a refused token.
    """
    connection = str(fields.get("connection") or settings.MESSAGING_CONN_ID)
    problem = fields.get("problem")
    stopped = f"Sending stopped for this node; its messages stay due. {scrub(str(fields.get('error') or ''))}"
    if problem == "connection_missing":
        return (
            f"the {connection} connection is not defined",
            f"Nothing was sent; the messages stay due and the task retries. Add {connection} (type http, "
            "host = the provider's base URL, password = the bearer token), or make the secrets backend "
            "that holds it answer: the next attempt sends them.",
        )
    if problem == "connection_unusable":
        return f"the {connection} connection is not usable", stopped
    if problem == "tls_certificate":
        return "the TLS certificate of the messaging provider (or its proxy) is not trusted", stopped
    if problem == "proxy_refused":
        return "the proxy refused a tunnel to the messaging provider", stopped
    if problem in (None, "http_401", "http_403"):
        return (
            "the messaging provider refused careflow's credentials",
            "Sending stopped for this node. Fix the token of the careflow_messaging connection.",
        )
    status = str(problem).removeprefix("http_")
    return f"the messaging provider answered HTTP {status} to careflow's messages", stopped


def _node_alert(event: str, fields: dict[str, Any], title: str, detail: str, **facts: str) -> None:
    """An event's alert about one node's task in one run, at most once per cooldown for them."""
    workflow_id, node_id, run_id = fields.get("workflow_id"), fields.get("node_id"), fields.get("run_id")
    if not _first_time((event, str(workflow_id), str(node_id), str(run_id))):
        return
    send_alert(
        Alert(
            kind=event,
            title=title,
            workflow_id=workflow_id,
            node_id=node_id,
            run_id=run_id,
            detail=detail,
            link=ui_link(f"{DAG_PREFIX}{workflow_id}" if workflow_id else None, run_id, node_id),
            facts=facts,
        )
    )


def on_event(event: str, **fields: Any) -> None:
    """Alert on the engine and breaker events that need an operator (subscribed to observability)."""
    if event == "provider_configuration_error":
        title, detail = _configuration_problem(fields)
        _node_alert(event, fields, title, detail, Channel=str(fields.get("channel") or ""))
    elif event == "breaker_wait_not_ended":
        minutes = float(fields.get("grace_s") or 0) / 60
        _node_alert(
            event,
            fields,
            "Airflow's triggerer did not end an action task's wait (is the triggerer running?)",
            f"The task waited in the triggerer for its circuit breaker to half-open, and was not woken "
            f"{minutes:g} minutes after the wait's end: the scheduler timed the wait out and sending "
            "resumed, that much late. Start the triggerer (`airflow triggerer`).",
        )
    elif event == "breaker_transition" and fields.get("to_state") == "open":
        breaker = str(fields.get("breaker"))
        if not _first_time((event, breaker)):
            return
        send_in_background(
            Alert(
                kind="breaker_open",
                title=f"circuit breaker {breaker} opened",
                detail=f"Sends through it wait until it half-opens ({scrub(str(fields.get('reason') or ''), 120)}).",
                facts={"Breaker": breaker, "Backend": str(fields.get("backend") or "")},
            )
        )
    elif event == "breaker_redis_fallback":
        if not _first_time((event,)):
            return
        send_in_background(
            Alert(
                kind="breaker_redis_fallback",
                title="Redis lost: circuit breakers fall back to each machine's breaker file",
                detail="Breaker state is shared only by the workers of one machine "
                f"({scrub(str(fields.get('error') or ''), 200)}).",
            )
        )


observability.subscribe(on_event)
