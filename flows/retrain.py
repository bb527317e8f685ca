"""The ``retrain`` flow: the whole pipeline, what ``make run`` and the nightly schedule run.

data prep (one flow per dataset) → training on Ray Train → promotion gate → smoke inference on
``models:/<name>@champion`` → a summary table (Prefect artifact and log).

Each step runs inside ``flows.operations.step``: a failure ends the run in a Failed state whose
message is one line, ``<step> failed: <error type>: <message>`` (e.g. ``train mnist-cnn failed:
ValueError: ...``), and publishes the ``retrain-failure`` artifact; calling the flow raises
``StepFailed`` with the original error chained. The artifacts of a run are listed in
``flows/reporting.py``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Annotated, Any

import mlflow
import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Failed
from pydantic import Field

from flows import reporting
from flows.data_prep import AllowDrift, prepare_diamonds, prepare_mnist
from flows.operations import StepFailed, io_task, step
from flows.parameters import (
    ALL_MODELS,
    Epochs,
    HyperparametersPerModel,
    LimitRows,
    Margin,
    ModelName,
    Models,
    NumWorkers,
    RayAddress,
    Seed,
    UseGpu,
    described,
    overrides_by_model,
)
from flows.promote import promote
from flows.registry import CHAMPION
from flows.train import train
from ray_jobs import tracking
from ray_jobs.cluster import ray_session
from ray_jobs.dataset import load_split
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import resolve_hparams, worker_resources

PREPARE = {"mnist": prepare_mnist, "diamonds": prepare_diamonds}
DEFAULT_MODELS: list[ModelName] = ALL_MODELS
SMOKE_TIMEOUT_SECONDS = 600
LOGGER = logging.getLogger(__name__)

Tuned = Annotated[
    bool,
    Field(description="Start each model from the best configuration of its latest tune search (hparams override it)."),
]


@io_task("smoke-inference", timeout_seconds=SMOKE_TIMEOUT_SECONDS)
def smoke_inference(model: ModelName, dataset_dir: str, rows: int = 5) -> dict:
    """Load the champion as inference will and predict a few test rows."""
    spec = spec_for(model)
    champion = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}@{CHAMPION}")
    features, target = load_split(dataset_dir, "test")
    output = np.asarray(champion.predict(features[:rows]))
    predicted = output.argmax(axis=1) if spec.task == "classification" else output.reshape(-1)
    return {"predicted": predicted.tolist(), "expected": target[:rows].tolist()}


def starting_hparams(
    models: list[ModelName], hparams: dict | None, tuned: bool, settings: Settings, logger=LOGGER
) -> dict[ModelName, dict[str, Any]]:
    """Each model's hyperparameter overrides: its latest search's best (``tuned``), then ``hparams``."""
    chosen = {m: dict((hparams or {}).get(m) or {}) for m in models}
    for m in models if tuned else ():
        found = tracking.tuned_hparams(m, settings)
        if found is None:
            raise ValueError(f"tuned=True but '{m}' has no finished tune search in MLflow: run the tune flow first")
        chosen[m] = {**found[0], **chosen[m]}
        logger.info("%s: hyperparameters %s from tune search run %s", m, found[0], found[1])
    return chosen


@flow(name="retrain", log_prints=True)
@described
def retrain(
    models: Models = DEFAULT_MODELS,
    epochs: Epochs = None,
    num_workers: NumWorkers = 2,
    use_gpu: UseGpu = None,
    margin: Margin = None,
    seed: Seed = 42,
    limit_rows: LimitRows = None,
    hparams: HyperparametersPerModel = None,
    tuned: Tuned = False,
    ray_address: RayAddress = None,
    allow_drift: AllowDrift = False,
) -> list[dict]:
    """Prepare data, train, gate and smoke-test each model; returns one summary row per model.

    A failed step ends the run Failed with the one-line message ``<step> failed: <error>``.
    """
    settings, logger = Settings(), get_run_logger()
    try:
        return _pipeline(
            models,
            epochs,
            num_workers,
            use_gpu,
            margin,
            seed,
            limit_rows,
            hparams,
            tuned,
            ray_address,
            allow_drift,
            settings,
        )
    except StepFailed as failure:
        error = failure.error
        logger.error("%s", failure, exc_info=(type(error), error, error.__traceback__))
        try:
            reporting.publish_failure(failure)
        except Exception:  # the failure itself is what the run must report
            logger.warning("could not publish the retrain-failure artifact", exc_info=True)
        # The run's final state message is exactly this line; callers get ``failure`` raised.
        return Failed(message=str(failure), data=failure)


def _pipeline(
    models: list[ModelName],
    epochs: int | None,
    num_workers: int,
    use_gpu: bool | None,
    margin: float | None,
    seed: int,
    limit_rows: int | None,
    hparams: Any,
    tuned: bool,
    ray_address: str | None,
    allow_drift: bool,
    settings: Settings,
) -> list[dict]:
    logger = get_run_logger()
    specs = {m: spec_for(m) for m in dict.fromkeys(models)}
    with step("check hyperparameters"):  # refuse bad hyperparameters before any work starts
        chosen = starting_hparams(list(specs), overrides_by_model(hparams), tuned, settings, logger)
        for m, spec in specs.items():
            resolve_hparams(spec, chosen[m], epochs)

    trained: dict[str, dict] = {}
    with ExitStack() as stack:
        if not settings.ray_jobs_address:  # one Ray connection for all trainings, unless they are Ray jobs
            with step("connect to ray"):
                stack.enter_context(ray_session(ray_address or settings.ray_address))
            with step("check ray resources"):  # a Ray too small for num_workers: refused before data prep
                worker_resources(num_workers, use_gpu, settings)

        datasets: dict[str, dict] = {}
        for spec in specs.values():
            if spec.dataset not in datasets:
                with step(f"prepare {spec.dataset}"):
                    prepare = PREPARE[spec.dataset]
                    datasets[spec.dataset] = prepare(seed=seed, limit_rows=limit_rows, allow_drift=allow_drift)
        with step("publish artifacts"):
            reporting.publish_datasets(datasets)

        for m, spec in specs.items():
            with step(f"train {m}"):
                trained[m] = train(
                    model=m,
                    dataset_version=datasets[spec.dataset]["version"],
                    epochs=epochs,
                    num_workers=num_workers,
                    use_gpu=use_gpu,
                    seed=seed,
                    hparams=chosen[m],
                    ray_address=ray_address,
                )
    with step("publish artifacts"):
        urls = reporting.publish_training(trained, settings)

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    summary, gates = [], {}
    for m, spec in specs.items():
        result, dataset = trained[m], datasets[spec.dataset]
        with step(f"promote {m}"):
            gates[m] = gate = promote(model=m, version=result["version"], margin=margin)
        with step(f"smoke inference {m}"):
            if gate["champion_version"] is None:  # the first version of a model was rejected: nothing serves it
                raise ValueError(f"no champion to serve: version {result['version']} was rejected ({gate['reason']})")
            smoke = smoke_inference(m, dataset["path"])
        logger.info(
            "%s champion v%s on test rows: predicted %s, expected %s",
            m,
            gate["champion_version"],
            smoke["predicted"],
            smoke["expected"],
        )
        summary.append(
            {
                "model": spec.registered_name,
                "dataset_version": f"{dataset['dataset']}/{dataset['version']}"
                + (" (reused)" if dataset["reused"] else ""),
                "run_id": result["run_id"],
                "version": result["version"],
                "test_metrics": ", ".join(f"{k.removeprefix('test_')}={v:.4f}" for k, v in result["metrics"].items()),
                "decision": "promoted" if gate["promote"] else "rejected",
                "champion": gate["champion_version"],
            }
        )
    with step("publish artifacts"):
        reporting.publish_gates(gates, urls)
        create_table_artifact(
            key="retrain-summary", table=summary, description="Retrain: datasets, runs, metrics, gate"
        )
    print(format_table(summary))
    return summary


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the summary, one model per line."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    retrain()
