"""How training ends when things go wrong: a worker killed mid-training is replaced and the run
resumes from its last checkpoint (it does not start over); a crashed training rerun under the same
name continues; a run that stops improving stops early."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import ray

from flows.datasets import diamonds
from flows.datasets.store import write_version
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import run_training

EPOCHS = 4


def _our_train_workers() -> list[psutil.Process]:
    """Ray Train workers of the Ray this test session started (descendants of this process)."""
    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::RayTrainWorker"):
                workers.append(process)
        except psutil.Error:  # exited (or a zombie) since the listing
            continue
    return workers


def _registered_checkpoints(run_dir: Path) -> int:
    """How many checkpoints Ray Train's controller has recorded in its persisted snapshot."""
    try:
        return len(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return 0


def _prepare_diamonds(settings: Settings, rows: int | None = None):
    """A sample of ``rows`` of diamonds (all of it with None)."""
    frame = diamonds.read_csv(settings.diamonds_location())
    if rows is not None:
        frame = frame.sample(rows, random_state=0)
    tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)
    return write_version(settings.data_store, "diamonds", "fault-test", tables, manifest)


def test_killed_worker_is_replaced_and_training_resumes(local_ray, state_dir):
    settings = Settings()
    dataset_dir = _prepare_diamonds(settings, rows=12000)  # the kill comes epochs before the end anyway
    run_name = "fault-test"
    outcome: dict = {}
    trainer = threading.Thread(
        target=lambda: outcome.update(
            result=run_training("diamonds-regressor", dataset_dir, epochs=EPOCHS, run_name=run_name)
        )
    )
    trainer.start()

    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and trainer.is_alive():
        # Kill once the controller has registered a checkpoint (before that, a lost worker's
        # pending report is lost with it and a restart rightly begins at epoch 1).
        workers = _our_train_workers()
        if _registered_checkpoints(state_dir / "ray_results" / run_name) and workers:
            killed = workers[-1]
            killed.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    trainer.join(timeout=300)
    assert killed is not None, "training ended before a checkpoint was registered: nothing was killed"
    assert not killed.is_running()

    result = outcome["result"]
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    resumed = client.get_metric_history(result["run_id"], "resumed_from_epoch")
    assert resumed and all(1 <= m.value < EPOCHS for m in resumed), "the new worker group started over"
    steps = [m.step for m in client.get_metric_history(result["run_id"], "val_rmse")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
    assert run.data.metrics["test_r2"] > 0.9


def test_early_stopping_ends_a_run_that_stopped_improving(local_ray, state_dir):
    """A learning rate far too high makes validation worse; patience 1 stops the run early."""
    settings = Settings()
    dataset_dir = _prepare_diamonds(settings, rows=4000)
    result = run_training(
        "diamonds-regressor", dataset_dir, epochs=8, num_workers=1, hparams={"lr": 3.0, "patience": 1}
    )
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    stopped = client.get_metric_history(result["run_id"], "early_stopped_at_epoch")
    assert len(stopped) == 1 and stopped[0].value < 8
    epochs = sorted(m.step for m in client.get_metric_history(result["run_id"], "val_rmse"))
    assert epochs == list(range(1, int(stopped[0].value) + 1))


CRASHING_DRIVER = """
import sys
import ray
from ray_jobs.train import run_training
ray.init(address=sys.argv[4])
run_training("diamonds-regressor", sys.argv[1], epochs=int(sys.argv[2]), num_workers=1, run_name=sys.argv[3])
"""


def test_rerun_with_the_same_run_name_resumes_a_crashed_training(local_ray, state_dir):
    """The training's driver process is killed (on the session's Ray: its Ray Train controller and
    workers die with it, as they do when a driver's whole machine goes); a rerun continues it."""
    settings = Settings()
    dataset_dir = _prepare_diamonds(settings, rows=12000)  # the kill comes epochs before the end anyway
    run_name = "crashed"
    ray_address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", CRASHING_DRIVER, str(dataset_dir), str(EPOCHS), run_name, ray_address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not _registered_checkpoints(state_dir / "ray_results" / run_name):
            assert driver.poll() is None and time.monotonic() < deadline, "no checkpoint before the driver ended"
            time.sleep(0.2)
    finally:  # crash it: the driver and everything it started, by PID
        tree = [psutil.Process(driver.pid), *psutil.Process(driver.pid).children(recursive=True)]
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(tree, timeout=30)

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment).experiment_id
    [crashed] = client.search_runs([experiment], filter_string=f"attributes.run_name = '{run_name}'")
    assert crashed.info.status == "RUNNING"
    registry = f"name = '{spec_for('diamonds-regressor').registered_name}'"
    assert client.search_model_versions(registry) == [], "the crashed training left a model version"

    result = run_training("diamonds-regressor", dataset_dir, epochs=EPOCHS, num_workers=1, run_name=run_name)
    assert result["run_id"] == crashed.info.run_id
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    resumed = client.get_metric_history(result["run_id"], "resumed_from_epoch")
    assert resumed and all(1 <= m.value < EPOCHS for m in resumed), "the rerun started over"
    with pytest.raises(ValueError, match="already finished"):
        run_training("diamonds-regressor", dataset_dir, epochs=EPOCHS, num_workers=1, run_name=run_name)
    # One version, registered by the resumed run, with its lineage: nothing half-registered is left.
    [version] = client.search_model_versions(registry)
    assert (str(version.version), version.run_id, version.status) == (result["version"], result["run_id"], "READY")
    assert version.tags["skytrain.run_id"] == result["run_id"] and "skytrain.dataset_version" in version.tags
