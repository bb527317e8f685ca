"""MNIST: read the classic 50k/10k/10k pickle safely, validate, normalize, split.

Splits: ``test`` is the official 10k test set; ``val`` is carved from the official 60k training
set (the pickle's train + valid) by a seeded permutation; ``train`` is the rest.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flows.datasets import array_pickle, gzipped, idx, quality, sources
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
    """Parse verified bytes (from ``read_verified``) into {split: (images, labels)}, read-only arrays."""
    splits = _parse(raw, path, eight_bit_scale=None)
    return {name: (_unscaled(images), _unscaled(labels)) for name, (images, labels) in splits.items()}


def parse_eight_bit(raw: bytes, path: Path | str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """``parse``, with the images as 8-bit pixels (uint8 pixel * 256, for ``prepare(..., eight_bit=True)``)
    where every image of every split is a whole multiple of 1 / 256 in [0, 1), as MNIST's are.

    Their floats are converted as the pickle is read and never held (``array_pickle``): a process's
    first parse of MNIST 0.51 -> 0.19 s here, 55 MB of new memory instead of 220. Returns the splits
    and whether their images are 8-bit; when any image is not, every split's images are floats, as
    from ``parse`` (a pickle of integer images keeps failing the "float pixels" rule).
    """
    splits = _parse(raw, path, eight_bit_scale=idx.PIXEL_SCALE)
    eight_bit = all(isinstance(images, array_pickle.Scaled) for images, _ in splits.values())
    unscale = (lambda images: images.values) if eight_bit else _unscaled
    return {name: (unscale(images), _unscaled(labels)) for name, (images, labels) in splits.items()}, eight_bit


def _unscaled(value: Any) -> Any:
    return value.floats() if isinstance(value, array_pickle.Scaled) else np.asarray(value)


def _parse(raw: bytes, path: Path | str, eight_bit_scale: int | None) -> dict[str, tuple[Any, Any]]:
    try:
        # Unpickled from the decompressing stream (the 220 MB of pickle are never held whole), by
        # an unpickler that reads numpy arrays and nothing else, without copying their buffers.
        with gzipped.reader(raw) as stream:
            content = array_pickle.load(stream, eight_bit_scale=eight_bit_scale)
    except (*gzipped.ERRORS, pickle.UnpicklingError, ValueError, TypeError) as exc:
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
        splits[name] = (pair[0], pair[1])
    return splits


def validate(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], file: Path | str, *, eight_bit: bool = False
) -> quality.Report:
    """The content rules of every split; raises ``DataValidationError`` at the first failed one.

    ``eight_bit``: the images are 8-bit pixels (uint8, standing for pixel / 256: IDX's, or the pickle's
    from ``parse_eight_bit``), not floats.
    """
    report = quality.Report(str(file))
    for name, (images, labels) in splits.items():
        field = f"{name}.images"
        report.check(
            images.ndim in (2, 3) and images.shape[1:] in ((PIXELS,), (SIDE, SIDE)),
            field,
            f"shape (n, {SIDE}x{SIDE})",
            detail=f"found shape {images.shape}",
        )
        if eight_bit:
            report.check(images.dtype == np.uint8, field, "8-bit pixels", detail=f"dtype {images.dtype}")
        else:
            report.check(
                np.issubdtype(images.dtype, np.floating), field, "float pixels", detail=f"dtype {images.dtype}"
            )
        report.raise_for_failures()  # the value rules below need the right shape and type
        if eight_bit:  # every 8-bit pixel is a finite pixel / 256 in [0, 1)
            lo, hi = (float(images.min(initial=0)) / idx.PIXEL_SCALE, float(images.max(initial=0)) / idx.PIXEL_SCALE)
        else:
            # min and max propagate NaN and infinity: when both are finite, every pixel is (no mask of
            # 55 million booleans to count them; that is built only when there is something to count).
            lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        bad = 0 if np.isfinite(lo) and np.isfinite(hi) else int(np.count_nonzero(~np.isfinite(images)))
        report.check(not bad, field, "no NaN or infinite pixel", count=bad, detail=f"{bad} found")
        if bad:
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


SCHEMA = pa.schema([("image", pa.list_(pa.float32(), PIXELS)), ("label", pa.int64())])
BLOCK_ROWS = 4096  # rows normalized at a time while a split is written (12.8 MB of float32)


def _table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    # From float32 without a type argument: Arrow wraps the buffer (with one, it copies it value by value).
    flat = pa.array(np.ascontiguousarray(images, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(flat, PIXELS),
            "label": pa.array(labels.astype(np.int64)),
        }
    )


@dataclass(frozen=True)
class NormalizedSplit:
    """One split of a version: its pixels (8-bit or float) normalized with the train statistics.

    ``blocks()`` is how the store writes it: ``BLOCK_ROWS`` rows at a time, normalized into one
    reused buffer, each block written before the next overwrites it. The split's float32 values
    (172 MB for MNIST's train) are never in memory at once: on these VMs fresh memory costs more
    than the arithmetic and the write together (normalize and write MNIST: a process's first
    1.0-1.6 -> 0.55 s, then ~0.44 -> ~0.34 s median). ``table()`` is the same values, whole.
    """

    pixels: np.ndarray  # (rows, PIXELS), uint8 (pixel * 256) or float
    labels: np.ndarray
    mean: float
    std: float
    schema: pa.Schema = SCHEMA

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def blocks(self) -> Iterator[pa.Table]:
        buffer = np.empty((min(self.num_rows, BLOCK_ROWS), PIXELS), dtype=np.float32)
        for lo in range(0, self.num_rows, BLOCK_ROWS):
            pixels = self.pixels[lo : lo + BLOCK_ROWS]
            normalized = _normalized(pixels, self.mean, self.std, out=buffer[: len(pixels)])
            yield _table(normalized, self.labels[lo : lo + BLOCK_ROWS])

    def table(self) -> pa.Table:
        return _table(_normalized(self.pixels, self.mean, self.std), self.labels)


def _mean_std(moments: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of every pixel value, from the per-pixel ``quality.column_moments``
    (every pixel position has the same number of values, so the overall figures are their means)."""
    mean = float(moments[0].mean())
    return mean, float(np.sqrt(max(float(moments[1].mean()) - mean * mean, 0.0)))


def _normalized(pixels: np.ndarray, mean: float, std: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """(pixels - mean) / std in float32, into ``out`` when given. 8-bit pixels are scaled to
    pixel / 256 first, into the same array: the same float32 values as normalizing IDX's pixels
    converted at read, without the converted copy."""
    if pixels.dtype == np.uint8:
        out = np.multiply(pixels, np.float32(1 / idx.PIXEL_SCALE), out=out, dtype=np.float32)
        out -= np.float32(mean)
    else:
        out = np.subtract(pixels, np.float32(mean), out=out, dtype=np.float32)
    out *= np.float32(1.0 / std)
    return out


def _gather(parts: list[np.ndarray], index: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``np.concatenate(parts)[index]`` without the concatenation: one new array, filled a chunk of
    rows at a time (each chunk's temporaries are small and reused)."""
    out = np.empty((len(index), *parts[0].shape[1:]), dtype=np.result_type(*parts))
    starts = np.cumsum([0] + [len(part) for part in parts])
    for lo in range(0, len(index), chunk):
        rows, block = index[lo : lo + chunk], out[lo : lo + chunk]
        which = np.searchsorted(starts, rows, side="right") - 1
        for k, part in enumerate(parts):
            selected = which == k
            block[selected] = part[rows[selected] - starts[k]]
    return out


def shuffled_train(splits: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The official 60k training images (flattened) and labels in the seeded order the split takes
    them: the first ``val_size`` rows are val, the rest train. Read from the pickle's train and
    valid (or IDX's train) directly: on these VMs a 188 MB concatenation first costs up to 0.4 s.
    """
    parts = [splits["train"]] + ([splits["valid"]] if "valid" in splits else [])
    order = np.random.default_rng(seed).permutation(sum(len(labels) for _, labels in parts))
    images = _gather([images.reshape(len(images), PIXELS) for images, _ in parts], order)
    return images, np.concatenate([labels for _, labels in parts])[order]


def _check_val_size(splits: dict[str, tuple[np.ndarray, np.ndarray]], val_size: int) -> None:
    rows = len(splits["train"][1]) + (len(splits["valid"][1]) if "valid" in splits else 0)
    if not 0 < val_size < rows:
        raise ValueError(f"val_size must be in 1..{rows - 1}, got {val_size}")


def transform(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    val_size: int,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Carve val from the official train set, normalize with train statistics, build tables.

    ``splits``: the official ``train`` and ``test`` sets (or the pickle's train, valid and test).
    """
    _check_val_size(splits, val_size)
    normalized, manifest = _splits(shuffled_train(splits, seed), splits["test"], val_size, limit_rows)
    return {name: split.table() for name, split in normalized.items()}, manifest


def _splits(
    shuffled: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val_size: int,
    limit_rows: int | None,
) -> tuple[dict[str, NormalizedSplit], dict[str, Any]]:
    images, labels = shuffled
    parts = {
        "train": (images[val_size:], labels[val_size:]),
        "val": (images[:val_size], labels[:val_size]),
        "test": (test[0].reshape(-1, PIXELS), test[1]),
    }
    if limit_rows is not None:
        parts = {k: (x[:limit_rows], y[:limit_rows]) for k, (x, y) in parts.items()}
    moments = quality.column_moments(parts["train"][0])
    if images.dtype == np.uint8:  # moments of pixel / 256: exact, the scale is a power of two
        moments = (moments[0] / idx.PIXEL_SCALE, moments[1] / idx.PIXEL_SCALE**2)
    profile = quality.profile(parts["train"][0], parts["train"][1], PIXEL_NAMES, "classification", moments)
    mean, std = _mean_std(moments)
    splits = {k: NormalizedSplit(x, y, mean, std) for k, (x, y) in parts.items()}
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
    return splits, manifest


def prepare(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    file: Path | str,
    *,
    seed: int,
    val_size: int,
    limit_rows: int | None,
    min_class_share: float,
    max_duplicate_fraction: float,
    eight_bit: bool = False,
) -> tuple[quality.Report, dict[str, NormalizedSplit], dict[str, Any]]:
    """Every rule, then the transform: the report (passed), the splits (normalized as the store
    writes them: ``NormalizedSplit``) and the manifest.

    ``eight_bit``: the images are 8-bit pixels (``idx.mnist_splits(..., eight_bit=True)``, ``parse_eight_bit``),
    kept so through the seeded shuffle (a quarter of the bytes to move) and scaled once, when
    normalized: the same tables and manifest as from the float pixels, with less fresh memory.
    """
    report = validate(splits, file, eight_bit=eight_bit)
    _check_val_size(splits, val_size)
    # The official training set, shuffled once: the rules count over it (order does not change a
    # class share or a duplicate), then the split takes its slices.
    shuffled = shuffled_train(splits, seed)
    quality_checks(
        report,
        shuffled,
        min_class_share=min_class_share,
        max_duplicate_fraction=max_duplicate_fraction,
    )
    normalized, manifest = _splits(shuffled, splits["test"], val_size, limit_rows)
    return report, normalized, manifest
