"""MNIST: read the classic 50k/10k/10k pickle safely, validate, normalize, split.

Splits: ``test`` is the official 10k test set; ``val`` is carved from the official 60k training
set (the pickle's train + valid) by a seeded permutation; ``train`` is the rest.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flows.datasets.validation import DataValidationError, require

NAME = "mnist"
TRANSFORM = "mnist-v1"  # bump when the transform below changes: it is part of the version id
SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10
SOURCE_SPLITS = ("train", "valid", "test")


def read_verified(path: Path, expected_sha256: str) -> tuple[bytes, str]:
    """Read the file once and check its sha256; only bytes that matched are ever unpickled."""
    require(path.is_file(), path, "file", "exists", "no such file")
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    check_sha256(path, actual, expected_sha256)
    return raw, actual


def check_sha256(path: Path, actual: str, expected_sha256: str) -> None:
    """Refuse a file whose content is not the expected one (``DataValidationError``)."""
    require(
        actual == expected_sha256,
        path,
        "sha256",
        "matches the expected sha256 (SKYTRAIN_MNIST_SHA256)",
        f"expected {expected_sha256}, got {actual}; a pickle of unknown content is never loaded",
    )


def parse(raw: bytes, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse verified bytes (from ``read_verified``) into {split: (images, labels)}."""
    try:
        content = pickle.loads(gzip.decompress(raw), encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataValidationError(path, "file", "readable gzip-compressed pickle", str(exc)) from exc
    require(
        isinstance(content, (tuple, list)) and len(content) == 3,
        path,
        "splits",
        "a (train, valid, test) triple",
        f"found {type(content).__name__}",
    )
    splits = {}
    for name, pair in zip(SOURCE_SPLITS, content):
        require(
            isinstance(pair, (tuple, list)) and len(pair) == 2,
            path,
            name,
            "an (images, labels) pair",
        )
        splits[name] = (np.asarray(pair[0]), np.asarray(pair[1]))
    return splits


def validate(splits: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    for name, (images, labels) in splits.items():
        field = f"{name}.images"
        require(
            images.ndim in (2, 3) and images.shape[1:] in ((PIXELS,), (SIDE, SIDE)),
            path,
            field,
            f"shape (n, {SIDE}x{SIDE})",
            f"found shape {images.shape}",
        )
        require(
            np.issubdtype(images.dtype, np.floating),
            path,
            field,
            "float pixels",
            f"dtype {images.dtype}",
        )
        bad = ~np.isfinite(images)
        require(not bad.any(), path, field, "no NaN or infinite pixel", f"{int(bad.sum())} found")
        lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        require(lo >= 0.0 and hi <= 1.0, path, field, "pixel values in [0, 1]", f"range [{lo}, {hi}]")
        require(len(images) > 0, path, field, "at least one image")
        require(
            len(images) == len(labels),
            path,
            f"{name}.labels",
            "one label per image",
            f"{len(images)} images, {len(labels)} labels",
        )
        require(
            np.issubdtype(labels.dtype, np.integer),
            path,
            f"{name}.labels",
            "integer labels",
            f"dtype {labels.dtype}",
        )
        require(
            labels.min() >= 0 and labels.max() < CLASSES,
            path,
            f"{name}.labels",
            f"labels in 0..{CLASSES - 1}",
            f"range [{labels.min()}, {labels.max()}]",
        )


def _table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    flat = pa.array(images.reshape(-1), type=pa.float32())
    return pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(flat, PIXELS),
            "label": pa.array(labels.astype(np.int64)),
        }
    )


def transform(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    val_size: int,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Carve val from the official train set, normalize with train statistics, build tables."""
    train_x = np.concatenate([splits["train"][0], splits["valid"][0]]).reshape(-1, PIXELS)
    train_y = np.concatenate([splits["train"][1], splits["valid"][1]])
    if not 0 < val_size < len(train_x):
        raise ValueError(f"val_size must be in 1..{len(train_x) - 1}, got {val_size}")
    order = np.random.default_rng(seed).permutation(len(train_x))
    val_idx, train_idx = order[:val_size], order[val_size:]
    parts = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": (splits["test"][0].reshape(-1, PIXELS), splits["test"][1]),
    }
    if limit_rows is not None:
        parts = {k: (x[:limit_rows], y[:limit_rows]) for k, (x, y) in parts.items()}
    mean = float(parts["train"][0].mean(dtype=np.float64))
    std = float(parts["train"][0].std(dtype=np.float64))
    tables = {k: _table(((x - mean) / std).astype(np.float32), y) for k, (x, y) in parts.items()}
    manifest = {
        "task": "classification",
        "feature_columns": ["image"],
        "feature_shape": [1, SIDE, SIDE],
        "target_column": "label",
        "classes": CLASSES,
        "normalization": {"mean": mean, "std": std, "input_scale": "pixel / 256 in [0, 1)"},
        "schema": {"image": f"fixed_size_list<float32>[{PIXELS}]", "label": "int64"},
    }
    return tables, manifest
