"""What a ``retrain`` run shows in the Prefect UI: its artifacts, and links into the MLflow UI.

Artifacts (stable keys, so each key's history is one series across runs):

- ``retrain-datasets``: the dataset versions used (reused or new), as soon as data prep is done;
- ``retrain-metrics``: per model, its registered version, MLflow run and test metrics;
- ``mlflow-run-<model>`` and ``mlflow-model-<model>``: links to the training run and to the
  registered version in the MLflow UI (``SKYTRAIN_MLFLOW_UI_URL``);
- ``retrain-gate``: each model's gate decision and reason (the full record, with every check, is
  the ``gate-<model>`` artifact of the ``promote`` subflow run);
- ``retrain-failure``: on a failed run, the step that failed and the error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import mlflow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.operations import StepFailed, io_task
from ray_jobs.settings import Settings

REGISTRY_TIMEOUT_SECONDS = 120


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """An MLflow run's page (the route MLflow itself prints after a run: ``#/experiments/<id>/runs/<id>``)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}"


def model_version_url(ui_url: str, name: str, version: str) -> str:
    """A registered model version's page (MLflow UI route ``#/models/<name>/versions/<version>``)."""
    return f"{ui_url.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


@io_task("read-experiment-ids", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def experiment_ids(tracking_uri: str, run_ids: list[str]) -> dict[str, str]:
    """Each run's experiment id (the run page's URL needs it)."""
    client = mlflow.MlflowClient(tracking_uri)
    return {run_id: client.get_run(run_id).info.experiment_id for run_id in run_ids}


def publish_datasets(datasets: dict[str, dict[str, Any]]) -> None:
    rows = [
        {"dataset": name, "version": ref["version"], "reused": "yes" if ref["reused"] else "new", "path": ref["path"]}
        for name, ref in datasets.items()
    ]
    create_table_artifact(key="retrain-datasets", table=rows, description="Retrain: the dataset versions used")


def publish_training(trained: dict[str, dict[str, Any]], settings: Settings) -> dict[str, dict[str, str]]:
    """The ``retrain-metrics`` table and a link artifact per run and per model version; returns the URLs."""
    experiments = experiment_ids(settings.mlflow_tracking_uri, [r["run_id"] for r in trained.values()])
    urls, rows = {}, []
    for model, result in trained.items():
        urls[model] = {
            "run": run_url(settings.mlflow_ui_url, experiments[result["run_id"]], result["run_id"]),
            "version": model_version_url(settings.mlflow_ui_url, result["registered_model"], result["version"]),
        }
        rows.append(
            {
                "model": model,
                "registered_model": result["registered_model"],
                "version": result["version"],
                "dataset_version": f"{result['dataset']}/{result['dataset_version']}",
                **{name.removeprefix("test_"): f"{value:.4f}" for name, value in result["metrics"].items()},
                "best_epoch": result.get("best_epoch"),
                "run_id": result["run_id"],
            }
        )
        create_link_artifact(
            key=f"mlflow-run-{model}",
            link=urls[model]["run"],
            link_text=f"MLflow run {result.get('run_name') or result['run_id']}",
            description=f"The training run of {model}: parameters, per-epoch metrics, plots",
        )
        create_link_artifact(
            key=f"mlflow-model-{model}",
            link=urls[model]["version"],
            link_text=f"{result['registered_model']} version {result['version']}",
            description=f"The registered version of {model} this run trained: tags, gate decision",
        )
    columns = list(dict.fromkeys(k for row in rows for k in row))  # CNN and regressor metrics differ
    table = [{c: row.get(c, "") for c in columns} for row in rows]
    create_table_artifact(key="retrain-metrics", table=table, description="Retrain: test metrics per model")
    return urls


def publish_gates(gates: dict[str, dict[str, Any]], urls: dict[str, dict[str, str]]) -> None:
    lines = [
        "# Promotion gate",
        "",
        "| model | challenger | decision | champion now | metric | challenger | champion before | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, gate in gates.items():
        version = gate["challenger_version"]
        link = f"[v{version}]({urls[model]['version']})" if model in urls else f"v{version}"
        lines.append(
            f"| {model} | {link} | **{'promoted' if gate['promote'] else 'rejected'}** "
            f"| {_v(gate['champion_version'])} | {gate['metric']} | {_num(gate['challenger_score'])} "
            f"| {_num(gate['champion_score'])} ({_v(gate['champion_version_before'])}) "
            f"| {_cell(gate['reason'])} |"
        )
    lines += ["", "Every check and the policy: the `gate-<model>` artifact of each `promote` subflow run."]
    create_markdown_artifact(key="retrain-gate", markdown="\n".join(lines), description="Retrain: gate decisions")


def publish_failure(failure: StepFailed) -> None:
    error = failure.error
    markdown = "\n".join(
        [
            "# Retrain failed",
            "",
            f"**Step:** {failure.step}",
            "",
            f"**Error:** `{type(error).__module__}.{type(error).__name__}`",
            "",
            "```",
            str(error)[:4000],
            "```",
        ]
    )
    create_markdown_artifact(key="retrain-failure", markdown=markdown, description=str(failure))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
