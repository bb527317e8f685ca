"""How training ends when things go wrong: a worker killed mid-training is replaced and the run
resumes from its last checkpoint (it does not start over); a run that stops improving stops early."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import mlflow
import psutil

from flows.datasets import diamonds
from flows.datasets.store import write_version
from ray_jobs.settings import Settings
from ray_jobs.train import run_training

EPOCHS = 6


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


def _prepare_diamonds(settings: Settings):
    path = settings.diamonds_path()
    frame = diamonds.read_csv(path)
    tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)
    return write_version(settings.data_store, "diamonds", "fault-test", tables, manifest)


def test_killed_worker_is_replaced_and_training_resumes(local_ray, state_dir):
    settings = Settings()
    dataset_dir = _prepare_diamonds(settings)
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
    dataset_dir = _prepare_diamonds(settings)
    result = run_training(
        "diamonds-regressor", dataset_dir, epochs=8, num_workers=1, hparams={"lr": 3.0, "patience": 1}
    )
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    stopped = client.get_metric_history(result["run_id"], "early_stopped_at_epoch")
    assert len(stopped) == 1 and stopped[0].value < 8
    epochs = sorted(m.step for m in client.get_metric_history(result["run_id"], "val_rmse"))
    assert epochs == list(range(1, int(stopped[0].value) + 1))
