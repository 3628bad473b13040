"""The careflow Airflow plugin: its API and view at ``/careflow`` (behind Airflow's authentication)."""

from airflow.plugins_manager import AirflowPlugin

from careflow.airflow.api import app
from careflow.airflow.links import registered_node_link
from careflow.airflow.pool_guard import pool_guard


class CareflowPlugin(AirflowPlugin):
    """careflow's FastAPI app on the api-server, its nav entry, the task link to the node's view, and
    the listener that creates a missing ``careflow_messaging`` pool when a component starts."""

    name = "careflow"
    fastapi_apps = [{"app": app, "url_prefix": "/careflow", "name": "careflow"}]
    external_views = [
        {"name": "careflow", "href": "careflow/ui/", "destination": "nav", "url_route": "careflow"}
    ]
    operator_extra_links = [registered_node_link()]
    listeners = [pool_guard]
