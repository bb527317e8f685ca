"""Diamonds (53,940 rows, target ``price``): the tabular dataset skytrain ships with.

One ``TabularSpec``: its categories with their levels declared in their natural order (an
unknown level is refused), the price above 0 and trained on as log(price).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from flows.datasets import tabular

NAME = "diamonds"
TRANSFORM = "diamonds-v1"  # bump when the transform changes: it is part of the version id
TARGET = "price"
NUMERIC = ("carat", "depth", "table", "x", "y", "z")
# Levels in their natural order, worst to best, as the dataset documents them.
CATEGORIES = {
    "cut": ("Fair", "Good", "Very Good", "Premium", "Ideal"),
    "color": ("J", "I", "H", "G", "F", "E", "D"),
    "clarity": ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"),
}
# Physical bounds: weights and millimetres are not negative, depth and table are percentages.
RANGES = {
    "carat": (0.0, None),
    "x": (0.0, None),
    "y": (0.0, None),
    "z": (0.0, None),
    "depth": (0.0, 100.0),
    "table": (0.0, 100.0),
}
SPEC = tabular.TabularSpec(
    name=NAME,
    target=TARGET,
    categorical=CATEGORIES,
    numeric=NUMERIC,
    log_target=True,
    ranges=RANGES,
    transform=TRANSFORM,
)


def read_csv(path: Path | str) -> pd.DataFrame:
    return tabular.read_table(Path(path).read_bytes(), str(path))


def validate(frame: pd.DataFrame, path: Path | str):
    return tabular.validate(frame, SPEC, str(path))


def transform(
    frame: pd.DataFrame,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None = None,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    return tabular.transform(frame, SPEC, seed, val_fraction, test_fraction, limit_rows)
