"""Model architectures and hyperparameter resolution."""

from __future__ import annotations

import pytest
import torch

from ray_jobs.models import SPECS, DiamondsRegressor, MnistCNN, memory_format
from ray_jobs.train import resolve_hparams, threads_per_worker


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_cnn_depths_give_class_logits(depth):
    assert MnistCNN(width=4, depth=depth)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_cnn_width_scales_parameters():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(MnistCNN(width=16)) < count(MnistCNN(width=32))


def test_cnn_depth_out_of_range():
    with pytest.raises(ValueError, match="depth must be in 1..4"):
        MnistCNN(depth=5)


def test_linear_regressor_is_affine_and_scaled():
    torch.manual_seed(0)
    model = DiamondsRegressor(in_features=5, arch="linear", target_mean=7.8, target_std=1.1).eval()
    a, b, zero = torch.randn(4, 5), torch.randn(4, 5), torch.zeros(4, 5)
    torch.testing.assert_close(model(a) + model(b) - model(zero), model(a + b))
    mlp = DiamondsRegressor(in_features=5, arch="mlp").eval()
    assert not torch.allclose(mlp(a) + mlp(b) - mlp(zero), mlp(a + b))


def test_unknown_regressor_arch():
    with pytest.raises(ValueError, match="arch must be 'mlp' or 'linear'"):
        DiamondsRegressor(in_features=3, arch="forest")


def test_cnn_overfits_a_tiny_batch():
    """The model and loss can learn: 32 random images with fixed labels are memorised."""
    torch.manual_seed(0)
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model = MnistCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_hparams_resolve_over_defaults():
    spec = SPECS["diamonds-regressor"]
    hp = resolve_hparams(spec, {"arch": "linear", "lr": 0.01}, epochs=3)
    assert hp == {**spec.defaults, "arch": "linear", "lr": 0.01, "epochs": 3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"widht": 8}, r"unknown hyperparameter\(s\) \['widht'\]"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 12.5}, "batch_size must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be > 0"),
    ],
)
def test_bad_hparams_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_hparams(SPECS["mnist-cnn"], overrides)


def test_cnn_uses_channels_last_and_the_regressor_one_thread():
    assert memory_format({"feature_shape": [1, 28, 28]}) == torch.channels_last
    assert memory_format({"feature_shape": [26]}) == torch.preserve_format
    assert threads_per_worker(SPECS["mnist-cnn"], 4.0) == 4  # the CPUs each worker asked for
    assert threads_per_worker(SPECS["mnist-cnn"], 0.5) == 1
    assert threads_per_worker(SPECS["mnist-cnn"], 1.0, cores=2.0) == 2  # a local worker: its share of the cores
    assert threads_per_worker(SPECS["mnist-cnn"], 0.5, cores=0.5) == 1
    assert threads_per_worker(SPECS["diamonds-regressor"], 4.0) == 1
