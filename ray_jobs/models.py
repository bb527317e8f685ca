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


SPECS = {
    "mnist-cnn": ModelSpec(
        key="mnist-cnn",
        dataset="mnist",
        registered_name="skytrain-mnist-cnn",
        task="classification",
        metric="accuracy",
        higher_is_better=True,
        defaults={"epochs": 4, "lr": 4e-3, "batch_size": 128, "weight_decay": 1e-4, "width": 24},
    ),
    "diamonds-regressor": ModelSpec(
        key="diamonds-regressor",
        dataset="diamonds",
        registered_name="skytrain-diamonds-regressor",
        task="regression",
        metric="rmse",
        higher_is_better=False,
        defaults={"epochs": 15, "lr": 3e-3, "batch_size": 256, "weight_decay": 1e-5, "hidden": 128},
    ),
}


def spec_for(key: str) -> ModelSpec:
    try:
        return SPECS[key]
    except KeyError:
        raise ValueError(f"unknown model '{key}': choose one of {sorted(SPECS)}") from None


class MnistCNN(nn.Module):
    """Two conv stages (conv-BN-ReLU-pool), then a linear classifier: small, fast, ≥ 99 %."""

    def __init__(self, width: int = 24, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * width * 7 * 7, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class DiamondsRegressor(nn.Module):
    """An MLP on the encoded features; outputs log price (the target scale is built in)."""

    def __init__(self, in_features: int, hidden: int = 128, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1) * self.target_std + self.target_mean


def build_model(spec: ModelSpec, manifest: dict[str, Any], hparams: dict[str, Any]) -> nn.Module:
    if spec.key == "mnist-cnn":
        return MnistCNN(width=hparams["width"], classes=manifest["classes"])
    target = manifest["target"]
    return DiamondsRegressor(
        in_features=manifest["feature_shape"][0],
        hidden=hparams["hidden"],
        target_mean=target["mean"],
        target_std=target["std"],
    )
