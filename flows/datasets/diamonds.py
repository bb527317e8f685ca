"""Diamonds: validate the CSV, one-hot its categories, log the price, standardize, split.

Standardization statistics come from the train split only and are kept in the manifest, so the
same transform can be applied to new rows at inference time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flows.datasets.validation import DataValidationError, require

NAME = "diamonds"
TRANSFORM = "diamonds-v1"  # bump when the transform below changes: it is part of the version id
TARGET = "price"
NUMERIC = ("carat", "depth", "table", "x", "y", "z")
# Levels in their natural order, worst to best, as the dataset documents them.
CATEGORIES = {
    "cut": ("Fair", "Good", "Very Good", "Premium", "Ideal"),
    "color": ("J", "I", "H", "G", "F", "E", "D"),
    "clarity": ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"),
}
COLUMNS = (*NUMERIC, *CATEGORIES, TARGET)


def read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(path, "file", "readable CSV with a header row", str(exc)) from exc
    require(len(frame) > 0, path, "file", "at least one data row")
    return frame


def _first_rows(mask: pd.Series) -> str:
    rows = mask[mask].index[:5] + 2  # +2: 1-based line numbers after the header
    return f"{int(mask.sum())} row(s), first at CSV line(s) {', '.join(map(str, rows))}"


def validate(frame: pd.DataFrame, path: Path) -> None:
    for column in COLUMNS:
        require(column in frame.columns, path, column, "column present", f"columns: {list(frame.columns)}")
    for column in (*NUMERIC, TARGET):
        require(
            pd.api.types.is_numeric_dtype(frame[column]),
            path,
            column,
            "numeric values",
            f"dtype {frame[column].dtype}",
        )
    for column in COLUMNS:
        missing = frame[column].isna()
        require(not missing.any(), path, column, "no missing (NaN) values", _first_rows(missing))
    for column in NUMERIC:
        infinite = ~np.isfinite(frame[column])
        require(not infinite.any(), path, column, "finite values", _first_rows(infinite))
    not_positive = frame[TARGET] <= 0
    require(not not_positive.any(), path, TARGET, "price > 0", _first_rows(not_positive))
    for column, levels in CATEGORIES.items():
        unknown = ~frame[column].isin(levels)
        if unknown.any():
            found = sorted(map(str, frame.loc[unknown, column].unique()))[:5]
            raise DataValidationError(
                path, column, f"known level (one of {list(levels)})", f"{found}; {_first_rows(unknown)}"
            )


def transform(
    frame: pd.DataFrame,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Encode, split by seed, standardize with train-only statistics, build tables."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    features = frame[list(NUMERIC)].astype(np.float64)
    for column, levels in CATEGORIES.items():
        for level in levels:
            features[f"{column}={level}"] = (frame[column] == level).astype(np.float64)
    target = np.log(frame[TARGET].to_numpy(np.float64))

    order = np.random.default_rng(seed).permutation(len(frame))
    n_test, n_val = round(len(frame) * test_fraction), round(len(frame) * val_fraction)
    index = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    if limit_rows is not None:
        index = {k: v[:limit_rows] for k, v in index.items()}
    if any(len(v) == 0 for v in index.values()):
        raise ValueError(f"a split is empty: { ({k: len(v) for k, v in index.items()}) }")

    train = features.iloc[index["train"]]
    mean, std = train[list(NUMERIC)].mean(), train[list(NUMERIC)].std(ddof=0).replace(0.0, 1.0)
    features[list(NUMERIC)] = (features[list(NUMERIC)] - mean) / std
    tables = {}
    for split, rows in index.items():
        part = features.iloc[rows].astype(np.float32).reset_index(drop=True)
        part["log_price"] = target[rows].astype(np.float32)
        tables[split] = pa.Table.from_pandas(part, preserve_index=False)
    train_target = target[index["train"]]
    manifest = {
        "task": "regression",
        "feature_columns": list(features.columns),
        "feature_shape": [len(features.columns)],
        "target_column": "log_price",
        "standardization": {c: {"mean": float(mean[c]), "std": float(std[c])} for c in NUMERIC},
        "categories": {c: list(levels) for c, levels in CATEGORIES.items()},
        "target": {"transform": "log(price)", "mean": float(train_target.mean()), "std": float(train_target.std())},
        "schema": {**{c: "float32" for c in features.columns}, "log_price": "float32"},
    }
    return tables, manifest
