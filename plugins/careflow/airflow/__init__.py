"""The Airflow skin: DAG factory, node operators, triggers, callbacks and the plugin."""
