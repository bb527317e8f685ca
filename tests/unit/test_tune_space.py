"""The search space is centred on the model's hyperparameters; ASHA lets a trial at max epochs finish."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler

from ray_jobs.models import SPECS
from ray_jobs.tune import FinishingASHA, search_space


@pytest.mark.parametrize(("key", "width"), [("mnist-cnn", "width"), ("diamonds-regressor", "hidden")])
def test_space_is_centred_on_the_given_values(key, width):
    hparams = {**SPECS[key].defaults, "lr": 0.01, "batch_size": 64, width: 32}
    space = search_space(SPECS[key], hparams)
    assert set(space) == {"lr", "batch_size", width}
    assert (space["lr"].lower, space["lr"].upper) == pytest.approx((0.0025, 0.04))
    assert space["batch_size"].categories == [32, 64, 128]
    assert space[width].categories == [16, 32, 64]


def test_small_values_never_halve_to_zero():
    hparams = {**SPECS["mnist-cnn"].defaults, "batch_size": 1, "width": 1}
    space = search_space(SPECS["mnist-cnn"], hparams)
    assert space["batch_size"].categories == [1, 2] and space["width"].categories == [1, 2]


def _asha_decisions(scheduler, reports):
    """Feeds (trial, epoch, val_rmse) reports to a scheduler the way Tune does; returns its decisions."""
    scheduler.set_search_properties("val_rmse", "min")
    trials = {name: SimpleNamespace(trial_id=name) for name, _, _ in reports}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    return [
        scheduler.on_trial_result(None, trials[name], {"training_iteration": epoch, "val_rmse": rmse})
        for name, epoch, rmse in reports
    ]


# a: first through both rungs; b: passes rung 1, trails a at epoch 2 (= max_t); c: trails at rung 1.
REPORTS = [("a", 1, 1.0), ("b", 1, 0.9), ("a", 2, 0.5), ("b", 2, 0.8), ("c", 1, 2.0)]


def test_a_trial_that_reached_max_epochs_is_never_stopped_but_trailing_ones_still_are():
    assert _asha_decisions(FinishingASHA(max_t=2), REPORTS) == ["CONTINUE"] * 4 + ["STOP"]


def test_rays_own_asha_stops_at_max_t_even_without_stop_last_trials():
    """Why FinishingASHA exists: if a Ray upgrade stops doing this, the subclass can go."""
    decisions = _asha_decisions(
        ASHAScheduler(max_t=2, grace_period=1, reduction_factor=2, stop_last_trials=False), REPORTS
    )
    assert decisions == ["CONTINUE", "CONTINUE", "CONTINUE", "STOP", "STOP"]
