"""Every error careflow raises on purpose.

Messages say what was wrong, where (workflow, node, field) and what to do about it.
"""

from __future__ import annotations

import os


class CareflowError(Exception):
    """Base class of careflow's own errors."""


class ConfigurationError(CareflowError):
    """careflow is not set up correctly (a connection, a setting, a missing table)."""


class ConnectionMissing(ConfigurationError):
    """An Airflow connection careflow needs is defined nowhere Airflow looks (environment, secrets backends)."""

    def __init__(self, conn_id: str, message: str) -> None:
        self.conn_id = conn_id
        super().__init__(message)


class AirflowDatabaseError(CareflowError):
    """Airflow's metadata database failed a read careflow made through Airflow (a sign-in, an access check).

    Raised from the database's own error, so that what careflow answers names Airflow's database
    and not careflow's: the two may be on one server, never the same tables.
    """


class WorkflowInvalid(CareflowError):
    """A workflow has validation errors and cannot be published or compiled."""

    def __init__(self, workflow_id: str | None, diagnostics: list) -> None:  # list[Diagnostic]
        self.workflow_id = workflow_id
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if getattr(d, "severity", "error") == "error"]
        first = errors[0] if errors else None
        where = (
            f" ({first.code} at {first.node_id or first.edge_id or 'workflow'}: {first.message})"
            if first
            else ""
        )
        super().__init__(f"workflow {workflow_id or '?'} has {len(errors)} error(s){where}")


class SnapshotError(CareflowError):
    """A published snapshot file cannot be loaded by the DAG factory."""


class TemplateError(CareflowError):
    """A message template is refused (syntax, unknown variable, unsafe construct, size, time)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ProviderError(CareflowError):
    """The messaging provider answered in a way that stops the task (configuration, unknown)."""


class ProviderConfigurationError(ProviderError):
    """Sending cannot work as configured: stop and alert, do not retry.

    ``problem`` says which: ``http_<status>`` (the provider refused the token, 401/403, or the
    base URL is wrong, 404/405/3xx), ``tls_certificate`` (the provider's certificate is not
    trusted) or ``proxy_refused`` (the proxy refused the tunnel, 407…).
    """

    def __init__(self, message: str, problem: str) -> None:
        self.problem = problem
        super().__init__(message)


class BreakerOpen(CareflowError):
    """The circuit breaker of a provider is open; sending must wait until ``retry_at``.

    ``retry_at`` is on the clock of the breaker's backend (Redis ``TIME``); ``local_retry_at`` is
    the same moment on this host's clock (``retry_at`` when none was given).
    """

    def __init__(self, name: str, retry_at: float, local_retry_at: float | None = None) -> None:
        self.name = name
        self.retry_at = retry_at
        self.local_retry_at = retry_at if local_retry_at is None else local_retry_at
        super().__init__(f"circuit breaker {name!r} is open until {retry_at:.0f}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: a driver's runs over several (the SQL, its
    parameters, a link), and the first says what went wrong."""
    return (str(exc).strip().splitlines() or [""])[0]


def this_user() -> str:
    """This process's user, for a message about what it may not read or write ("this user (airflow,
    uid 50000)")."""
    uid = os.getuid()
    try:
        import pwd

        return f"this user ({pwd.getpwuid(uid).pw_name}, uid {uid})"
    except (ImportError, KeyError):
        return f"this user (uid {uid})"
