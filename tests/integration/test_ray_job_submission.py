"""Training through the Ray Jobs API on a real Ray head started by this test on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from prefect.settings import PREFECT_API_URL
from ray.job_submission import JobStatus, JobSubmissionClient

from flows.data_prep import prepare_diamonds
from flows.ray_job import PROJECT_ROOT
from flows.train import train
from ray_jobs.settings import Settings
from tests.servers import free_ports, wait_for_http

RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` with explicit ports and its own temp dir; stopped by its own PIDs."""
    gcs, dashboard, client, node_manager, object_manager, agent_grpc, agent_http, metrics, env_agent = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
        "--object-manager-port", str(object_manager), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--dashboard-agent-listen-port", str(agent_http), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(env_agent), "--temp-dir", temp_dir,
    ]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    # Like a cluster node set up with the project's pins: its `python` is this environment's.
    env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_http(f"{address}/api/version", head, "Ray head", timeout=120, poll=1)
        yield address
    finally:
        _stop([psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)])
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(processes: list[psutil.Process]) -> None:
    """SIGTERM the head and every process under it (all started here), SIGKILL what lingers."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=15)


def test_train_flow_submits_a_ray_job_and_finds_its_run(prefect_api, state_dir, ray_head):
    dataset = prepare_diamonds(limit_rows=3000)
    result = train(
        model="diamonds-regressor",
        dataset_version=dataset["version"],
        epochs=2,
        num_workers=1,
        jobs_address=ray_head,
    )
    client = mlflow.MlflowClient(Settings().mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["num_workers"] == "1" and run.data.params["dataset_version"] == dataset["version"]
    assert len(run.data.tags["skytrain.git_commit"]) >= 7
    version = client.get_model_version("skytrain-diamonds-regressor", result["version"])
    assert version.run_id == result["run_id"]


def _job_ids(address: str) -> set[str]:
    return {job.submission_id for job in JobSubmissionClient(address).list_jobs()}


def test_interrupting_the_flow_stops_its_job(prefect_api, state_dir, ray_head):
    """A Prefect worker cancels a flow run by terminating its process: the Ray job must stop too."""
    dataset = prepare_diamonds(limit_rows=3000)
    before = _job_ids(ray_head)
    script = (
        "from flows.train import train; "
        f"train(model='diamonds-regressor', dataset_version='{dataset['version']}', epochs=10000, "
        f"num_workers=1, jobs_address='{ray_head}')"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    flow_process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT)
    client = JobSubmissionClient(ray_head)
    try:
        deadline = time.monotonic() + 180
        job_id = None
        # Its driver running on the cluster is enough: what is checked is that the job is stopped.
        while job_id is None or client.get_job_status(job_id) != JobStatus.RUNNING:
            assert time.monotonic() < deadline, "the flow's job never started running"
            assert flow_process.poll() is None, "the flow ended before it was interrupted"
            job_id = next(iter(_job_ids(ray_head) - before), None)
            time.sleep(1)
        flow_process.send_signal(signal.SIGTERM)
        assert flow_process.wait(timeout=120) != 0
    finally:
        if flow_process.poll() is None:
            flow_process.kill()
    deadline = time.monotonic() + 60
    while (status := client.get_job_status(job_id)) != JobStatus.STOPPED:
        assert not status.is_terminal(), f"job ended {status} instead of being stopped"
        assert time.monotonic() < deadline, f"job still {status} a minute after its flow was interrupted"
        time.sleep(1)


def test_a_failing_job_fails_the_flow(prefect_api, state_dir, ray_head):
    dataset = prepare_diamonds(limit_rows=3000)
    # arch "forest" fails inside the job; parameter validation would refuse it before the job starts.
    with pytest.raises(RuntimeError, match="ended FAILED"):
        train.with_options(validate_parameters=False)(
            model="diamonds-regressor",
            dataset_version=dataset["version"],
            epochs=1,
            num_workers=1,
            hparams={"arch": "forest"},
            jobs_address=ray_head,
        )
