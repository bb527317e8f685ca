"""The promotion decision and the metrics it compares."""

from __future__ import annotations

import numpy as np
import pytest

from flows.policy import PromotionPolicy, policy_for
from flows.promote import decide
from ray_jobs.evaluate import score
from ray_jobs.settings import Settings

CNN, REGRESSOR = "mnist-cnn", "diamonds-regressor"
METRIC = {CNN: "accuracy", REGRESSOR: "rmse"}


def test_first_model_becomes_champion():
    assert decide(PromotionPolicy(model=CNN, metric="accuracy"), 0.5, None).promote


@pytest.mark.parametrize(
    ("model", "challenger", "champion", "margin", "promote"),
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
def test_champion_moves_only_for_a_better_challenger(model, challenger, champion, margin, promote):
    decision = decide(PromotionPolicy(model=model, metric=METRIC[model], margin=margin), challenger, champion)
    assert decision.promote is promote
    assert METRIC[model] in decision.reason


def test_policy_defaults_come_from_the_model():
    policy = policy_for(REGRESSOR, Settings(promotion={}))
    assert (policy.metric, policy.direction, policy.margin) == ("rmse", "min", 0.0)
    assert policy.meets_floor(0.2) and not policy.meets_floor(5.0)  # lower is better: the floor is a ceiling
    assert policy_for(CNN, Settings(promotion={})).higher_is_better


def test_configured_policy_and_flow_parameters_override_the_defaults():
    settings = Settings(promotion={REGRESSOR: {"metric": "r2", "margin": 0.01, "floor": 0.8}})
    policy = policy_for(REGRESSOR, settings, margin=0.05, floor=None)  # None: not overridden
    assert (policy.metric, policy.direction, policy.margin, policy.floor) == ("r2", "max", 0.05, 0.8)


@pytest.mark.parametrize(
    ("promotion", "message"),
    [
        ({REGRESSOR: {"margin": -0.1}}, "margin: Input should be greater than or equal to 0"),
        ({REGRESSOR: {"metric": "accuracy"}}, "metric must be one of ['rmse', 'mae', 'r2']"),
        ({CNN: {"direction": "min"}}, "direction must be 'max' for metric 'accuracy'"),
        ({CNN: {"treshold": 0.9}}, "treshold: Extra inputs are not permitted"),
        ({"mnist": {"margin": 0.1}}, "unknown model(s) ['mnist']"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_model_and_the_field(promotion, message):
    model = next(iter(promotion)) if next(iter(promotion)) in METRIC else CNN
    with pytest.raises(ValueError, match="SKYTRAIN_PROMOTION") as error:
        policy_for(model, Settings(promotion=promotion))
    assert message in str(error.value)
    if model in promotion:
        assert f"'{model}'" in str(error.value)


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
