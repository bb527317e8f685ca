"""The authentication README's "Deploying for a team" turns on, on real servers: MLflow's basic-auth
app and Prefect's API auth string refuse a request without credentials (401), and skytrain's clients
work with the credentials from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``;
``PREFECT_API_AUTH_STRING``). Both servers start at once, on 127.0.0.1 at free ports, with their
state in temporary folders; they are stopped by the process groups of their PIDs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.exceptions import MlflowException

from ray_jobs import tracking
from ray_jobs.settings import Settings
from tests.servers import free_ports, wait_for_http

ADMIN = "admin"


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in a session of its own, so that stopping its group stops its workers too."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(server: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """MLflow's basic-auth app and a Prefect server with an API auth string, both up."""
    tmp = tmp_path_factory.mktemp("team-auth")
    mlflow_port, prefect_port = free_ports(2)
    mlflow_password, prefect_auth = secrets.token_urlsafe(16), f"{ADMIN}:{secrets.token_urlsafe(16)}"
    base = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    auth_config = tmp / "basic_auth.ini"
    auth_config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp / 'auth.db'}\nadmin_username = {ADMIN}\n"
    )
    mlflow_env = {
        **base,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_password,  # read once, when the admin user is created
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    mlflow_cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
    mlflow_cmd += [
        "--port",
        str(mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
    ]
    mlflow_cmd += ["--default-artifact-root", str(tmp / "artifacts")]
    prefect_env = {
        **{k: v for k, v in base.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    prefect_cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(prefect_port),
    ]
    started = [
        start(mlflow_cmd, mlflow_env, tmp / "mlflow.log"),
        start(prefect_cmd, prefect_env, tmp / "prefect.log"),
    ]
    mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
    try:
        # Both answer their health check without credentials (for load balancers and `make up`).
        wait_for_http(f"{mlflow_url}/health", started[0], f"mlflow basic-auth (log: {tmp / 'mlflow.log'})", 120)
        wait_for_http(f"{prefect_url}/api/health", started[1], f"prefect (log: {tmp / 'prefect.log'})", 120)
        yield {"mlflow": mlflow_url, "mlflow_password": mlflow_password, "prefect": prefect_url, "auth": prefect_auth}
    finally:
        for server in started:
            stop(server)


def test_mlflow_refuses_requests_without_credentials_and_skytrain_logs_with_them(servers, monkeypatch):
    url = servers["mlflow"]
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=(ADMIN, "not-the-password")).status_code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", servers["mlflow_password"])
    settings = Settings(mlflow_tracking_uri=url, mlflow_experiment="team-auth")
    previous = mlflow.get_tracking_uri()
    try:
        experiment = tracking.ensure_experiment(settings)  # what every flow and training does first
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_metric("val_loss", 0.5)
    finally:
        mlflow.set_tracking_uri(previous)
    assert mlflow.MlflowClient(url).get_run(run.info.run_id).data.metrics == {"val_loss": 0.5}
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="error code 401"):
        mlflow.MlflowClient(url).get_experiment(experiment)


def test_prefect_refuses_requests_without_the_auth_string_and_clients_work_with_it(servers):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    api = f"{servers['prefect']}/api"
    assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=(ADMIN, "not-it")).status_code == 401
    # An API key (Prefect Cloud's) would take precedence over the auth string: none here.
    with_auth = {PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: servers["auth"]}
    with temporary_settings(with_auth, restore_defaults={PREFECT_API_KEY}), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("team-auth-probe")
        assert client.read_flow(flow_id).name == "team-auth-probe"
    without = temporary_settings({PREFECT_API_URL: api}, restore_defaults={PREFECT_API_AUTH_STRING, PREFECT_API_KEY})
    with without, get_client(sync_client=True) as client, pytest.raises(Exception, match="401"):
        client.read_flow(flow_id)
