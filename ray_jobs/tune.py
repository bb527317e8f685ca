"""Hyperparameter search with Ray Tune: ASHA over learning rate, batch size and width.

Every trial is a Tune function trainable that runs the same Ray Train training as ``train.py``
(``make_trainer``), reporting each epoch to Tune through ``TuneReportCallback`` so ASHA can stop
the trials that trail. One MLflow parent run holds the search (space, scheduler, the trials'
table, the best configuration); each trial is a child run with the usual per-epoch record. The
best configuration is a tag of the parent (``skytrain.tune.best_hparams``), which ``retrain
(tuned=True)`` reads back (``tracking.tuned_hparams``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from ray_jobs import storage, tracking
from ray_jobs.models import ModelSpec, spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import (
    cpus_per_worker,
    make_trainer,
    on_cluster,
    open_version,
    resolve_hparams,
    threads_per_worker,
)

logger = logging.getLogger(__name__)

# A trial's own process only drives its Ray Train run: no CPU, but Tune needs a non-empty bundle.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2}
TRIAL_ACTOR_CLASS = "ImplicitFunc"  # the actor Tune runs a function trainable's trials in
TRIAL_EXIT_TIMEOUT_S = 30.0
STOPPED = "stopped by ASHA"  # a trial's status in the search's rows (``_trial_rows``)


def width_name(spec: ModelSpec) -> str:
    return "width" if "width" in spec.defaults else "hidden"


def search_space(spec: ModelSpec, hparams: dict[str, Any]) -> dict[str, Any]:
    """Around the model's (or the given) values: lr ÷4…×4 log-uniform, batch size and width ×½, ×1, ×2."""
    width = width_name(spec)

    def around(value: int):
        return tune.choice(sorted({max(1, value // 2), value, value * 2}))

    return {
        "lr": tune.loguniform(hparams["lr"] / 4, hparams["lr"] * 4),
        "batch_size": around(hparams["batch_size"]),
        width: around(hparams[width]),
    }


class FinishingASHA(ASHAScheduler):
    """ASHA that never stops a trial once it has reached ``max_t``.

    Ray's ASHA keeps a rung at ``max_t`` and, even with ``stop_last_trials=False``, stops a trial
    that trails there: its training is done, but Tune kills its process before the Ray Train run
    returns, so its MLflow run never finishes and its model is never logged. A trial at ``max_t``
    ends by itself right after its last report; stopping it saves nothing.
    """

    def __init__(self, *, max_t: int, grace_period: int = 1, reduction_factor: float = 2) -> None:
        super().__init__(
            max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor, stop_last_trials=False
        )

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: an MLflow child run and a Ray Train run with the sampled hyperparameters."""
    settings: Settings = context["settings"]
    spec = spec_for(context["model"])
    hp = {**context["hparams"], **config}
    trial_id = tune.get_context().get_trial_id()
    run_name = f"{context['name']}-{trial_id}"
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run(
        experiment_id=context["experiment_id"],
        run_name=run_name,
        parent_run_id=context["parent_run_id"],
        tags={"skytrain.kind": "tune-trial", "skytrain.tune.trial_id": trial_id},
    ) as run:
        runtime = {
            "cpus_per_worker": context["cpus_per_worker"],
            "threads_per_worker": context["threads_per_worker"],
            "tune_trial": trial_id,
        }
        tracking.log_training_inputs(
            spec,
            context["manifest"],
            context["dataset_dir"],
            hp,
            context["num_workers"],
            context["use_gpu"],
            context["seed"],
            runtime,
        )
        make_trainer(
            spec,
            context["manifest"],
            context["dataset_dir"],
            hp,
            num_workers=context["num_workers"],
            use_gpu=context["use_gpu"],
            cpus_per_worker=context["cpus_per_worker"],
            threads_per_worker=context["threads_per_worker"],
            seed=context["seed"],
            run_id=run.info.run_id,
            run_name=run_name,
            compile_model=False,
            settings=settings,
            callbacks=[TuneReportCallback()],
        ).fit()


def run_search(
    model: str,
    dataset_dir: str | Path,
    *,
    num_samples: int = 4,
    max_epochs: int | None = None,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    seed: int = 42,
    hparams: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Search ``num_samples`` configurations with ASHA (each up to ``max_epochs``); needs a connected Ray.

    Returns the parent run id, the best hyperparameters and one row per trial.
    """
    settings = settings or Settings()
    spec = spec_for(model)
    dataset_dir, manifest = open_version(spec, dataset_dir)
    if num_samples < 1 or num_workers < 1:
        raise ValueError(f"num_samples and num_workers must be >= 1, got {num_samples} and {num_workers}")
    base = resolve_hparams(spec, hparams, max_epochs)
    if spec.key == "diamonds-regressor" and base.get("arch") == "linear":
        raise ValueError("the linear regressor has no width to search: tune arch 'mlp'")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= num_workers
    cpus = ray.cluster_resources().get("CPU", 1)
    # Concurrent trials: all of them where an autoscaler adds nodes, else a core per worker.
    concurrency = num_samples if on_cluster(settings) else max(1, min(num_samples, int(cpus) // num_workers))
    worker_cpus = cpus_per_worker(concurrency * num_workers, use_gpu, settings)
    metric, mode = f"val_{spec.metric}", "max" if spec.higher_is_better else "min"
    name = f"tune-{model}-{manifest['version']}-{time.strftime('%Y%m%d-%H%M%S')}"
    space = search_space(spec, base)

    experiment_id = tracking.ensure_experiment(settings)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        tags={"skytrain.kind": "tune", "skytrain.model": spec.key, "skytrain.dataset_version": manifest["version"]},
    ) as parent:
        mlflow.log_params(
            {
                "model": spec.key,
                "dataset_version": manifest["version"],
                "num_samples": num_samples,
                "max_epochs": base["epochs"],
                "num_workers": num_workers,
                "concurrent_trials": concurrency,
                "scheduler": "ASHA(grace_period=1, reduction_factor=2)",
                "search_space": json.dumps({k: repr(v) for k, v in space.items()}),
                "seed": seed,
            }
        )
        context = {
            "settings": settings,
            "model": spec.key,
            "manifest": manifest,
            "dataset_dir": dataset_dir,
            "hparams": base,
            "num_workers": num_workers,
            "use_gpu": use_gpu,
            "cpus_per_worker": worker_cpus,
            "threads_per_worker": threads_per_worker(spec, worker_cpus),
            "seed": seed,
            "name": name,
            "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id,
        }
        storage_path, storage_filesystem = storage.ray_storage(settings.ray_storage_path)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, context=context), TRIAL_DRIVER_RESOURCES),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=num_samples,
                max_concurrent_trials=concurrency,
                search_alg=BasicVariantGenerator(random_state=seed),
                scheduler=FinishingASHA(max_t=base["epochs"], grace_period=1, reduction_factor=2),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0
            ),
        )
        grid = tuner.fit()
        trials = _trial_rows(grid, metric, base["epochs"])
        _wait_for_trial_processes()
        _close_stopped_children(experiment_id, parent.info.run_id, trials)
        finished = [r for r in grid if r.error is None and metric in (r.metrics or {})]
        if not finished:
            errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error) or "no trial reported"
            raise RuntimeError(f"every trial of {name} failed: {errors}")
        best = grid.get_best_result(metric=metric, mode=mode, filter_nan_and_inf=True)
        best_hparams = {k: best.config[k] for k in space}
        mlflow.log_metric(f"best_{metric}", best.metrics[metric])
        mlflow.log_dict({"best_hparams": best_hparams, "trials": trials}, "tune/trials.json")
        mlflow.set_tags(
            {
                "skytrain.tune.best_hparams": json.dumps(best_hparams),
                "skytrain.tune.best_trial": best.metrics.get("trial_id", ""),
            }
        )
    return {
        "model": spec.key,
        "run_id": parent.info.run_id,
        "run_name": name,
        "dataset_version": manifest["version"],
        "metric": metric,
        "best_value": best.metrics[metric],
        "best_hparams": best_hparams,
        "trials": trials,
    }


