"""The careflow Airflow plugin: its API at ``/careflow`` (behind Airflow's authentication)."""

from airflow.plugins_manager import AirflowPlugin

from careflow.airflow.api import app


class CareflowPlugin(AirflowPlugin):
    """Registers careflow's FastAPI app on the api-server."""

    name = "careflow"
    fastapi_apps = [{"app": app, "url_prefix": "/careflow", "name": "careflow"}]
