"""The ``tune`` flow: a real 2-trial ASHA search on a local Ray, recorded in MLflow, seeding retrain; searches
and retrains too big for the Ray refused before any data prep."""

from __future__ import annotations

import json

import mlflow
import pytest

from flows.operations import StepFailed
from flows.retrain import retrain, starting_hparams
from flows.tune import tune
from ray_jobs.models import SPECS
from ray_jobs.settings import Settings

MODEL, LIMIT_ROWS, MAX_EPOCHS = "diamonds-regressor", 3000, 2


def test_retrain_from_a_search_that_never_ran_is_refused(prefect_api, state_dir):
    with pytest.raises(StepFailed, match="no finished tune search"):
        retrain(models=[MODEL], tuned=True, limit_rows=LIMIT_ROWS)
    assert not (state_dir / "datasets").exists()  # refused before any work


def test_runs_too_big_for_the_ray_are_refused_before_any_data_is_written(prefect_api, local_ray, state_dir):
    refused = r"check ray resources failed: ValueError: num_workers=3 .*the Ray cluster has 2"
    with pytest.raises(StepFailed, match=refused):
        retrain(models=[MODEL], num_workers=3, limit_rows=LIMIT_ROWS)
    with pytest.raises(ValueError, match=r"num_workers=3 .*the Ray cluster has 2"):
        tune(models=[MODEL], num_samples=1, num_workers=3, limit_rows=LIMIT_ROWS)
    assert not (state_dir / "datasets").exists()  # neither prepared a dataset version it could not train on


def test_search_records_trials_as_child_runs_and_seeds_retrain(prefect_api, local_ray, state_dir):
    (search,) = tune(models=[MODEL], num_samples=2, max_epochs=MAX_EPOCHS, limit_rows=LIMIT_ROWS)
    client = mlflow.MlflowClient(Settings().mlflow_tracking_uri)
    parent = client.get_run(search["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skytrain.kind"] == "tune" and parent.data.params["num_samples"] == "2"

    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    lr, hidden = SPECS[MODEL].defaults["lr"], SPECS[MODEL].defaults["hidden"]  # the search's centre
    statuses = {row["trial"]: row["status"] for row in search["trials"]}
    for child in children:
        status = statuses[child.data.tags["skytrain.tune.trial_id"]]
        assert child.info.status == {"completed": "FINISHED", "stopped by ASHA": "KILLED"}[status]
        assert lr / 4 <= float(child.data.params["lr"]) <= lr * 4
        assert int(child.data.params["hidden"]) in (hidden // 2, hidden, hidden * 2)
        epochs = client.get_metric_history(child.info.run_id, "val_rmse")
        assert 1 <= len(epochs) <= MAX_EPOCHS

    # ASHA always lets the first trial at each rung go on: at least one trial runs every epoch.
    rows = search["trials"]
    assert len(rows) == 2 and any(row["status"] == "completed" for row in rows)
    best_row = min((row for row in rows if row["val_rmse"] is not None), key=lambda row: row["val_rmse"])
    best = json.loads(parent.data.tags["skytrain.tune.best_hparams"])
    assert best == {k: best_row[k] for k in ("lr", "batch_size", "hidden")} == search["best_hparams"]
    assert parent.data.metrics["best_val_rmse"] == pytest.approx(best_row["val_rmse"])

    # What retrain(tuned=True) trains with: the best configuration, under explicit overrides.
    settings = Settings()
    assert starting_hparams([MODEL], None, True, settings) == {MODEL: best}
    chosen = starting_hparams([MODEL], {MODEL: {"lr": 0.5, "patience": 2}}, True, settings)
    assert chosen == {MODEL: {**best, "lr": 0.5, "patience": 2}}
