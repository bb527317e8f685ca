"""Training on a Ray cluster through the Ray Jobs API.

The project is uploaded as the job's ``working_dir``; skytrain's settings travel as ``runtime_env``
environment variables (the job's driver runs ``python -m ray_jobs.train``); the job's log is
streamed into the Prefect run's log; the job's end state becomes the flow's; a job whose flow
fails or is interrupted is stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from ray_jobs.settings import Settings
from ray_jobs.tracking import git_commit
from ray_jobs.train import RESULT_MARKER

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Large or local-only folders never travel with the job.
EXCLUDES = [".venv", ".skytrain", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
# Credentials and endpoints the job needs, taken from this environment when set (never stored).
PASSTHROUGH = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "SKYTRAIN_S3_ENDPOINT_URL",
    "SKYTRAIN_AZURE_ENDPOINT",
    "SKYTRAIN_AZURE_DFS_ENDPOINT",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def job_environment(settings: Settings) -> dict[str, str]:
    """The settings the job's driver needs, resolved here so both sides agree."""
    env = {
        "SKYTRAIN_DATA_STORE": str(settings.data_store),
        "SKYTRAIN_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SKYTRAIN_MLFLOW_ARTIFACT_ROOT": settings.mlflow_artifact_root,
        "SKYTRAIN_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
        "SKYTRAIN_RAY_STORAGE_PATH": settings.ray_storage_path,
        "SKYTRAIN_RAY_LOG_LEVEL": settings.ray_log_level,
        "SKYTRAIN_RESIDENT_DATA": settings.resident_data,
        "SKYTRAIN_DATA_CPUS": str(settings.data_cpus),
        "SKYTRAIN_TORCH_COMPILE": str(settings.torch_compile).lower(),
        "SKYTRAIN_GIT_COMMIT": git_commit(),  # the uploaded working_dir has no .git
    }
    return env | {name: os.environ[name] for name in PASSTHROUGH if os.environ.get(name)}


def training_entrypoint(
    model: str,
    dataset_dir: str,
    epochs: int | None,
    num_workers: int,
    use_gpu: bool | None,
    seed: int,
    hparams: dict,
    run_name: str | None = None,
    compile_model: bool | None = None,
) -> str:
    args = ["python", "-m", "ray_jobs.train", "--model", model, "--dataset-dir", str(dataset_dir)]
    args += ["--num-workers", str(num_workers), "--seed", str(seed), "--hparams", json.dumps(hparams or {})]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if use_gpu is not None:
        args += ["--use-gpu" if use_gpu else "--no-use-gpu"]
    if run_name:
        args += ["--run-name", run_name]
    if compile_model is not None:
        args += ["--compile" if compile_model else "--no-compile"]
    return shlex.join(args)


def run_training_job(
    address: str, entrypoint: str, settings: Settings, logger: logging.Logger, poll_seconds: float = 2.0
) -> dict[str, Any]:
    """Submit the job, stream its log, and return the training result it printed."""
    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"skytrain-train-{uuid.uuid4().hex[:12]}",
        runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": job_environment(settings)},
    )
    logger.info("submitted Ray job %s to %s: %s", job_id, address, entrypoint)
    streamed = 0
    try:
        while True:
            status = client.get_job_status(job_id)
            log = client.get_job_logs(job_id)
            for line in log[streamed:].splitlines():
                logger.info("[%s] %s", job_id, line)
            streamed = len(log)
            if status.is_terminal():
                break
            time.sleep(poll_seconds)
    except BaseException:  # the flow failed, was cancelled or interrupted: the job must not outlive it
        client.stop_job(job_id)
        logger.warning("stopped Ray job %s", job_id)
        raise
    if status != JobStatus.SUCCEEDED:
        message = client.get_job_info(job_id).message
        raise RuntimeError(f"Ray job {job_id} ended {status.value}: {message}")
    for line in reversed(log.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line.removeprefix(RESULT_MARKER))
    raise RuntimeError(f"Ray job {job_id} succeeded but printed no '{RESULT_MARKER.strip()}' line")