def _trial_rows(grid, metric: str, max_epochs: int) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        epochs = int(metrics.get("training_iteration", 0))
        status = "error" if result.error else ("completed" if epochs >= max_epochs else STOPPED)
        rows.append(
            {
                "trial": metrics.get("trial_id", ""),
                **result.config,
                "epochs": epochs,
                metric: metrics.get(metric),
                "status": status,
            }
        )
    return rows


def _wait_for_trial_processes(timeout_s: float = TRIAL_EXIT_TIMEOUT_S) -> None:
    """Until this job's trial actors have exited, at most ``timeout_s``.

    ``tuner.fit()`` returns once Tune has asked the trials ASHA stopped to stop, not once they have
    stopped: such a trial's training goes on in its process until Tune ends it, and its
    ``mlflow.start_run`` block can still end its run (FAILED, or FINISHED when its last epochs were
    short: both seen in CI). A process that has exited writes nothing more, so the status
    ``_close_stopped_children`` sets after this wait is the last.
    """
    from ray.util.state import list_actors

    context = ray.get_runtime_context()  # this Ray's address: several may run on one machine
    filters = [("class_name", "=", TRIAL_ACTOR_CLASS), ("job_id", "=", context.get_job_id()), ("state", "=", "ALIVE")]
    deadline = time.monotonic() + timeout_s
    while alive := list_actors(address=context.gcs_address, filters=filters, limit=1000):
        if time.monotonic() > deadline:
            logger.warning("%d trial processes still running %.0f s after the search ended", len(alive), timeout_s)
            return
        time.sleep(0.2)


def _close_stopped_children(experiment_id: str, parent_run_id: str, trials: list[dict[str, Any]]) -> None:
    """The runs of the trials ASHA stopped (``trials``: ``_trial_rows``) end KILLED, tagged
    ``skytrain.tune.stopped_early``, whatever their process left: RUNNING (killed mid-epoch), FAILED
    (failed as Tune stopped it) or FINISHED (it ran its last epochs before Tune ended it). The
    search counted none of the epochs after the stop.
    """
    stopped = {row["trial"] for row in trials if row["status"] == STOPPED}
    client = mlflow.MlflowClient()
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        if run.data.tags.get("skytrain.tune.trial_id") in stopped:
            client.set_tag(run.info.run_id, "skytrain.tune.stopped_early", "true")
            client.set_terminated(run.info.run_id, "KILLED")
