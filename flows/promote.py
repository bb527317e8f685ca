"""The ``promote`` flow: the champion/challenger quality gate on MLflow registry aliases.

The new version gets alias ``challenger`` and must pass hard checks before any comparison: it
loads through ``mlflow.pyfunc`` (as inference loads it), its input signature matches the dataset
version's schema, and its test score meets the policy's floor (``flows/policy.py``). Then
challenger and champion are scored on the same test split, the challenger's dataset version: a
champion trained on an older version is rescored on the new one. ``champion`` moves only when the
challenger is better by more than the margin. The decision, the checks and both scores are
recorded as tags and description on the version and as a Prefect artifact. One promotion of a
model runs at a time (``flows/registry.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

import mlflow
import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.datasets.store import version_dir
from flows.parameters import Floor, Margin, ModelName, RegisteredVersion, described
from flows.policy import PromotionPolicy, policy_for
from flows.registry import (
    CHALLENGER,
    REPLACED_TAG,
    move_champion_task,
    promotion_lock,
    read_champion,
    read_version,
    set_alias,
    tag_version,
)
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.evaluate import predict_in_batches, score
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Check:
    name: str  # loads, signature, predicts, floor
    passed: bool
    detail: str


def decide(policy: PromotionPolicy, challenger: float, champion: float | None) -> Decision:
    """Promote only a challenger strictly better than the champion by more than the policy's margin."""
    name, margin = policy.metric, policy.margin
    if champion is None:
        return Decision(True, f"no champion to compare: challenger {name}={challenger:.6g} becomes champion")
    gain = challenger - champion if policy.higher_is_better else champion - challenger
    better = "higher" if policy.higher_is_better else "lower"
    verdict = (
        f"challenger {name}={challenger:.6g} vs champion {name}={champion:.6g} ({better} is better, margin {margin:g})"
    )
    if gain > margin:
        return Decision(True, f"{verdict}: improved by {gain:.6g}")
    return Decision(False, f"{verdict}: not better by more than the margin")


