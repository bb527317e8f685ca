"""The ``train`` flow: one model on one dataset version, on Ray Train, logged and registered."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from flows.datasets.store import existing_version, latest_version
from flows.operations import io_task
from flows.parameters import (
    Epochs,
    ModelHyperparameters,
    ModelName,
    NumWorkers,
    RayAddress,
    Seed,
    UseGpu,
    described,
    overrides_of,
)
from flows.ray_job import run_training_job, training_entrypoint
from ray_jobs import tracking
from ray_jobs.cluster import ray_session
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import resolve_hparams, run_training

TRACKING_CHECK_SECONDS = 30  # one /health request (10 s timeout), with room to spare


@io_task("reach-mlflow", timeout_seconds=TRACKING_CHECK_SECONDS)
def reach_tracking_server(tracking_uri: str) -> None:
    """The MLflow tracking server answers before a training or a cluster job starts.

    An unreachable server (restarting, not up yet) fails this task at once with a one-line
    ``TrackingUnavailable`` naming the URI, and Prefect retries it (transient, ``flows/operations.py``).
    Without it the training's first MLflow call would wait out MLflow's own client retries (about
    four minutes) and then fail the flow, unretried. Registration cannot happen twice on a rerun:
    ``tracking.log_and_register`` is idempotent on the run.
    """
    tracking.require_server(tracking_uri)


ModelToTrain = Annotated[ModelName, Field(description="The model to train.")]
DatasetVersion = Annotated[
    str | None,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Dataset version id (a folder under the data store); empty: the latest version.",
    ),
]
JobsAddress = Annotated[
    str | None,
    Field(
        description="Ray Jobs API of a cluster (http://HEAD:8265): train there as a Ray job; "
        "empty: SKYTRAIN_RAY_JOBS_ADDRESS, else in this process."
    ),
]
RunName = Annotated[
    str | None,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=200,
        description="MLflow run and Ray Train folder name; reusing the name of a crashed training resumes it.",
    ),
]
CompileModel = Annotated[
    bool | None,
    Field(description="Train a torch.compile-d model (pays off on GPUs); empty: SKYTRAIN_TORCH_COMPILE."),
]


@flow(name="train", log_prints=True)
@described
def train(
    model: ModelToTrain = "mnist-cnn",
    dataset_version: DatasetVersion = None,
    epochs: Epochs = None,
    num_workers: NumWorkers = 2,
    use_gpu: UseGpu = None,
    seed: Seed = 42,
    hparams: ModelHyperparameters = None,
    jobs_address: JobsAddress = None,
    run_name: RunName = None,
    compile_model: CompileModel = None,
    ray_address: RayAddress = None,
) -> dict:
    """Train ``model`` with Ray Train on a dataset version (default: the latest one).

    ``epochs`` overrides the model's default; ``use_gpu`` defaults to "when the cluster has GPUs";
    ``hparams`` overrides other defaults (CNN: lr, batch_size per worker, weight_decay, width, depth;
    regressor: lr, batch_size, weight_decay, arch ``mlp`` or ``linear``, hidden; both: patience);
    ``run_name`` names the MLflow run and Ray Train's folder: rerunning a crashed training under the
    same name resumes it from its last checkpoint. ``compile_model`` trains a ``torch.compile``-d
    model (default ``SKYTRAIN_TORCH_COMPILE``, off): worth it on GPUs, not for short CPU runs.

    Before anything starts, the MLflow tracking server must answer (task ``reach-mlflow``, retried
    with backoff while it does not).

    Where it runs: with ``jobs_address`` (default ``SKYTRAIN_RAY_JOBS_ADDRESS``), the Ray Jobs API
    of a cluster (its dashboard, ``http://<head>:8265``) runs it as a job; otherwise in this
    process on the Ray at ``ray_address`` (default ``SKYTRAIN_RAY_ADDRESS``), or on a local Ray it starts.
    """
    settings, logger = Settings(), get_run_logger()
    spec = spec_for(model)
    hparams = overrides_of(hparams)
    version = dataset_version or latest_version(settings.data_store, spec.dataset)
    dataset_dir = existing_version(settings.data_store, spec.dataset, version)
    if dataset_dir is None:
        raise FileNotFoundError(f"dataset '{spec.dataset}' has no version '{version}' in {settings.data_store}")
    resolve_hparams(spec, hparams, epochs)  # refuse bad values here, before a cluster is involved
    reach_tracking_server(settings.mlflow_tracking_uri)
    jobs_address = jobs_address or settings.ray_jobs_address
    if jobs_address:
        entrypoint = training_entrypoint(
            model,
            str(dataset_dir),
            epochs,
            num_workers,
            use_gpu,
            seed,
            hparams,
            run_name=run_name,
            compile_model=compile_model,
        )
        result = run_training_job(jobs_address, entrypoint, settings, logger)
    else:
        with ray_session(ray_address or settings.ray_address):
            result = run_training(
                model,
                dataset_dir,
                epochs=epochs,
                num_workers=num_workers,
                use_gpu=use_gpu,
                seed=seed,
                hparams=hparams,
                run_name=run_name,
                compile_model=compile_model,
                settings=settings,
            )
    logger.info(
        "%s: run %s registered as %s version %s; test %s",
        model,
        result["run_id"],
        result["registered_model"],
        result["version"],
        result["metrics"],
    )
    return result


if __name__ == "__main__":
    train()
