"""Small dataset versions and registered model versions for inference tests, without any training.

A diamonds regressor fitted by least squares (optionally pushed off the optimum by a known
amount) and untrained small CNNs: their outputs are what the tests compare, not their quality.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from flows.datasets import diamonds, mnist
from flows.datasets.store import write_version
from ray_jobs import tracking
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.models import DiamondsRegressor
from ray_jobs.settings import Settings


def small_diamonds(settings: Settings, rows: int = 3000, version: str = "small") -> Path:
    frame = diamonds.read_csv(settings.diamonds_location()).sample(rows, random_state=0)
    tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.2)
    return Path(write_version(settings.data_store, "diamonds", version, tables, manifest))


def small_mnist(settings: Settings, test_images: int, version: str = "small") -> tuple[Path, np.ndarray]:
    """An MNIST version of random uint8 images, and its test images as uint8 (for IDX files)."""
    rng = np.random.default_rng(0)
    pixels = {
        split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for split, n in (("train", 200), ("valid", 40), ("test", test_images))
    }
    # As in the bundled pickle: float32 pixel / 256.
    splits = {
        s: (u8.reshape(len(u8), -1).astype(np.float32) / 256, rng.integers(0, 10, len(u8))) for s, u8 in pixels.items()
    }
    tables, manifest = mnist.transform(splits, seed=0, val_size=20)
    return Path(write_version(settings.data_store, "mnist", version, tables, manifest)), pixels["test"]


def register(net: torch.nn.Module, spec, version_dir: Path, hparams: dict) -> str:
    manifest = read_manifest(version_dir)
    example, _ = load_split(version_dir, "test", manifest)
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(Settings())) as run:
        return tracking.log_and_register(net, spec, example[:5], manifest, hparams, run.info.run_id)


def least_squares(version_dir: Path, offset: float = 0.0) -> DiamondsRegressor:
    """A linear regressor fitted on the train split, then moved ``offset`` (standardized units) off it."""
    x, y = load_split(version_dir, "train")
    mean, std = float(y.mean()), float(y.std())
    solution, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], (y - mean) / std, rcond=None)
    direction = np.random.default_rng(7).standard_normal(x.shape[1])
    direction /= np.linalg.norm(direction)
    net = DiamondsRegressor(x.shape[1], arch="linear", target_mean=mean, target_std=std)
    with torch.no_grad():
        net.net.weight.copy_(torch.tensor(solution[:-1] + offset * direction))
        net.net.bias.fill_(float(solution[-1]))
    return net
