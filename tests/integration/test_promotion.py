"""The promotion gate, rollback and their lock on a real Prefect API and MLflow store.

The registered versions are linear diamonds regressors fitted by least squares and then pushed
off the optimum by a known amount: their order of quality is known without any training.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pytest
import torch
from prefect import task
from prefect.client.orchestration import get_client

import flows.promote
from flows.datasets import diamonds
from flows.datasets.store import write_version
from flows.promote import promote
from flows.registry import CHALLENGER, CHAMPION, current_champion, lock_name
from flows.rollback import rollback
from ray_jobs import tracking
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.evaluate import score
from ray_jobs.models import DiamondsRegressor, spec_for
from ray_jobs.settings import Settings

MODEL = "diamonds-regressor"
SPEC = spec_for(MODEL)
NAME = SPEC.registered_name


def dataset_version(settings: Settings, version: str, rows: int, seed: int = 0) -> Path:
    frame = diamonds.read_csv(settings.diamonds_location()).sample(rows, random_state=seed)
    tables, manifest = diamonds.transform(frame, seed=seed, val_fraction=0.1, test_fraction=0.2)
    return write_version(settings.data_store, SPEC.dataset, version, tables, manifest)


def register(path: Path, offset: float, extra_features: int = 0) -> str:
    """A linear regressor at ``offset`` (in standardized units) from the least-squares fit on ``path``."""
    manifest = read_manifest(path)
    x, y = load_split(path, "train", manifest)
    mean, std = float(y.mean()), float(y.std())
    solution, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], (y - mean) / std, rcond=None)
    direction = np.random.default_rng(7).standard_normal(x.shape[1] + extra_features)
    direction /= np.linalg.norm(direction)  # test RMSE: 0.14 at offset 0, 0.26 at 0.3, 3.6 at 5
    net = DiamondsRegressor(x.shape[1] + extra_features, arch="linear", target_mean=mean, target_std=std)
    with torch.no_grad():
        net.net.weight.copy_(torch.tensor(np.r_[solution[:-1], np.zeros(extra_features)] + offset * direction))
        net.net.bias.fill_(float(solution[-1]))
    example = np.c_[x[:5], np.zeros((5, extra_features), dtype=np.float32)].astype(np.float32)
    settings = Settings()
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(settings)) as run:
        hparams = {"arch": "linear", "hidden": 0}
        return tracking.log_and_register(net, SPEC, example, manifest, hparams, run.info.run_id)


def rescore(version: str, path: Path, metric: str = "rmse") -> float:
    x, y = load_split(path, "test")
    return score("regression", y, mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(x))[metric]


@pytest.fixture
def store(state_dir, prefect_api):
    """A fresh state directory with one diamonds dataset version, MLflow pointed at its store."""
    settings = Settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return dataset_version(settings, "v1", rows=3000)


@pytest.fixture
def client(store):
    return mlflow.MlflowClient()


def tags(client: mlflow.MlflowClient, version: str) -> dict:
    return client.get_model_version(NAME, version).tags


def test_a_better_challenger_moves_the_champion_and_everything_is_recorded(store, client):
    first = register(store, offset=0.3)
    assert promote(model=MODEL, version=first)["promote"]  # no champion yet
    better = register(store, offset=0.0)
    record = promote(model=MODEL, version=better)
    assert record["promote"] and record["champion_version_before"] == first
    assert record["challenger_score"] == pytest.approx(rescore(better, store), rel=1e-5)
    assert record["champion_score"] == pytest.approx(rescore(first, store), rel=1e-5)
    assert [c["name"] for c in record["checks"]] == ["loads", "signature", "predicts", "floor"]
    assert all(c["passed"] for c in record["checks"])
    assert current_champion(client, NAME) == better
    assert str(client.get_model_version_by_alias(NAME, CHALLENGER).version) == better
    recorded = tags(client, better)
    assert recorded["skytrain.gate.decision"] == "promoted"
    assert recorded["skytrain.gate.checks"] == "loads: ok; signature: ok; predicts: ok; floor: ok"
    assert recorded["skytrain.gate.policy"].startswith("metric rmse (lower is better), margin 0, floor <= 0.7")
    assert "Gate: promoted" in client.get_model_version(NAME, better).description


def missing_artifacts(client: mlflow.MlflowClient, version: str) -> None:
    location = urlparse(client.get_model_version_download_uri(NAME, version))
    assert location.scheme == "file", location
    shutil.rmtree(unquote(location.path))


@pytest.mark.parametrize(
    ("case", "check", "detail"),
    [
        ("wrong input shape", "signature", "input shape (-1, 27) but the dataset's rows are (-1, 26)"),
        ("artifacts gone", "loads", "mlflow.pyfunc.load_model failed"),
        ("below the floor", "floor", "floor <= 0.7"),
    ],
)
def test_hard_checks_reject_before_any_comparison(store, client, case, check, detail):
    champion = register(store, offset=0.2)
    promote(model=MODEL, version=champion)
    if case == "wrong input shape":
        candidate = register(store, offset=0.0, extra_features=1)
    else:
        candidate = register(store, offset=0.0 if case == "artifacts gone" else 5.0)
    if case == "artifacts gone":
        missing_artifacts(client, candidate)
    record = promote(model=MODEL, version=candidate)
    assert not record["promote"] and record["champion_score"] is None  # never compared
    failed = [c for c in record["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == [check] and detail in failed[0]["detail"]
    assert record["reason"].startswith(f"hard checks failed: {check}: ")
    assert current_champion(client, NAME) == champion
    assert f"{check}: FAILED" in tags(client, candidate)["skytrain.gate.checks"]
    assert tags(client, candidate)["skytrain.gate.decision"] == "rejected"


def test_a_champion_from_an_older_dataset_version_is_rescored_on_the_new_one(store, client):
    champion = register(store, offset=0.1)
    promote(model=MODEL, version=champion)
    newer = dataset_version(Settings(), "v2", rows=3000, seed=1)
    challenger = register(newer, offset=0.05)
    record = promote(model=MODEL, version=challenger)
    assert (record["dataset_version"], record["champion_trained_on"]) == ("v2", "v1")
    assert record["champion_score"] == pytest.approx(rescore(champion, newer), rel=1e-5)
    assert record["challenger_score"] == pytest.approx(rescore(challenger, newer), rel=1e-5)
    assert tags(client, challenger)["skytrain.gate.scored_on"] == "v2"


def test_the_configured_policy_decides(store, client, monkeypatch):
    champion = register(store, offset=0.1)
    promote(model=MODEL, version=champion)
    challenger = register(store, offset=0.0)
    gain = rescore(champion, store, "mae") - rescore(challenger, store, "mae")
    assert gain > 0
    monkeypatch.setenv("SKYTRAIN_PROMOTION", f'{{"{MODEL}": {{"metric": "mae", "margin": {2 * gain}}}}}')
    record = promote(model=MODEL, version=challenger)
    assert record["metric"] == "mae" and not record["promote"]
    assert "not better by more than the margin" in record["reason"]
    assert current_champion(client, NAME) == champion
    assert record["challenger_score"] == pytest.approx(rescore(challenger, store, "mae"), rel=1e-5)

    monkeypatch.setenv("SKYTRAIN_PROMOTION", f'{{"{MODEL}": {{"margin": -1}}}}')
    with pytest.raises(ValueError, match=f"SKYTRAIN_PROMOTION: bad promotion policy for '{MODEL}': margin"):
        promote(model=MODEL, version=challenger)
    assert current_champion(client, NAME) == champion


def test_rollback_walks_back_through_the_promotions(store, client):
    versions = [register(store, offset=offset) for offset in (0.3, 0.1, 0.0)]
    for version in versions:
        assert promote(model=MODEL, version=version)["promote"]
    first, second, third = versions
    record = rollback(model=MODEL, reason="bad predictions in production")
    assert (record["from_version"], record["to_version"]) == (third, second)
    assert current_champion(client, NAME) == second
    assert tags(client, second)["skytrain.rollback.from_version"] == third
    assert tags(client, second)["skytrain.rollback.reason"] == "bad predictions in production"
    assert tags(client, third)["skytrain.rollback.demoted"].startswith(f"to v{second} at ")
    assert "demoted" in client.get_model_version(NAME, third).description

    assert rollback(model=MODEL)["to_version"] == first
    with pytest.raises(ValueError, match="was its first champion"):
        rollback(model=MODEL)
    assert current_champion(client, NAME) == first
    assert rollback(model=MODEL, to_version=third)["to_version"] == third  # forward again, by choice
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == third


def test_racing_promotions_are_serialized(store, client, monkeypatch):
    champion = register(store, offset=0.3)
    promote(model=MODEL, version=champion)
    # Scoring takes a second more, so both gates would read the same champion if nothing serialized them.
    scoring = flows.promote.check_and_score

    @task
    def slow_check_and_score(*args):
        time.sleep(1)
        return scoring.fn(*args)

    monkeypatch.setattr(flows.promote, "check_and_score", slow_check_and_score)
    good, best = register(store, offset=0.1), register(store, offset=0.0)
    start, records, errors = threading.Barrier(2), {}, []

    def gate(version: str) -> None:
        try:
            start.wait()
            records[version] = promote(model=MODEL, version=version)
        except Exception as error:  # reported below, with the other thread's outcome
            errors.append(error)

    threads = [threading.Thread(target=gate, args=(v,)) for v in (good, best)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(records) == 2
    # One after the other: the second gate compared against the first one's outcome, not the old champion.
    first, second = sorted(records.values(), key=lambda r: r["champion_version_before"] != champion)
    assert first["champion_version_before"] == champion
    assert second["champion_version_before"] == first["champion_version"]
    assert current_champion(client, NAME) == best
    with get_client(sync_client=True) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(lock_name(MODEL)).limit == 1
