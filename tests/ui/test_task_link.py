"""Every careflow task links back to its node in the careflow view, through Airflow's plugin registry."""

from __future__ import annotations

from typing import Any

import pytest

from careflow.airflow.links import CareflowNodeLink, node_view_url
from careflow.airflow.operators import NODE_OPERATORS
from engine.harness import compile_doc, example


def _key(dag_id: str, task_id: str, run_id: str) -> Any:
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey(dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=1, map_index=-1)


def test_the_link_opens_the_node_of_the_tasks_workflow_and_run() -> None:
    link = CareflowNodeLink()
    url = link.get_link(
        None, ti_key=_key("careflow__implant-aftercare", "a1", "scheduled__2026-03-02T15:00:00+00:00")
    )
    assert (
        url
        == "/careflow/ui/#/workflow/implant-aftercare/node/a1?run=scheduled__2026-03-02T15%3A00%3A00%2B00%3A00"
    )
    assert node_view_url("w x", "n/1") == "/careflow/ui/#/workflow/w%20x/node/n%2F1"


def test_the_link_follows_airflows_base_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://ops.example.org/airflow/")
    assert node_view_url("w", "n") == "/airflow/careflow/ui/#/workflow/w/node/n"


def test_the_plugin_registers_the_nav_entry_and_the_link_for_every_node_operator() -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from careflow_plugin import CareflowPlugin

    [view] = CareflowPlugin.external_views
    parsed = ExternalViewResponse.model_validate(view)
    assert (parsed.href, parsed.destination, parsed.url_route) == ("careflow/ui/", "nav", "careflow")
    [link] = CareflowPlugin.operator_extra_links
    assert isinstance(link, CareflowNodeLink)
    assert set(link.operators) == set(NODE_OPERATORS.values())
    assert all(isinstance(op.operator_extra_links[0], CareflowNodeLink) for op in NODE_OPERATORS.values())


def test_a_serialized_task_resolves_the_link_without_the_task_having_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The api-server sees serialized DAGs: the plugin's link, not an XCom lookup, answers there."""
    from airflow import plugins_manager
    from airflow.serialization.serialized_objects import DagSerialization

    from careflow.airflow.factory import build_dag
    from careflow_plugin import CareflowPlugin

    monkeypatch.setattr(
        plugins_manager, "get_operator_extra_links", lambda: CareflowPlugin.operator_extra_links
    )
    dag = build_dag(compile_doc(example("implant-aftercare")))
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    for task_id in ("t1", "d1", "c1", "w1", "a1"):
        task = restored.get_task(task_id)
        assert task.extra_links == ["careflow"]
        link = task.operator_extra_link_dict["careflow"]
        assert isinstance(link, CareflowNodeLink), type(link)
        url = link.get_link(task, ti_key=_key(restored.dag_id, task_id, "manual__1"))
        assert url == f"/careflow/ui/#/workflow/implant-aftercare/node/{task_id}?run=manual__1"
