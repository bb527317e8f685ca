"""The two models skytrain trains, and what the platform needs to know about each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    key: str
    dataset: str
    registered_name: str
    task: str  # "classification" or "regression"
    metric: str  # the promotion gate's metric
    higher_is_better: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    architecture: tuple[str, ...] = ()  # the hyperparameters that define the network's shape
    # Whether its operations are big enough to gain from PyTorch's intra-op threads on a CPU: the
    # CNN's convolutions are; the regressor's small matrix products only wait on each other.
    parallel_ops: bool = True


SPECS = {
    "mnist-cnn": ModelSpec(
        key="mnist-cnn",
        dataset="mnist",
        registered_name="skytrain-mnist-cnn",
        task="classification",
        metric="accuracy",
        higher_is_better=True,
        # batch_size is per worker; patience None: no early stopping
        defaults=dict(epochs=4, lr=4e-3, batch_size=128, weight_decay=1e-4, patience=None, width=24, depth=2),
        architecture=("width", "depth"),
    ),
    "diamonds-regressor": ModelSpec(
        key="diamonds-regressor",
        dataset="diamonds",
        registered_name="skytrain-diamonds-regressor",
        task="regression",
        metric="rmse",
        higher_is_better=False,
        defaults=dict(epochs=15, lr=3e-3, batch_size=256, weight_decay=1e-5, patience=None, arch="mlp", hidden=128),
        architecture=("arch", "hidden"),
        parallel_ops=False,
    ),
}


def spec_for(key: str) -> ModelSpec:
    try:
        return SPECS[key]
    except KeyError:
        raise ValueError(f"unknown model '{key}': choose one of {sorted(SPECS)}") from None


class MnistCNN(nn.Module):
    """``depth`` conv stages (conv-BN-ReLU-maxpool, channels doubling from ``width``), then a
    linear classifier. The default (width 24, depth 2) reaches ≥ 99 % in 4 epochs."""

    def __init__(self, width: int = 24, depth: int = 2, classes: int = 10, side: int = 28) -> None:
        super().__init__()
        if not 1 <= depth <= 4:
            raise ValueError(f"depth must be in 1..4 (each stage halves the {side}px side), got {depth}")
        layers: list[nn.Module] = []
        channels = 1
        for stage in range(depth):
            out = width * 2**stage
            kernel = 5 if stage == 0 else 3
            layers += [
                nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels, side = out, side // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(channels * side * side, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class DiamondsRegressor(nn.Module):
    """``mlp`` (two hidden layers) or ``linear`` (least squares by gradient descent, the classic
    baseline) on the encoded features. Outputs log price: the target's scale is built in."""

    def __init__(
        self,
        in_features: int,
        arch: str = "mlp",
        hidden: int = 128,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        if arch == "mlp":
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden // 2),
                nn.ReLU(),
                nn.Linear(hidden // 2, 1),
            )
        elif arch == "linear":
            self.net = nn.Linear(in_features, 1)
        else:
            raise ValueError(f"arch must be 'mlp' or 'linear', got '{arch}'")
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1) * self.target_std + self.target_mean


def memory_format(manifest: dict[str, Any]) -> torch.memory_format:
    """How the model's weights and batches are laid out in memory.

    Images (N, C, H, W) go channels_last: the convolution kernels of both cuDNN (tensor cores) and
    oneDNN (CPU) are faster on it; on this project's 2-core CPU machine a CNN epoch takes about
    0.7x the time of the default layout. Tabular rows have no layout to choose.
    """
    return torch.channels_last if len(manifest["feature_shape"]) == 3 else torch.preserve_format


def build_model(spec: ModelSpec, manifest: dict[str, Any], hparams: dict[str, Any]) -> nn.Module:
    if spec.key == "mnist-cnn":
        return MnistCNN(width=hparams["width"], depth=hparams["depth"], classes=manifest["classes"])
    target = manifest["target"]
    return DiamondsRegressor(
        in_features=manifest["feature_shape"][0],
        arch=hparams["arch"],
        hidden=hparams["hidden"],
        target_mean=target["mean"],
        target_std=target["std"],
    )
