"""The extra link on every careflow task: its node in the careflow view, for the task's run.

It lives in ``plugins/`` so that the api-server, which renders extra links from serialized DAGs,
can import it; the plugin registers it for every node operator (Airflow 3 resolves operator links
of serialized DAGs only through plugins).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

from careflow.compiler.graph import dag_id_for

DAG_PREFIX = dag_id_for("")


def _base_path() -> str:
    """The path Airflow is served under (``[api] base_url``), empty at the root."""
    try:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback="") or ""
    except Exception:  # outside a configured Airflow the view is at the root
        base_url = ""
    return urlsplit(base_url).path.rstrip("/")


def node_view_url(workflow_id: str, node_id: str, run_id: str | None = None) -> str:
    """``/careflow/ui/#/workflow/<id>/node/<node>[?run=<run id>]`` under Airflow's base path."""
    url = (
        f"{_base_path()}/careflow/ui/#/workflow/{quote(workflow_id, safe='')}/node/{quote(node_id, safe='')}"
    )
    return f"{url}?run={quote(run_id, safe='')}" if run_id else url


class CareflowNodeLink(BaseOperatorLink):
    """ "careflow": the task's node in the careflow view, with the counts of the task's run."""

    name = "careflow"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The view of the node; the workflow comes from the DAG id, the node is the task id."""
        dag_id = str(ti_key.dag_id)
        workflow_id = dag_id[len(DAG_PREFIX) :] if dag_id.startswith(DAG_PREFIX) else dag_id
        return node_view_url(workflow_id, str(ti_key.task_id), getattr(ti_key, "run_id", None))


def registered_node_link() -> CareflowNodeLink:
    """The link as the plugin registers it: bound to every careflow node operator class."""
    from careflow.airflow.operators import NODE_OPERATORS

    CareflowNodeLink.operators = list(NODE_OPERATORS.values())
    return CareflowNodeLink()
