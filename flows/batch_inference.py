"""The ``batch_inference`` flow: score a dataset with a registered model on Ray Data, into Parquet.

The model is ``models:/<name>@champion`` (resolved once: a promotion during the run changes
nothing) or the version given. Its input columns and the normalization of raw images come from
the manifest of the dataset version it was trained on (the version's ``skytrain.dataset_version``
tag). The work itself is ``ray_jobs/batch_predict.py``: rows checked one by one, valid ones
scored in Ray Data tasks, predictions and rejected rows written to Parquet and published only
when the whole input was handled.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.operations import io_task
from flows.parameters import ModelName, RegisteredVersion, described
from flows.registry import CHAMPION, REGISTRY_TIMEOUT_SECONDS
from ray_jobs import batch_predict
from ray_jobs.cluster import ray_session
from ray_jobs.inference import resolve_version, training_manifest
from ray_jobs.models import spec_for
from ray_jobs.scoring import Scoring
from ray_jobs.settings import Settings

DEFAULT_BATCH_SIZE = 512
# Scoring and writing one input, start to end: long enough for tens of millions of rows here; it
# stops a run that hangs (e.g. Ray Data waiting for CPUs that never free up) instead of waiting forever.
SCORING_TIMEOUT_SECONDS = 6 * 3600

ModelToScore = Annotated[ModelName, Field(description="The model whose champion (or version) scores the input.")]
InputPath = Annotated[
    str,
    Field(
        min_length=1,
        description="Parquet file or folder, local or s3://; for mnist-cnn also an MNIST IDX image file (.gz too).",
    ),
]
OutputPath = Annotated[
    str | None,
    Field(
        description="Folder (local or s3://, absent or empty) for predictions.parquet and rejected.parquet; "
        "empty: STATE_DIR/predictions/MODEL/TIMESTAMP-vVERSION."
    ),
]
ScoreVersion = Annotated[
    RegisteredVersion | None,
    Field(description="Registered version to score with; empty: the version champion points at when the run starts."),
]
BatchSize = Annotated[int, Field(ge=1, le=1_000_000, description="Rows that go through the model at a time.")]
Concurrency = Annotated[
    int | None, Field(ge=1, le=1024, description="Scoring tasks at once; empty: one per CPU of the Ray cluster.")
]


@io_task("resolve-model-version", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def resolve_model(tracking_uri: str, name: str, version: str | None, dataset: str, data_store: Any):
    """The version to score with (as of now), the dataset version it was trained on and its manifest."""
    chosen = resolve_version(mlflow.MlflowClient(tracking_uri), name, version)
    dataset_version, manifest = training_manifest(chosen, dataset, data_store)
    return chosen, dataset_version, manifest


# Retried once, on a transient error only (the input is re-read, nothing was published): bad input
# (BadInputError), a non-empty destination or an unknown version fail at once.
@io_task("score-and-write-predictions", timeout_seconds=SCORING_TIMEOUT_SECONDS, retries=1)
def score_and_write(
    input_path: str, output: str, scoring: Scoring, batch_size: int, concurrency: int | None, settings: Settings
) -> dict[str, Any]:
    return batch_predict.predict(
        input_path, output, scoring, batch_size=batch_size, concurrency=concurrency, settings=settings
    )


def default_output(settings: Settings, model: str, version: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return str(settings.state_dir / "predictions" / model / f"{stamp}-v{version}")


def report(summary: dict[str, Any]) -> str:
    """The run as markdown: counts, model, paths and the first rejected rows."""
    alias = f" ({summary['alias']})" if summary["alias"] else ""
    lines = [
        f"# Batch inference: {summary['registered_model']} v{summary['model_version']}{alias}",
        "",
        "| | |",
        "|---|---|",
        f"| input | `{summary['input']}` ({summary['input_format']}) |",
        f"| rows in | {summary['rows_in']} |",
        f"| scored | {summary['rows_scored']} |",
        f"| rejected | {summary['rows_rejected']} |",
        f"| model | `{summary['model_uri']}`{alias}, trained on {summary['dataset']}/{summary['dataset_version']}, "
        f"run with {summary['runtime']} |",
        f"| predictions | `{summary['predictions_path']}` |",
        f"| rejected rows | `{summary['rejected_path']}` |",
        f"| time | {summary['seconds']:.1f} s ({summary['rows_per_second']:.0f} rows/s), "
        f"{summary['workers']} scoring at once, {summary['chunks']} chunks of about {summary['chunk_rows']} rows, "
        f"batches of {summary['batch_size']} through the model |",
    ]
    if summary["first_rejections"]:
        lines += ["", "First rejected rows:", "", "| row | reason |", "|---|---|"]
        lines += [f"| {r['row']} | {r['reason']} |" for r in summary["first_rejections"]]
        lines += ["", "Rejections by reason:", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in summary["rejection_reasons"].items()]
    return "\n".join(lines)


@flow(name="batch-inference", log_prints=True)
@described
def batch_inference(
    model: ModelToScore,
    input_path: InputPath,
    output_path: OutputPath = None,
    version: ScoreVersion = None,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    concurrency: Concurrency = None,
) -> dict[str, Any]:
    """Score ``input_path`` (Parquet file or folder, local or ``s3://``; for the CNN also an IDX
    image file) with ``model``'s champion, or its ``version``; returns the run's summary.

    ``output_path`` (a folder, local or ``s3://``, absent or empty) receives ``predictions.parquet``
    and ``rejected.parquet``; default ``<state_dir>/predictions/<model>/<timestamp>-v<version>``.
    ``batch_size`` rows go through the model at a time (the rows are checked and handed to the
    scoring tasks in chunks of about 32 MiB of features at most, and no more than a task's share of
    the input); ``concurrency`` tasks score at once (default: one per CPU of the Ray cluster).
    """
    settings, logger = Settings(), get_run_logger()
    spec = spec_for(model)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    chosen, dataset_version, manifest = resolve_model(
        settings.mlflow_tracking_uri, spec.registered_name, version, spec.dataset, settings.data_store
    )
    scoring = Scoring.of(
        spec.registered_name,
        chosen.version,
        manifest,
        settings.mlflow_tracking_uri,
        settings.inference_runtime,
        settings.onnx_providers,
    )
    output = output_path or default_output(settings, model, scoring.model_version)
    logger.info("%s: scoring %s with %s into %s", model, input_path, scoring.model_uri, output)
    with ray_session(settings.ray_address):
        result = score_and_write(input_path, output, scoring, batch_size, concurrency, settings)
    summary = {
        "model": model,
        "registered_model": spec.registered_name,
        "alias": None if version is not None else CHAMPION,
        "dataset": spec.dataset,
        "dataset_version": dataset_version,
        **result,
    }
    first = summary["first_rejections"][:1]
    logger.info(
        "%s v%s: %d rows in, %d scored, %d rejected%s; predictions in %s",
        spec.registered_name,
        scoring.model_version,
        summary["rows_in"],
        summary["rows_scored"],
        summary["rows_rejected"],
        f" (first: row {first[0]['row']}: {first[0]['reason']})" if first else "",
        summary["output"],
    )
    create_markdown_artifact(
        key=f"batch-inference-{model}",
        markdown=report(summary),
        description=f"Batch inference with {spec.registered_name} v{scoring.model_version}",
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=get_args(ModelName))
    parser.add_argument("input_path", help="Parquet file or folder, or an IDX image file; local or s3://")
    parser.add_argument("--output-path")
    parser.add_argument("--version", help="a registered version (default: the champion)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--concurrency", type=int)
    args = parser.parse_args()
    batch_inference(**vars(args))


if __name__ == "__main__":
    main()
