"""The search space is centred on the model's hyperparameters and names each model's width."""

from __future__ import annotations

import pytest

from ray_jobs.models import SPECS
from ray_jobs.tune import search_space


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
