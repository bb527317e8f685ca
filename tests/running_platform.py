"""The local platform (``make up``) as tests drive it: started in a state directory of their own
on free ports, talked to over the same REST API the Prefect UI uses, stopped by ``down``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import free_ports

PROJECT_DIR = Path(__file__).resolve().parents[1]
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class RetryBusy(httpx.HTTPTransport):
    """Prefect's API answers 503 while its SQLite database is locked by another writer (the worker,
    the server's services); Prefect's own client retries 429 and 503, and so does this one: up to 5
    tries, 0.5, 1, 2 and 4 s apart."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for delay in (0.5, 1, 2, 4):
            response = super().handle_request(request)
            if response.status_code not in (429, 503):
                return response
            response.read()
            response.close()
            time.sleep(delay)
        return super().handle_request(request)


@dataclass
class RunningPlatform:
    state_dir: Path
    env: dict[str, str]
    prefect_url: str
    mlflow_url: str
    up_output: str = ""
    api: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.api = httpx.Client(base_url=f"{self.prefect_url}/api", timeout=30, transport=RetryBusy())

    @classmethod
    def start(cls, state_dir: Path, **env: str) -> RunningPlatform:
        """``up`` in ``state_dir`` on free ports; ``env`` adds settings (``SKYTRAIN_DB``, ...)."""
        prefect_port, mlflow_port, postgres_port = free_ports(3)
        full_env = {
            **os.environ,
            "SKYTRAIN_STATE_DIR": str(state_dir),
            "SKYTRAIN_PREFECT_PORT": str(prefect_port),
            "SKYTRAIN_MLFLOW_PORT": str(mlflow_port),
            "SKYTRAIN_POSTGRES_PORT": str(postgres_port),
            # No scheduler service: the nightly schedule would have the worker start a full retrain of
            # both models (15 epochs) in a session that spans 03:00 UTC, as it did in CI on 2026-11-23.
            # The schedule test asks the API to schedule the runs instead (the service's own call).
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker looks for new runs every 2 s (default 10)
            **env,
        }
        platform = cls(state_dir, full_env, f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}")
        try:
            platform.up_output = platform.command("up")
        except Exception:
            platform.command("down", check=False)
            raise
        return platform

    def command(self, name: str, check: bool = True) -> str:
        """``python -m flows.local_platform <name>`` (what ``make <name>`` runs); its output."""
        result = subprocess.run(
            [sys.executable, "-m", "flows.local_platform", name],
            env=self.env,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = result.stdout + result.stderr
        if check and result.returncode != 0:
            raise AssertionError(f"`{name}` exited {result.returncode}:\n{output}")
        return output

    def stop(self) -> str:
        self.api.close()
        return self.command("down", check=False)

    # --- the REST calls the Prefect UI makes ---------------------------------------------------

    def deployment(self, flow: str, name: str) -> dict:
        response = self.api.get(f"/deployments/name/{flow}/{name}")
        response.raise_for_status()
        return response.json()

    def create_run(self, flow: str, name: str, parameters: dict) -> httpx.Response:
        """What the UI's "Run" form posts: a flow run of the deployment with these parameters."""
        deployment = self.deployment(flow, name)
        return self.api.post(f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})

    def wait_for_run(self, run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.api.get(f"/flow_runs/{run_id}").json()
            if run["state"]["type"] in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} still {run['state']['name']} after {timeout:.0f} s")
            time.sleep(2)

    def artifacts(self, run_id: str) -> list[dict]:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        return self.api.post("/artifacts/filter", json=body).json()

    def scheduled_runs(self, deployment_id: str) -> list[dict]:
        """The deployment's runs its schedules created, still waiting (not the runs made through the
        API, as the UI's Run form makes them: one may not have been picked up yet)."""
        body = {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        }
        return [run for run in self.api.post("/flow_runs/filter", json=body).json() if run["auto_scheduled"]]

    def schedule_runs(self, deployment_id: str, runs: int) -> list[dict]:
        """Has the API create the next ``runs`` runs of the deployment's active schedules (what
        Prefect's scheduler service does on each loop; the test platforms run without it); those runs."""
        response = self.api.post(f"/deployments/{deployment_id}/schedule", json={"min_runs": runs, "max_runs": runs})
        assert response.status_code < 300, response.text
        return self.scheduled_runs(deployment_id)

    def delete_run(self, run_id: str) -> None:
        response = self.api.delete(f"/flow_runs/{run_id}")
        assert response.status_code < 300, response.text

    def pids(self) -> dict[str, int]:
        """The PIDs ``up`` recorded, by service."""
        import json

        return {
            path.stem: json.loads(path.read_text())["pid"]
            for path in (self.state_dir / "platform" / "pids").glob("*.json")
        }


# What the retrain run of the platform tests asks for: the small regressor model, on a small
# slice of its data, so the worker's run (Ray start-up included) takes about a minute.
# The postgres platform is started as if behind a reverse proxy: its UI calls the API there.
PROXIED_UI_API_URL = "https://prefect.example.com/api"
RETRAIN_PARAMETERS = {"models": ["diamonds-regressor"], "epochs": 2, "num_workers": 1, "limit_rows": 3000}


class PlatformsInBackground:
    """The platforms of the session's platform tests, started in a thread while other tests run.

    Bringing a platform up (servers, migrations, deploy) and the worker's ``retrain`` run take
    about three minutes of mostly waiting; the platform tests are moved to the end of the session
    (``tests/conftest.py``) and find everything ready. In order: the SQLite platform, its retrain
    run created through the API (as the UI's Run form does), then the PostgreSQL platform.
    """

    def __init__(self) -> None:
        import tempfile
        import threading

        self.root = Path(tempfile.mkdtemp(prefix="skytrain-platforms-"))
        self.root.chmod(0o755)  # as root, PostgreSQL runs as the postgres user, who must reach it
        self.started: dict[str, RunningPlatform] = {}
        self.retrain_run_id: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="platforms", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.started["sqlite"] = sqlite = RunningPlatform.start(self.root / "sqlite")
            response = sqlite.create_run("retrain", "retrain", RETRAIN_PARAMETERS)
            assert response.status_code == 201, response.text
            self.retrain_run_id = response.json()["id"]
            self.started["postgres"] = RunningPlatform.start(
                self.root / "postgres", SKYTRAIN_DB="postgres", PREFECT_UI_API_URL=PROXIED_UI_API_URL
            )
        except BaseException as error:  # handed to the test that needs it
            self.error = error

    def get(self, kind: str) -> RunningPlatform:
        self._thread.join(timeout=900)
        if kind not in self.started:
            raise RuntimeError(f"the {kind} platform did not start") from self.error
        return self.started[kind]

    def stop_all(self) -> None:
        import shutil

        self._thread.join(timeout=900)
        for running in self.started.values():
            running.stop()  # `down` again after a test's own `down` finds nothing to stop
        self.started.clear()
        shutil.rmtree(self.root, ignore_errors=True)
