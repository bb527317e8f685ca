"""Early stopping on the validation metric."""

from __future__ import annotations

import pytest

from ray_jobs.early_stopping import EarlyStopping


def _epochs_until_stop(stopper: EarlyStopping, values: list[float]) -> int | None:
    for epoch, value in enumerate(values, start=1):
        if stopper.update(value):
            return epoch
    return None


def test_stops_after_patience_epochs_without_improvement():
    assert _epochs_until_stop(EarlyStopping(2, higher_is_better=True), [0.90, 0.95, 0.94, 0.95, 0.99]) == 4


def test_lower_is_better_for_rmse():
    assert _epochs_until_stop(EarlyStopping(1, higher_is_better=False), [0.5, 0.4, 0.3, 0.35]) == 4
    assert _epochs_until_stop(EarlyStopping(1, higher_is_better=False), [0.5, 0.4, 0.3, 0.2]) is None


def test_no_patience_never_stops():
    assert _epochs_until_stop(EarlyStopping(None, higher_is_better=True), [0.9, 0.8, 0.7, 0.6]) is None


def test_state_survives_a_checkpoint_round_trip():
    before = EarlyStopping(2, higher_is_better=True)
    before.update(0.9)
    before.update(0.8)
    after = EarlyStopping(2, higher_is_better=True)
    after.load_state_dict(before.state_dict())
    assert after.update(0.85) is True  # second epoch without beating 0.9


@pytest.mark.parametrize("patience", [0, -1, 2.5])
def test_bad_patience_is_refused(patience):
    from ray_jobs.models import SPECS
    from ray_jobs.train import resolve_hparams

    with pytest.raises(ValueError, match="patience must be"):
        resolve_hparams(SPECS["mnist-cnn"], {"patience": patience})
