"""MLflow: the experiment, the training run's inputs and results, and model registration."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.models import infer_signature

from ray_jobs import onnx_model
from ray_jobs.models import ModelSpec
from ray_jobs.settings import Settings

# Explicit requirements: MLflow's own inference imports every module in sight (~15x slower).
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server did not answer: a ``ConnectionError``, so the flows retry it (transient)."""


def require_server(tracking_uri: str, timeout: float = 10.0) -> None:
    """For an ``http(s)://`` tracking URI: the server answers, else ``TrackingUnavailable`` naming it.

    One request to ``/health`` without MLflow's own client retries (seven, over about four minutes):
    a caller that retries (a Prefect task) sees each failure at once and says so. Any answer below
    500 counts as reachable (a server behind a proxy may not route ``/health``); a database or file
    URI has no server to reach.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code < 500:
            return
        reason = f"it answered HTTP {error.code}"
    except urllib.error.URLError as error:
        reason = str(error.reason)
    except OSError as error:  # a timeout, a connection reset mid-answer
        reason = str(error) or type(error).__name__
    raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} is unreachable: {reason}")


def ensure_experiment(settings: Settings) -> str:
    """Point MLflow at the configured store and return the experiment id, creating it if needed."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=settings.mlflow_artifact_root)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(settings.mlflow_experiment).experiment_id


def unfinished_run_id(experiment_id: str, run_name: str) -> str | None:
    """The run of that name that never finished (crashed or killed), if any; a finished one is final."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        output_format="list",
    )
    if any(run.info.status == "FINISHED" for run in runs):
        raise ValueError(f"a training named '{run_name}' already finished: choose another run name")
    return runs[0].info.run_id if runs else None


def tuned_hparams(model: str, settings: Settings) -> tuple[dict, str] | None:
    """The best hyperparameters of the newest finished search for ``model``, and that search's run id."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.`skytrain.kind` = 'tune' and tags.`skytrain.model` = '{model}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs or "skytrain.tune.best_hparams" not in runs[0].data.tags:
        return None
    return json.loads(runs[0].data.tags["skytrain.tune.best_hparams"]), runs[0].info.run_id


def git_commit() -> str:
    """The code version: the repo's HEAD, or SKYTRAIN_GIT_COMMIT where there is no .git (a cluster)."""
    if commit := os.environ.get("SKYTRAIN_GIT_COMMIT"):
        return commit
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_training_inputs(
    spec: ModelSpec,
    manifest: dict,
    dataset_dir: str,
    hparams: dict,
    num_workers: int,
    use_gpu: bool,
    seed: int,
    runtime: dict | None = None,
) -> None:
    """Hyperparameters, run settings (``runtime``: how it ran), dataset and code version of a run."""
    commit = git_commit()
    device = "cuda" if use_gpu else "cpu"
    mlflow.log_params(
        {**hparams, "model": spec.key, "num_workers": num_workers, "use_gpu": use_gpu, "device": device, "seed": seed}
    )
    if runtime:
        mlflow.log_params(runtime)
    mlflow.log_params({"dataset": manifest["dataset"], "dataset_version": manifest["version"]})
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": commit,
            "skytrain.git_commit": commit,
            "skytrain.model": spec.key,
            "skytrain.dataset": manifest["dataset"],
            "skytrain.dataset_version": manifest["version"],
            "skytrain.dataset_path": dataset_dir,
            # The raw data the version was made from (a file, an IDX folder, an s3:// URI).
            "skytrain.dataset_source": manifest.get("source", {}).get("path", ""),
        }
    )
    with warnings.catch_warnings():  # MLflow registers its local source class twice and warns about it
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(dataset_dir)
    dataset = MetaDataset(
        source=source,
        name=f"{manifest['dataset']}-{manifest['version']}",
        digest=manifest["version"],
    )
    mlflow.log_input(dataset, context="training")


class RunLogger:
    """Per-epoch metrics into an existing run, from rank 0 of the Ray Train worker group."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client, self.run_id = mlflow.MlflowClient(tracking_uri), run_id

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        )


def log_results(
    spec: ModelSpec, test_metrics: dict, features: np.ndarray, target: np.ndarray, output: np.ndarray, best_epoch: int
) -> None:
    """Test metrics and the plots a reviewer looks at first."""
    from ray_jobs import plots  # matplotlib (~1 s to import) only where plots are drawn: not in Ray Train's workers

    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    mlflow.log_metrics({**test_metrics, "best_epoch": best_epoch})
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in ("train_loss", "val_loss", f"val_{spec.metric}")
    }
    mlflow.log_figure(plots.learning_curves(history), "plots/learning_curves.png")
    if spec.task == "classification":
        predicted = output.argmax(axis=1)
        mlflow.log_figure(plots.confusion_matrix(target, predicted, output.shape[1]), "plots/confusion_matrix.png")
        mlflow.log_figure(plots.misclassified_digits(features, target, predicted), "plots/misclassified.png")
    else:
        prediction = output.reshape(-1)
        label = "log price"
        mlflow.log_figure(plots.predicted_vs_actual(target, prediction, label), "plots/predicted_vs_actual.png")
        mlflow.log_figure(plots.residuals(target, prediction, label), "plots/residuals.png")


def registered_version(client: mlflow.MlflowClient, name: str, run_id: str) -> str | None:
    """The version of ``name`` that run ``run_id`` registered (READY), if any."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    ready = sorted(int(v.version) for v in found if v.status == "READY")
    return str(ready[0]) if ready else None


def log_and_register(
    model: torch.nn.Module,
    spec: ModelSpec,
    example: np.ndarray,
    manifest: dict,
    hparams: dict,
    run_id: str,
    check_rows: np.ndarray | None = None,
) -> str:
    """Log the model with signature and input example, register it, tag the version with its lineage.

    Its ONNX export is made and checked against PyTorch on ``check_rows`` (default: ``example``)
    first: an export that fails or disagrees stops here, before anything is registered.

    Idempotent on ``run_id``: a run registers one version. A resumed run whose first attempt died
    after registering (before or while tagging) completes that version's tags instead of
    registering a second one.
    """
    model.eval()
    onnx_check = onnx_model.export_and_log(model, example, example if check_rows is None else check_rows)
    client = mlflow.MlflowClient()
    if (version := registered_version(client, spec.registered_name, run_id)) is None:
        with torch.no_grad():
            example_output = model(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, example_output),
            input_example=example,
            registered_model_name=spec.registered_name,
            pip_requirements=PIP_REQUIREMENTS,
            # torch.export's archive: a graph and tensors, loadable without unpickling code (ray_jobs/__init__.py).
            # MLflow's default too, except on a Databricks tracking URI, where it pickles the whole module.
            serialization_format="pt2",
        )
        version = str(info.registered_model_version)
    lineage = {
        "skytrain.model": spec.key,
        "skytrain.run_id": run_id,
        "skytrain.dataset": manifest["dataset"],
        "skytrain.dataset_version": manifest["version"],
        "skytrain.git_commit": git_commit(),
        "skytrain.architecture": ", ".join(f"{k}={hparams[k]}" for k in spec.architecture),
        **onnx_model.version_tags(onnx_check),
    }
    for key, value in lineage.items():
        client.set_model_version_tag(spec.registered_name, version, key, value)
    return version
