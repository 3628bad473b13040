"""careflow: one Airflow DAG per published workflow snapshot in ``[careflow] workflows_dir``.

The factory reads snapshot files only (no database, no network) and builds each DAG in its own
try: a broken snapshot is logged and listed by ``careflow workflows list``, the others load.
"""

from careflow.airflow.factory import build_dags

dags, problems = build_dags()
globals().update(dags)