def signature_problems(model: mlflow.pyfunc.PyFuncModel, manifest: dict[str, Any]) -> list[str]:
    """How the model's input (and class count) disagrees with the dataset version's schema."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return ["the model was logged without an input signature"]
    if not schema.is_tensor_spec():
        return [f"the model expects named columns {schema.input_names()}, the dataset gives one float32 tensor"]
    if len(schema.inputs) != 1:
        return [f"the model expects {len(schema.inputs)} input tensors, the dataset gives one"]
    tensor, expected = schema.inputs[0], (-1, *manifest["feature_shape"])
    problems = []
    if tuple(tensor.shape) != expected:
        problems.append(f"input shape {tuple(tensor.shape)} but the dataset's rows are {expected}")
    if tensor.type != np.dtype(np.float32):
        problems.append(f"input dtype {tensor.type} but the dataset's features are float32")
    outputs = model.metadata.get_output_schema()
    if "classes" in manifest and outputs is not None and outputs.is_tensor_spec():
        if outputs.inputs[0].shape[-1] != manifest["classes"]:
            problems.append(f"{outputs.inputs[0].shape[-1]} outputs but the dataset has {manifest['classes']} classes")
    return problems


@task
def check_and_score(
    name: str, version: str, dataset_dir: str, policy: PromotionPolicy
) -> tuple[list[Check], float | None]:
    """The hard checks in order, stopping at the first failure; the test score where it got that far."""
    spec, manifest = spec_for(policy.model), read_manifest(dataset_dir)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except Exception as error:  # any failure to load is the check's verdict
        return [Check("loads", False, f"mlflow.pyfunc.load_model failed: {type(error).__name__}: {error}")], None
    checks = [Check("loads", True, "loads through mlflow.pyfunc")]
    if problems := signature_problems(model, manifest):
        return [*checks, Check("signature", False, "; ".join(problems))], None
    checks.append(Check("signature", True, f"input matches dataset version {manifest['version']}"))
    features, target = load_split(dataset_dir, "test", manifest)
    try:
        output = predict_in_batches(model.predict, features)
        value = score(spec.task, target, output)[policy.metric]
    except Exception as error:
        return [*checks, Check("predicts", False, f"predict failed: {type(error).__name__}: {error}")], None
    checks.append(Check("predicts", bool(np.isfinite(value)), f"test {policy.metric}={value:.6g}"))
    if not np.isfinite(value):
        return checks, None
    op = ">=" if policy.higher_is_better else "<="
    floor = "no floor" if policy.floor is None else f"floor {op} {policy.floor:g}"
    checks.append(Check("floor", policy.meets_floor(value), f"{policy.metric}={value:.6g}, {floor}"))
    return checks, value


def _failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


ModelToGate = Annotated[ModelName, Field(description="The model whose registered version is gated.")]
Challenger = Annotated[RegisteredVersion, Field(description="The registered version to gate (the challenger).")]


@flow(name="promote", log_prints=True)
@described
def promote(model: ModelToGate, version: Challenger, margin: Margin = None, floor: Floor = None) -> dict:
    """Gate registered ``version`` of ``model`` against the champion; move ``champion`` if it wins.

    ``margin`` and ``floor`` override the model's promotion policy (``SKYTRAIN_PROMOTION``) for this run.
    """
    settings, logger = Settings(), get_run_logger()
    policy = policy_for(model, settings, margin=margin, floor=floor)
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    spec = spec_for(model)
    name = spec.registered_name
    candidate = read_version(uri, name, version)
    dataset_version = candidate.tags.get("skytrain.dataset_version")
    if not dataset_version:
        raise ValueError(f"{name} version {version} has no 'skytrain.dataset_version' tag: not a skytrain model")
    dataset_dir = str(version_dir(settings.data_store, spec.dataset, dataset_version))

    with promotion_lock(model, settings):
        set_alias(uri, name, CHALLENGER, version)
        champion = read_champion(uri, name)
        checks, challenger_score = check_and_score(name, version, dataset_dir, policy)
        champion_score, champion_trained_on = None, None
        if failed := _failed(checks):
            decision = Decision(False, "hard checks failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
        elif champion == version:
            decision = Decision(False, f"version {version} already is the champion")
        else:
            champion_problem = None
            if champion is not None:
                champion_trained_on = read_version(uri, name, champion).tags.get("skytrain.dataset_version")
                champion_checks, champion_score = check_and_score(name, champion, dataset_dir, policy)
                if champion_score is None:  # a champion that cannot score the new version cannot keep its place
                    champion_problem = "; ".join(f"{c.name}: {c.detail}" for c in _failed(champion_checks))
            decision = (
                Decision(True, f"champion v{champion} fails on dataset version {dataset_version}: {champion_problem}")
                if champion_problem
                else decide(policy, challenger_score, champion_score)
            )
        if decision.promote:
            move_champion_task(uri, name, champion, version)

    record = {
        "model": name,
        "challenger_version": version,
        "champion_version_before": champion,
        "metric": policy.metric,
        "challenger_score": challenger_score,
        "champion_score": champion_score,
        "margin": policy.margin,
        "policy": policy.describe(),
        "checks": [asdict(c) for c in checks],
        "dataset_version": dataset_version,
        "champion_trained_on": champion_trained_on,
        **asdict(decision),
    }
    record["champion_version"] = version if decision.promote else champion
    _record(uri, model, record)
    logger.info("%s version %s %s: %s", name, version, "promoted" if decision.promote else "rejected", decision.reason)
    return record


def _record(tracking_uri: str, model: str, record: dict) -> None:
    """The decision on the version (tags, description) and as the ``gate-<model>`` Prefect artifact."""
    name, version = record["model"], record["challenger_version"]
    verdict = "promoted" if record["promote"] else "rejected"
    tags = {
        # Written on promotion only (a later rejection of the same version must not change it): the
        # champion this version replaced, where rollback returns to.
        **({REPLACED_TAG: record["champion_version_before"] or ""} if record["promote"] else {}),
        "skytrain.gate.decision": verdict,
        "skytrain.gate.metric": record["metric"],
        "skytrain.gate.challenger_score": _num(record["challenger_score"]),
        "skytrain.gate.champion_score": _num(record["champion_score"]),
        "skytrain.gate.champion_version": record["champion_version_before"] or "",
        "skytrain.gate.margin": f"{record['margin']:g}",
        "skytrain.gate.policy": record["policy"],
        "skytrain.gate.checks": "; ".join(f"{c['name']}: {_ok(c)}" for c in record["checks"]),
        "skytrain.gate.scored_on": record["dataset_version"],
        "skytrain.gate.reason": record["reason"],
    }
    tag_version(tracking_uri, name, version, tags, description=f"Gate: {verdict}. {record['reason']}")
    create_markdown_artifact(
        key=f"gate-{model}",
        markdown=_gate_markdown(record),
        description=f"Promotion gate for {name} version {version}",
    )


def _ok(check: dict) -> str:
    return "ok" if check["passed"] else "FAILED"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _gate_markdown(record: dict) -> str:
    verdict = "**promoted** to champion" if record["promote"] else "**rejected**; champion unchanged"
    champion = record["champion_version_before"] or "none"
    trained_on = record["champion_trained_on"]
    rescored = ""
    if trained_on and trained_on != record["dataset_version"]:
        rescored = f" (trained on `{trained_on}`, rescored)"
    lines = [
        f"# Gate: {record['model']} version {record['challenger_version']}",
        "",
        f"Decision: {verdict}. {record['reason']}",
        "",
        f"| | version | test {record['metric']} |",
        "|---|---|---|",
        f"| challenger | {record['challenger_version']} | {_num(record['challenger_score']) or '—'} |",
        f"| champion (before) | {champion}{rescored} | {_num(record['champion_score']) or '—'} |",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {c['name']} | {_ok(c)} | {c['detail']} |" for c in record["checks"]),
        "",
        f"Scored on dataset version `{record['dataset_version']}` (test split). Policy: {record['policy']}.",
    ]
    return "\n".join(lines)
