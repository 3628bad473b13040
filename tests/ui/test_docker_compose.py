"""docker-compose.yaml: Airflow 3.3.2 on Celery with careflow's connections, and a Dockerfile that matches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from support import REPO

COMPOSE = REPO / "docker-compose.yaml"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved)."""
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def _compose_command() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return cmd
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cmd = _compose_command()
    if cmd is None:
        if os.environ.get("CI"):
            pytest.fail("no compose client to run `config`; .ci/run should have installed docker-compose")
        pytest.skip("neither `docker compose` nor `docker-compose` is available to run `config`")
    result = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


def test_airflow_runs_on_celery_with_every_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres", "redis", "fake-provider", "statsd-exporter"} <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    init = " ".join(commands["airflow-init"])
    assert re.search(r"airflow db migrate && careflow db upgrade && careflow setup", init)
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["image"] == "careflow-airflow:3.3.2" and service["build"] == "."
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        if name != "airflow-init":
            assert service["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}


def test_careflow_connections_and_statsd_are_wired(compose: dict[str, Any]) -> None:
    from careflow import settings

    env = compose["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW__CAREFLOW__WORKFLOWS_DIR"] == "/opt/airflow/workflows"
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "true"
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    assert compose["services"]["statsd-exporter"]["image"].startswith("prom/statsd-exporter:")
    # The connections parse the way careflow reads them (defaults of the ${VAR:-default} expansions).
    expand = lambda value: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)  # noqa: E731
    db = settings._parse_uri("careflow_db", expand(env["AIRFLOW_CONN_CAREFLOW_DB"]))
    assert settings.sqlalchemy_url(db) == "postgresql+psycopg2://airflow:airflow@postgres:5432/careflow"
    messaging = settings._parse_uri("careflow_messaging", expand(env["AIRFLOW_CONN_CAREFLOW_MESSAGING"]))
    assert (messaging.host, messaging.password) == ("http://fake-provider:8025", "dev-token")
    assert "--token" in compose["services"]["fake-provider"]["command"]
    redis = settings._parse_uri("careflow_redis", env["AIRFLOW_CONN_CAREFLOW_REDIS"])
    assert (redis.host, redis.port) == ("redis", 6379)
    alerts = json.loads(expand(env["AIRFLOW_CONN_CAREFLOW_ALERTS"]))
    assert alerts["extra"]["webhook_url"].startswith("http://alert-sink:8080/")


def test_the_development_jwt_secret_is_long_enough_for_hs512(compose: dict[str, Any]) -> None:
    """Airflow signs with HS512 when ``jwt_secret`` is set; PyJWT warns of a key under 64 bytes."""
    env = compose["services"]["airflow-apiserver"]["environment"]
    default = re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:-([^}]*)\}", env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert default is not None, env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(default.group(1).encode()) >= 64


def test_the_image_is_the_pinned_airflow_with_careflow_installed() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned is not None
    assert f"FROM apache/airflow:{pinned.group(1)}\n" in dockerfile
    assert (
        "pip install --no-cache-dir -r /opt/careflow/requirements.txt -c /opt/careflow/constraints.txt"
        in dockerfile
    )
    assert "pip install --no-cache-dir --no-deps /opt/careflow" in dockerfile
    assert "/opt/airflow/dags" in dockerfile and "careflow_plugin.py" in dockerfile
