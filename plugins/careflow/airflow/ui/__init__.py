"""The careflow view in the Airflow UI: a static page and the JSON routes it reads."""

from careflow.airflow.ui.router import router

__all__ = ["router"]
