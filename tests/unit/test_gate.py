"""The promotion decision and the metrics it compares."""

from __future__ import annotations

import numpy as np
import pytest

from flows.promote import decide
from ray_jobs.evaluate import score
from ray_jobs.models import SPECS

CNN, REGRESSOR = SPECS["mnist-cnn"], SPECS["diamonds-regressor"]


def test_first_model_becomes_champion():
    assert decide(CNN, 0.5, None, margin=0.0).promote


@pytest.mark.parametrize(
    ("spec", "challenger", "champion", "margin", "promote"),
    [
        (CNN, 0.991, 0.990, 0.0, True),
        (CNN, 0.990, 0.990, 0.0, False),  # a tie does not move the champion
        (CNN, 0.989, 0.990, 0.0, False),
        (CNN, 0.992, 0.990, 0.005, False),  # better, but not by the margin
        (CNN, 0.996, 0.990, 0.005, True),
        (REGRESSOR, 0.10, 0.12, 0.0, True),  # lower RMSE is better
        (REGRESSOR, 0.12, 0.10, 0.0, False),
        (REGRESSOR, 0.11, 0.12, 0.02, False),
    ],
)
def test_champion_moves_only_for_a_better_challenger(spec, challenger, champion, margin, promote):
    decision = decide(spec, challenger, champion, margin)
    assert decision.promote is promote
    assert spec.metric in decision.reason


def test_accuracy_counts_argmax_hits():
    logits = np.eye(4)[[0, 1, 2, 3, 0]]
    assert score("classification", np.array([0, 1, 2, 0, 0]), logits)["accuracy"] == pytest.approx(4 / 5)


def test_regression_metrics():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = score("regression", target, target)
    assert perfect["rmse"] == 0 and perfect["r2"] == 1
    shifted = score("regression", target, target + 0.5)
    assert shifted["rmse"] == pytest.approx(0.5) and shifted["mae"] == pytest.approx(0.5)
    assert score("regression", target, np.full(4, target.mean()))["r2"] == pytest.approx(0.0)
