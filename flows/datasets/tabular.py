"""Tabular regression data (CSV or Parquet): validate, one-hot the categories, standardize, split.

A ``TabularSpec`` says what a dataset is: its target column, its categorical columns (with their
levels declared, or learned from the data), its numeric columns, and rules for the target. The
diamonds dataset is one (``flows/datasets/diamonds.py``); a user's own dataset is another, built
from the ``prepare-tabular`` flow's parameters.

Standardization statistics come from the train split only and are kept in the manifest, so the
same transform can be applied to new rows at inference time.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flows.datasets import quality
from flows.datasets.validation import DataValidationError, require

TRANSFORM = "tabular-v1"  # bump when the transform below changes: it is part of the version id
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_LEVELS = 100  # a learned categorical column with more distinct values is an ID, not a category


@dataclass(frozen=True)
class TabularSpec:
    name: str  # the dataset's name in the store
    target: str
    categorical: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # None: learned levels
    numeric: tuple[str, ...] | None = None  # None: every other column
    log_target: bool = False  # train on log(target); the target must then be > 0
    min_target: float | None = None  # the target must be above this
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # inclusive bounds
    transform: str = TRANSFORM

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"dataset name must be lowercase letters, digits and dashes, got {self.name!r}")
        if self.target in self.categorical or (self.numeric and self.target in self.numeric):
            raise ValueError(f"the target column {self.target!r} cannot also be a feature")

    def numeric_columns(self, frame: pd.DataFrame) -> tuple[str, ...]:
        if self.numeric is not None:
            return self.numeric
        return tuple(c for c in frame.columns if c != self.target and c not in self.categorical)

    @property
    def target_floor(self) -> float | None:
        return 0.0 if self.log_target and self.min_target is None else self.min_target


def is_parquet(file: str) -> bool:
    """Parquet by its name (``.parquet``, ``.pq``); anything else is read as CSV."""
    return file.lower().endswith((".parquet", ".pq"))


def read_table(data: bytes, file: str) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) file's rows."""
    require(len(data) > 0, file, "file", "not empty", "the file has 0 bytes")
    try:
        if is_parquet(file):
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            frame = pd.read_csv(io.BytesIO(data), compression="gzip" if file.lower().endswith(".gz") else None)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, pa.ArrowInvalid, OSError) as exc:
        kind = "Parquet file" if is_parquet(file) else "CSV with a header row"
        raise DataValidationError(file, "file", f"readable {kind}", str(exc)) from exc
    require(len(frame) > 0, file, "file", "at least one data row")
    return frame


def _first_rows(mask: pd.Series, file: str) -> str:
    csv = not is_parquet(file)
    rows = mask.to_numpy().nonzero()[0][:5] + (2 if csv else 0)  # CSV: 1-based lines after the header
    where = "CSV line(s)" if csv else "row(s)"
    return f"{int(mask.sum())} row(s), first at {where} {', '.join(map(str, rows))}"


