# careflow on Airflow 3.3.2: the pinned requirements, the careflow package, the DAG file and the plugin.
FROM apache/airflow:3.3.2

COPY --chown=airflow:root requirements.txt constraints.txt /opt/careflow/
RUN pip install --no-cache-dir -r /opt/careflow/requirements.txt -c /opt/careflow/constraints.txt

COPY --chown=airflow:root pyproject.toml README.md /opt/careflow/
COPY --chown=airflow:root plugins /opt/careflow/plugins
COPY --chown=airflow:root include /opt/careflow/include
RUN pip install --no-cache-dir --no-deps /opt/careflow

# Airflow loads only the plugin file and the DAG file; the package itself is installed above.
COPY --chown=airflow:root plugins/careflow_plugin.py plugins/.airflowignore /opt/airflow/plugins/
COPY --chown=airflow:root dags /opt/airflow/dags
