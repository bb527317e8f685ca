"""The ``promote`` flow: the champion/challenger quality gate on MLflow registry aliases.

The new version gets alias ``challenger``. Challenger and current champion are scored on the
same test split (the challenger's dataset version) by loading each through ``mlflow.pyfunc``;
``champion`` moves only when the challenger is better by more than ``margin``. The decision and
both scores are recorded as tags and description on the version and as a Prefect artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.datasets.store import version_dir
from flows.train import ModelName
from ray_jobs.dataset import load_split
from ray_jobs.evaluate import predict_in_batches, score
from ray_jobs.models import ModelSpec, spec_for
from ray_jobs.settings import Settings

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(spec: ModelSpec, challenger: float, champion: float | None, margin: float) -> Decision:
    """Promote only a challenger strictly better than the champion by more than ``margin``."""
    name = spec.metric
    if champion is None:
        return Decision(True, f"no champion yet: challenger {name}={challenger:.6g} becomes champion")
    gain = challenger - champion if spec.higher_is_better else champion - challenger
    better = "higher" if spec.higher_is_better else "lower"
    verdict = (
        f"challenger {name}={challenger:.6g} vs champion {name}={champion:.6g} ({better} is better, margin {margin:g})"
    )
    if gain > margin:
        return Decision(True, f"{verdict}: improved by {gain:.6g}")
    return Decision(False, f"{verdict}: not better by more than the margin")


@task
def score_version(name: str, version: str, dataset_dir: str, spec: ModelSpec) -> float:
    """Load the registered version through pyfunc, as inference does, and score it on test."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    features, target = load_split(dataset_dir, "test")
    output = predict_in_batches(model.predict, features)
    return score(spec.task, target, output)[spec.metric]


def _current_champion(client: mlflow.MlflowClient, name: str) -> str | None:
    """The champion's version number (MLflow returns it as int or str depending on the call)."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


@flow(name="promote", log_prints=True)
def promote(model: ModelName, version: str, margin: float = 0.0) -> dict:
    """Gate registered ``version`` of ``model`` against the champion; move ``champion`` if it wins."""
    settings, logger = Settings(), get_run_logger()
    spec = spec_for(model)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    name = spec.registered_name
    candidate = client.get_model_version(name, version)
    dataset_version = candidate.tags.get("skytrain.dataset_version")
    if not dataset_version:
        raise ValueError(f"{name} version {version} has no 'skytrain.dataset_version' tag: not a skytrain model")
    dataset_dir = str(version_dir(settings.data_store, spec.dataset, dataset_version))

    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = _current_champion(client, name)
    challenger_score = score_version(name, version, dataset_dir, spec)
    champion_score = None
    if champion == version:
        decision = Decision(False, f"version {version} already is the champion")
    else:
        if champion is not None:
            champion_score = score_version(name, champion, dataset_dir, spec)
        decision = decide(spec, challenger_score, champion_score, margin)

    record = {
        "model": name,
        "challenger_version": version,
        "champion_version_before": champion,
        "metric": spec.metric,
        "challenger_score": challenger_score,
        "champion_score": champion_score,
        "margin": margin,
        "dataset_version": dataset_version,
        **asdict(decision),
    }
    record["champion_version"] = version if decision.promote else record["champion_version_before"]
    tags = {
        "skytrain.gate.decision": "promoted" if decision.promote else "rejected",
        "skytrain.gate.metric": spec.metric,
        "skytrain.gate.challenger_score": f"{challenger_score:.6g}",
        "skytrain.gate.champion_score": "" if champion_score is None else f"{champion_score:.6g}",
        "skytrain.gate.champion_version": record["champion_version_before"] or "",
        "skytrain.gate.margin": f"{margin:g}",
        "skytrain.gate.reason": decision.reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=f"Gate: {tags['skytrain.gate.decision']}. {decision.reason}")
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("%s version %s %s: %s", name, version, tags["skytrain.gate.decision"], decision.reason)
    create_markdown_artifact(
        key=f"gate-{model}",
        markdown=_gate_markdown(record),
        description=f"Promotion gate for {name} version {version}",
    )
    return record


def _gate_markdown(record: dict) -> str:
    verdict = "**promoted** to champion" if record["promote"] else "**rejected**; champion unchanged"
    champion = record["champion_version_before"] or "none"
    champion_score = "—" if record["champion_score"] is None else f"{record['champion_score']:.6g}"
    return "\n".join(
        [
            f"# Gate: {record['model']} version {record['challenger_version']}",
            "",
            f"Decision: {verdict}. {record['reason']}",
            "",
            f"| | version | test {record['metric']} |",
            "|---|---|---|",
            f"| challenger | {record['challenger_version']} | {record['challenger_score']:.6g} |",
            f"| champion (before) | {champion} | {champion_score} |",
            "",
            f"Scored on dataset version `{record['dataset_version']}` (test split); margin {record['margin']:g}.",
        ]
    )