def validate(frame: pd.DataFrame, spec: TabularSpec, file: str, *, max_duplicate_fraction: float = 0.01):
    """Every rule, in order; raises ``DataValidationError`` at the first failed one. Returns the report."""
    report = quality.Report(file)
    numeric = spec.numeric_columns(frame)
    columns = (*numeric, *spec.categorical, spec.target)
    for column in columns:
        report.check(column in frame.columns, column, "column present", detail=f"columns: {list(frame.columns)}")
    report.raise_for_failures()
    for column in (*numeric, spec.target):
        report.check(
            pd.api.types.is_numeric_dtype(frame[column]),
            column,
            "numeric values",
            detail=f"dtype {frame[column].dtype}",
        )
    report.raise_for_failures()
    for column in columns:
        missing = frame[column].isna()
        report.check(
            not missing.any(),
            column,
            "no missing (NaN) values",
            count=int(missing.sum()),
            detail=_first_rows(missing, file),
        )
    for column in (*numeric, spec.target):
        infinite = ~np.isfinite(frame[column]) & frame[column].notna()
        report.check(
            not infinite.any(), column, "finite values", count=int(infinite.sum()), detail=_first_rows(infinite, file)
        )
    for column, (low, high) in spec.ranges.items():
        values = frame[column]
        outside = (values < low if low is not None else False) | (values > high if high is not None else False)
        outside = pd.Series(outside, index=frame.index) & values.notna()
        bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        report.check(
            not outside.any(),
            column,
            f"values in {bounds}",
            count=int(outside.sum()),
            detail=f"found [{values.min():g}, {values.max():g}]; {_first_rows(outside, file)}",
        )
    if (floor := spec.target_floor) is not None:
        low = frame[spec.target] <= floor
        report.check(
            not low.any(),
            spec.target,
            f"{spec.target} > {floor:g}",
            count=int(low.sum()),
            detail=_first_rows(low, file),
        )
    for column, levels in spec.categorical.items():
        present = frame[column].dropna().astype(str)
        if levels is None:
            distinct = present.nunique()
            report.check(
                distinct <= MAX_LEVELS,
                column,
                f"at most {MAX_LEVELS} levels",
                count=distinct,
                detail=f"{distinct} distinct values: an identifier rather than a category?",
            )
            continue
        unknown = frame[column].notna() & ~frame[column].astype(str).isin(levels)
        found = sorted(map(str, frame.loc[unknown, column].unique()))[:5]
        report.check(
            not unknown.any(),
            column,
            f"known level (one of {list(levels)})",
            count=int(unknown.sum()),
            detail=f"{found}; {_first_rows(unknown, file)}",
        )
    duplicates = frame[list(columns)].duplicated()
    fraction = float(duplicates.mean())
    report.check(
        not duplicates.any(),
        "rows",
        f"duplicate rows at most {max_duplicate_fraction:.0%} of the rows",
        count=int(duplicates.sum()),
        detail=f"{int(duplicates.sum())} duplicate row(s), {fraction:.2%} of {len(frame)}",
        warn=fraction <= max_duplicate_fraction,
    )
    report.raise_for_failures()
    return report


def encode(frame: pd.DataFrame, spec: TabularSpec) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Numeric columns as float64, then one column per categorical level (``column=level``)."""
    numeric = spec.numeric_columns(frame)
    features = frame[list(numeric)].astype(np.float64)
    categories = {}
    for column, levels in spec.categorical.items():
        values = frame[column].astype(str)
        categories[column] = list(levels) if levels is not None else sorted(values.unique())
        for level in categories[column]:
            features[f"{column}={level}"] = (values == level).astype(np.float64)
    return features, categories


def transform(
    frame: pd.DataFrame,
    spec: TabularSpec,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Encode, split by seed, standardize with train-only statistics, build tables.

    The manifest's ``profile`` describes the training split before scaling (drift checks of the
    next version compare with it).
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    numeric = list(spec.numeric_columns(frame))
    features, categories = encode(frame, spec)
    raw_target = frame[spec.target].to_numpy(np.float64)
    target = np.log(raw_target) if spec.log_target else raw_target
    target_column = f"log_{spec.target}" if spec.log_target else spec.target

    order = np.random.default_rng(seed).permutation(len(frame))
    n_test, n_val = round(len(frame) * test_fraction), round(len(frame) * val_fraction)
    index = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    if limit_rows is not None:
        index = {k: v[:limit_rows] for k, v in index.items()}
    if any(len(v) == 0 for v in index.values()):
        raise ValueError(f"a split is empty: { ({k: len(v) for k, v in index.items()}) }")

    train = features.iloc[index["train"]]
    profile = quality.profile(train.to_numpy(np.float64), raw_target[index["train"]], list(train.columns), "regression")
    mean, std = train[numeric].mean(), train[numeric].std(ddof=0).replace(0.0, 1.0)
    features[numeric] = (features[numeric] - mean) / std
    tables = {}
    for split, rows in index.items():
        part = features.iloc[rows].astype(np.float32).reset_index(drop=True)
        part[target_column] = target[rows].astype(np.float32)
        tables[split] = pa.Table.from_pandas(part, preserve_index=False)
    train_target = target[index["train"]]
    manifest = {
        "task": "regression",
        "feature_columns": list(features.columns),
        "feature_shape": [len(features.columns)],
        "target_column": target_column,
        "standardization": {c: {"mean": float(mean[c]), "std": float(std[c])} for c in numeric},
        "categories": categories,
        "target": {
            "column": spec.target,
            "transform": f"log({spec.target})" if spec.log_target else "none",
            "mean": float(train_target.mean()),
            "std": float(train_target.std()),
        },
        "schema": {**{c: "float32" for c in features.columns}, target_column: "float32"},
        "profile": profile,
    }
    return tables, manifest
