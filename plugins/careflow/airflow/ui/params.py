"""The ids careflow's routes take, checked before any database sees them.

A workflow or node id follows the workflow model's rule (``ID_PATTERN``); an execution, patient
or run id is any text without control characters, no longer than an Airflow run id may be. What
breaks a rule is a 422 naming the parameter: Postgres refuses a NUL byte in a string outright
(careflow's tables, and Airflow's, where the access check looks up the team of the workflow's
DAG), so a workflow id in the path is checked before its access too.

Every parameter of a route is checked before the workflow's access (403) and existence (404):
a malformed one is the same 422 whatever the workflow. FastAPI calls a route's dependencies
before it checks the route's own parameters, so a route that takes other parameters besides the
workflow id checks the workflow in its body (:func:`check_known_workflow`), not through a
dependency such as :func:`readable_workflow`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query

from careflow.airflow import access
from careflow.workflow.models import ID_PATTERN

#: Text without control characters (NUL among them).
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
#: As long as an Airflow run id may be; careflow's execution and patient ids are shorter.
MAX_ID_LENGTH = 250

WorkflowId = Annotated[str, Path(pattern=ID_PATTERN)]
NodeId = Annotated[str, Path(pattern=ID_PATTERN)]
ExecutionId = Annotated[str, Path(pattern=PRINTABLE, max_length=MAX_ID_LENGTH)]
PatientId = Annotated[str, Path(pattern=PRINTABLE, max_length=MAX_ID_LENGTH)]
WorkflowFilter = Annotated[str | None, Query(pattern=ID_PATTERN)]
NodeFilter = Annotated[str | None, Query(pattern=ID_PATTERN)]
RunFilter = Annotated[str | None, Query(pattern=PRINTABLE, max_length=MAX_ID_LENGTH)]


def require_known(workflow_id: str) -> None:
    """404 unless careflow knows the workflow: a snapshot on disk or a version in its database.

    What ``GET …/graph`` and ``careflow metrics --workflow`` go by, so that an id with a typo is
    told apart from a workflow that has not run yet.
    """
    from careflow.publishing import is_published

    if not is_published(workflow_id):
        raise HTTPException(status_code=404, detail=f"no workflow {workflow_id!r}")


def readable_workflow(workflow_id: WorkflowId, user: Any = Depends(access.get_user)) -> str:
    """The path's workflow: a well-formed id (422) whose runs the user may read (403).

    For a route whose only parameter is the workflow id (see the module's docstring).
    """
    access.check_workflow(user, workflow_id)
    return workflow_id


def check_known_workflow(user: Any, workflow_id: str) -> None:
    """403 unless ``user`` may read ``workflow_id``'s runs, 404 unless careflow knows it.

    Called in a route's body, once FastAPI has checked all of the route's parameters.
    """
    access.check_workflow(user, workflow_id)
    require_known(workflow_id)
