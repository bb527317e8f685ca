"""Reading a prepared dataset version (a local directory or ``s3://``): manifest and splits as arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_jobs import storage

MANIFEST = "manifest.json"


def read_manifest(version_dir: str | Path) -> dict[str, Any]:
    location = storage.join(version_dir, MANIFEST)
    filesystem, path = storage.resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{location}: not a dataset version (no manifest); run data prep first")
    return json.loads(storage.read_bytes(location))


def load_split(version_dir: str | Path, split: str, manifest: dict[str, Any] | None = None):
    """Features shaped as the model expects (float32) and targets, for one split."""
    manifest = manifest or read_manifest(version_dir)
    filesystem, path = storage.resolve(storage.join(version_dir, f"{split}.parquet"))
    table = pq.read_table(path, filesystem=filesystem)
    columns = manifest["feature_columns"]
    if len(columns) == 1:  # one fixed-size list column holding the whole feature tensor
        values = table.column(columns[0]).combine_chunks().flatten().to_numpy()
    else:
        values = np.column_stack([table.column(c).to_numpy() for c in columns])
    # Copies: Arrow's buffers are read-only, and torch needs writable arrays.
    features = np.array(values, dtype=np.float32).reshape(-1, *manifest["feature_shape"])
    target = np.array(table.column(manifest["target_column"]).to_numpy())
    return features, target
