"""The ``tune`` flow: a Ray Tune (ASHA) search per model, recorded in MLflow, seeding ``retrain``.

Each model's search is one MLflow parent run with a child run per trial; the best configuration
is recorded on the parent, and ``retrain(tuned=True)`` trains with it.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field

from flows.parameters import (
    Epochs,
    HyperparametersPerModel,
    LimitRows,
    Models,
    NumWorkers,
    Seed,
    UseGpu,
    described,
    overrides_by_model,
)
from flows.retrain import DEFAULT_MODELS, PREPARE, format_table
from ray_jobs.cluster import ray_session
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from ray_jobs.train import resolve_hparams, worker_resources
from ray_jobs.tune import run_search

NumSamples = Annotated[int, Field(ge=1, le=1000, description="Trials per model.")]


@flow(name="tune", log_prints=True)
@described
def tune(
    models: Models = DEFAULT_MODELS,
    num_samples: NumSamples = 4,
    max_epochs: Epochs = None,
    num_workers: NumWorkers = 1,
    use_gpu: UseGpu = None,
    seed: Seed = 42,
    limit_rows: LimitRows = None,
    hparams: HyperparametersPerModel = None,
) -> list[dict]:
    """Search learning rate, batch size and width for each model with ASHA; returns each search.

    ``num_samples`` trials per model, each trained for up to ``max_epochs`` (default: the model's
    epochs) on ``num_workers`` Ray Train workers; ASHA stops trailing trials after any epoch.
    ``hparams`` sets the other hyperparameters and the centre of the search; ``limit_rows`` caps
    each dataset split (quick searches). Trials run concurrently as far as the Ray cluster allows.
    """
    settings, logger = Settings(), get_run_logger()
    specs = {m: spec_for(m) for m in dict.fromkeys(models)}
    hparams = overrides_by_model(hparams)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    for m, spec in specs.items():  # refuse bad values before any work starts
        resolve_hparams(spec, (hparams or {}).get(m), max_epochs)
    searches = []
    with ray_session(settings.ray_address):
        worker_resources(num_workers, use_gpu, settings)  # a trial too big for the Ray: refused before data prep
        datasets = {s.dataset: PREPARE[s.dataset](seed=seed, limit_rows=limit_rows) for s in specs.values()}
        for m, spec in specs.items():
            search = run_search(
                m,
                datasets[spec.dataset]["path"],
                num_samples=num_samples,
                max_epochs=max_epochs,
                num_workers=num_workers,
                use_gpu=use_gpu,
                seed=seed,
                hparams=(hparams or {}).get(m),
                settings=settings,
            )
            logger.info(
                "%s: best %s=%.4g with %s (MLflow run %s)",
                m,
                search["metric"],
                search["best_value"],
                search["best_hparams"],
                search["run_id"],
            )
            table = [{k: _cell(v) for k, v in row.items()} for row in search["trials"]]
            create_table_artifact(
                key=f"tune-{m}",
                table=table,
                description=f"Ray Tune search for {m}: best {search['best_hparams']} (MLflow run {search['run_id']})",
            )
            print(format_table(table))
            searches.append(search)
    return searches


def _cell(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


if __name__ == "__main__":
    tune()
