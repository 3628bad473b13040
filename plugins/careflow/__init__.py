"""careflow: patient-messaging workflows from a visual builder, run as Apache Airflow DAGs.

The package is laid out along the path a workflow takes:

- ``workflow``: what the builder exports (pydantic models), validation and the JSON Schema.
- ``compiler``: validated workflow -> engine-neutral graph (the IR the DAG factory renders).
- ``store``: careflow's tables (versions, executions, steps, ledger) and the clinic tables.
- ``engine``: the journey semantics (enrollment, conditions, delays, time windows, sends).
- ``templates``: the locked-down Jinja2 sandbox for message bodies.
- ``providers``: the messaging-provider HTTP client and the local fake provider.
- ``resilience``: circuit breaker and caches shared by every worker.
- ``airflow``: the thin Airflow skin (DAG factory, operators, triggers, plugin).
"""

__version__ = "0.1.0"
