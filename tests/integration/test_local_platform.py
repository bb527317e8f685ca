"""``make up`` / ``make status`` / ``make down`` and what they run: real Prefect and MLflow servers,
the ``skytrain-local`` work pool, ``prefect.yaml``'s deployments and a worker, on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import httpx
import mlflow
import pytest

from flows.platform_state import cmdline
from ray_jobs.models import spec_for
from tests.running_platform import PROJECT_DIR, PROXIED_UI_API_URL, RETRAIN_PARAMETERS
from tests.security.listening import exposed, listeners, with_descendants

DEPLOYMENTS = ["retrain", "prepare-data", "prepare-tabular", "train", "promote", "rollback", "batch-inference", "tune"]


def test_up_prints_the_urls_and_deploys_every_flow(platform):
    assert platform.prefect_url in platform.up_output and platform.mlflow_url in platform.up_output
    for name in DEPLOYMENTS:
        deployment = platform.deployment(name, name)
        assert deployment["work_pool_name"] == "skytrain-local"
    retrain = platform.deployment("retrain", "retrain")
    limit = retrain["global_concurrency_limit"]  # how Prefect 3 keeps a deployment's concurrency_limit
    assert limit["limit"] == 1 and limit["active"]
    (schedule,) = retrain["schedules"]
    assert schedule["active"] and schedule["schedule"] == {"cron": "0 3 * * *", "timezone": "UTC", "day_or": True}


def test_up_twice_is_safe_and_status_says_what_runs(platform):
    before = platform.pids()
    assert set(before) == {"prefect", "mlflow", "worker"}
    again = platform.command("up")
    assert "prefect: already running" in again and "mlflow: already running" in again
    assert "worker: already running" in again and "deployments: up to date" in again
    assert platform.pids() == before
    status = platform.command("status")
    for name, pid in before.items():
        (line,) = [line for line in status.splitlines() if line.startswith(name)]
        assert "running" in line and f"pid {pid}" in line and cmdline(pid) is not None
    assert "postgres  stopped" in status


def test_the_schedule_creates_future_runs_at_three_utc(platform):
    retrain = platform.deployment("retrain", "retrain")
    assert platform.scheduled_runs(retrain["id"]) == []  # the test platforms run no scheduler service
    runs = platform.schedule_runs(retrain["id"], 3)
    try:
        assert len(runs) == 3, "the nightly schedule gave no runs"
        starts = sorted(dt.datetime.fromisoformat(run["expected_start_time"]).astimezone(dt.UTC) for run in runs)
        for start in starts:
            assert (start.hour, start.minute) == (3, 0) and start > dt.datetime.now(dt.UTC)
        assert [b - a for a, b in zip(starts, starts[1:])] == [dt.timedelta(days=1)] * 2  # nightly
        assert all(run["work_pool_name"] == "skytrain-local" for run in runs)
    finally:  # none of them may start while the session runs
        for run in runs:
            platform.delete_run(run["id"])


def test_a_bad_parameter_is_refused_before_a_run_exists(platform):
    response = platform.create_run("retrain", "retrain", {**RETRAIN_PARAMETERS, "epochs": 0})
    assert response.status_code in (409, 422)
    assert "epochs" in response.text


def test_retrain_triggered_through_the_api_runs_on_the_worker(platform, finished_retrain):
    assert finished_retrain["state"]["type"] == "COMPLETED", finished_retrain["state"]
    assert finished_retrain["parameters"]["epochs"] == RETRAIN_PARAMETERS["epochs"]
    assert finished_retrain["work_pool_name"] == "skytrain-local"
    keys = {artifact["key"] for artifact in platform.artifacts(finished_retrain["id"])}
    assert "retrain-summary" in keys
    # It reported to the platform's MLflow server: a version of the model, with the champion alias.
    client = mlflow.MlflowClient(tracking_uri=platform.mlflow_url)
    champion = client.get_model_version_by_alias(spec_for("diamonds-regressor").registered_name, "champion")
    history = client.get_metric_history(champion.run_id, "val_loss")
    assert len(history) == RETRAIN_PARAMETERS["epochs"]


def test_flows_started_from_the_checkout_report_to_the_servers(platform):
    probe = "import flows, os; print(os.environ.get('PREFECT_API_URL'), os.environ.get('SKYTRAIN_MLFLOW_TRACKING_URI'))"
    env = {k: v for k, v in platform.env.items() if k not in {"PREFECT_API_URL", "SKYTRAIN_MLFLOW_TRACKING_URI"}}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert out.stdout.split() == [f"{platform.prefect_url}/api", platform.mlflow_url], out.stderr


@pytest.mark.parametrize("which", ["platform", "postgres_platform"])
def test_every_server_up_starts_listens_on_loopback_only(which, platform, request):
    """Read from the sockets the recorded processes and their children hold, not from their settings."""
    running = request.getfixturevalue(which)  # taking ``platform`` keeps it with conftest's platform tests
    pids = running.pids()
    found = listeners(with_descendants(pids.values()))
    ports = {int(running.env[f"SKYTRAIN_{name.upper()}_PORT"]) for name in pids if name != "worker"}
    assert ports <= {listener.port for listener in found}, f"not every server listens on its port: {found}"
    assert not exposed(found), "make up's servers listen beyond loopback:\n" + "\n".join(exposed(found))


def test_postgres_platform_keeps_both_servers_in_postgresql_and_down_stops_exactly_it(platform, postgres_platform):
    import psycopg2

    pg = postgres_platform
    try:
        pids = pg.pids()
        assert set(pids) == {"postgres", "prefect", "mlflow", "worker"}
        # An exported PREFECT_UI_API_URL (a reverse proxy's address) reaches the UI; without one the UI
        # calls the address the server binds.
        assert httpx.get(f"{pg.prefect_url}/ui-settings").json()["api_url"] == PROXIED_UI_API_URL
        assert httpx.get(f"{platform.prefect_url}/ui-settings").json()["api_url"] == f"{platform.prefect_url}/api"
        experiment = mlflow.MlflowClient(tracking_uri=pg.mlflow_url).create_experiment("kept-in-postgres")
        url = f"postgresql://skytrain@127.0.0.1:{pg.env['SKYTRAIN_POSTGRES_PORT']}"
        with psycopg2.connect(f"{url}/prefect") as conn, conn.cursor() as cursor:
            cursor.execute("SELECT name FROM deployment")
            assert {row[0] for row in cursor.fetchall()} == set(DEPLOYMENTS)
        with psycopg2.connect(f"{url}/mlflow") as conn, conn.cursor() as cursor:
            cursor.execute("SELECT experiment_id FROM experiments WHERE name = 'kept-in-postgres'")
            assert [str(row[0]) for row in cursor.fetchall()] == [experiment]
    finally:
        stopped = pg.stop()
    assert all(f"{name}: stopped (pid {pid})" in stopped for name, pid in pids.items()), stopped
    assert all(cmdline(pid) is None for pid in pids.values())
    assert "running" not in pg.command("status")
    assert not (pg.state_dir / "platform" / "env").exists()
    # The other platform, not started by this one's `up`, still runs.
    assert all(cmdline(pid) is not None for pid in platform.pids().values())
