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

from flows.datasets import quality, sources
from flows.datasets.validation import DataValidationError, require

NAME = "mnist"
TRANSFORM = "mnist-v1"  # bump when the transform below changes: it is part of the version id
SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10
SOURCE_SPLITS = ("train", "valid", "test")
PIXEL_NAMES = [f"pixel[{row},{col}]" for row in range(SIDE) for col in range(SIDE)]


def read_verified(location: Path | str, expected_sha256: str) -> tuple[bytes, str]:
    """Read the file (local or ``s3://``) once and check its sha256; only bytes that matched are ever unpickled."""
    raw = sources.read_bytes(str(location))
    actual = hashlib.sha256(raw).hexdigest()
    check_sha256(location, actual, expected_sha256)
    return raw, actual


def check_sha256(path: Path | str, actual: str, expected_sha256: str) -> None:
    """Refuse a file whose content is not the expected one (``DataValidationError``)."""
    require(
        actual == expected_sha256,
        path,
        "sha256",
        "matches the expected sha256 (SKYTRAIN_MNIST_SHA256)",
        f"expected {expected_sha256}, got {actual}; a pickle of unknown content is never loaded",
    )


def parse(raw: bytes, path: Path | str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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


def validate(splits: dict[str, tuple[np.ndarray, np.ndarray]], file: Path | str) -> quality.Report:
    """The content rules of every split; raises ``DataValidationError`` at the first failed one."""
    report = quality.Report(str(file))
    for name, (images, labels) in splits.items():
        field = f"{name}.images"
        report.check(
            images.ndim in (2, 3) and images.shape[1:] in ((PIXELS,), (SIDE, SIDE)),
            field,
            f"shape (n, {SIDE}x{SIDE})",
            detail=f"found shape {images.shape}",
        )
        report.check(np.issubdtype(images.dtype, np.floating), field, "float pixels", detail=f"dtype {images.dtype}")
        report.raise_for_failures()  # the value rules below need the right shape and type
        bad = ~np.isfinite(images)
        report.check(
            not bad.any(), field, "no NaN or infinite pixel", count=int(bad.sum()), detail=f"{int(bad.sum())} found"
        )
        lo, hi = float(np.nanmin(images, initial=0.0)), float(np.nanmax(images, initial=0.0))
        report.check(lo >= 0.0 and hi <= 1.0, field, "pixel values in [0, 1]", detail=f"range [{lo}, {hi}]")
        report.check(len(images) > 0, field, "at least one image", count=len(images))
        report.check(
            len(images) == len(labels),
            f"{name}.labels",
            "one label per image",
            detail=f"{len(images)} images, {len(labels)} labels",
        )
        report.check(
            np.issubdtype(labels.dtype, np.integer), f"{name}.labels", "integer labels", detail=f"dtype {labels.dtype}"
        )
        report.raise_for_failures()
        report.check(
            labels.min(initial=0) >= 0 and labels.max(initial=0) < CLASSES,
            f"{name}.labels",
            f"labels in 0..{CLASSES - 1}",
            detail=f"range [{labels.min(initial=0)}, {labels.max(initial=0)}]",
        )
    report.raise_for_failures()
    return report


def official(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pickle's (train, valid, test) as MNIST's official 60k train and 10k test sets."""
    if "valid" not in splits:
        return splits
    return {
        "train": (
            np.concatenate([splits["train"][0], splits["valid"][0]]),
            np.concatenate([splits["train"][1], splits["valid"][1]]),
        ),
        "test": splits["test"],
    }


def quality_checks(
    report: quality.Report,
    train: tuple[np.ndarray, np.ndarray],
    *,
    min_class_share: float,
    max_duplicate_fraction: float,
) -> None:
    """Class balance and duplicate images of the official train set, into ``report``."""
    images, labels = train
    quality.class_balance(report, labels, CLASSES, min_class_share)
    quality.duplicate_rows(report, images, labels, max_duplicate_fraction)
    report.raise_for_failures()


def _table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    # From float32 without a type argument: Arrow wraps the buffer (with one, it copies it value by value).
    flat = pa.array(np.ascontiguousarray(images, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(flat, PIXELS),
            "label": pa.array(labels.astype(np.int64)),
        }
    )


def _mean_std(pixels: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of every pixel value, in one pass (float64 sums)."""
    flat = pixels.reshape(-1)
    total, squares = flat.sum(dtype=np.float64), np.einsum("i,i->", flat, flat, dtype=np.float64)
    mean = float(total / flat.size)
    return mean, float(np.sqrt(max(float(squares) / flat.size - mean * mean, 0.0)))


def _normalized(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    out = np.subtract(pixels, np.float32(mean), dtype=np.float32)
    out *= np.float32(1.0 / std)
    return out


def transform(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    val_size: int,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Carve val from the official train set, normalize with train statistics, build tables.

    ``splits``: the official ``train`` and ``test`` sets (or the pickle's train, valid and test).
    """
    splits = official(splits)
    train_x = splits["train"][0].reshape(-1, PIXELS)
    train_y = splits["train"][1]
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
    profile = quality.profile(parts["train"][0], parts["train"][1], PIXEL_NAMES, "classification")
    mean, std = _mean_std(parts["train"][0])
    tables = {k: _table(_normalized(x, mean, std), y) for k, (x, y) in parts.items()}
    manifest = {
        "task": "classification",
        "feature_columns": ["image"],
        "feature_shape": [1, SIDE, SIDE],
        "target_column": "label",
        "classes": CLASSES,
        "normalization": {"mean": mean, "std": std, "input_scale": "pixel / 256 in [0, 1)"},
        "schema": {"image": f"fixed_size_list<float32>[{PIXELS}]", "label": "int64"},
        "profile": profile,
    }
    return tables, manifest


def prepare(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    file: Path | str,
    *,
    seed: int,
    val_size: int,
    limit_rows: int | None,
    min_class_share: float,
    max_duplicate_fraction: float,
) -> tuple[quality.Report, dict[str, pa.Table], dict[str, Any]]:
    """Every rule, then the transform: the report (passed), the split tables and the manifest."""
    report = validate(splits, file)
    quality_checks(
        report,
        official(splits)["train"],
        min_class_share=min_class_share,
        max_duplicate_fraction=max_duplicate_fraction,
    )
    tables, manifest = transform(splits, seed=seed, val_size=val_size, limit_rows=limit_rows)
    return report, tables, manifest
