"""The ``retrain`` flow: the whole pipeline, what ``make run`` and the nightly schedule run.

data prep (one flow per dataset) → training on Ray Train → promotion gate → smoke inference on
``models:/<name>@champion`` → a summary table (Prefect artifact and log).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import mlflow
import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.data_prep import prepare_diamonds, prepare_mnist
from flows.promote import promote
from flows.registry import CHAMPION
from flows.train import ModelName, train
from ray_jobs import tracking
from ray_jobs.cluster import ray_session
from ray_jobs.dataset import load_split
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import resolve_hparams

PREPARE = {"mnist": prepare_mnist, "diamonds": prepare_diamonds}
DEFAULT_MODELS: list[ModelName] = ["mnist-cnn", "diamonds-regressor"]
LOGGER = logging.getLogger(__name__)


@task
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
def retrain(
    models: list[ModelName] = DEFAULT_MODELS,
    epochs: int | None = None,
    num_workers: int = 2,
    use_gpu: bool | None = None,
    margin: float | None = None,
    seed: int = 42,
    limit_rows: int | None = None,
    hparams: dict[ModelName, dict[str, Any]] | None = None,
    tuned: bool = False,
) -> list[dict]:
    """Prepare data, train, gate and smoke-test each model; returns one summary row per model.

    ``epochs`` overrides every model's default; ``limit_rows`` caps each dataset split (quick runs);
    ``hparams`` maps a model to overrides of its other hyperparameters (see the ``train`` flow);
    ``tuned`` starts from the best configuration of the model's latest ``tune`` search (``hparams``
    still override it).
    """
    settings, logger = Settings(), get_run_logger()
    specs = {m: spec_for(m) for m in dict.fromkeys(models)}
    hparams = starting_hparams(list(specs), hparams, tuned, settings, logger)
    for m, spec in specs.items():  # refuse bad hyperparameters before any work starts
        resolve_hparams(spec, hparams[m], epochs)
    datasets = {s.dataset: PREPARE[s.dataset](seed=seed, limit_rows=limit_rows) for s in specs.values()}

    # One Ray connection for all trainings, unless they go to a cluster as Ray jobs.
    with nullcontext() if settings.ray_jobs_address else ray_session(settings.ray_address):
        trained = {
            m: train(
                model=m,
                dataset_version=datasets[spec.dataset]["version"],
                epochs=epochs,
                num_workers=num_workers,
                use_gpu=use_gpu,
                seed=seed,
                hparams=hparams[m],
            )
            for m, spec in specs.items()
        }

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    summary = []
    for m, spec in specs.items():
        result = trained[m]
        gate = promote(model=m, version=result["version"], margin=margin)
        dataset = datasets[spec.dataset]
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
    create_table_artifact(key="retrain-summary", table=summary, description="Retrain: datasets, runs, metrics, gate")
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
