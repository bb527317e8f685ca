"""Immutable, content-addressed dataset versions on the local store.

Layout: ``<store>/<dataset>/<version>/{train,val,test}.parquet`` plus ``manifest.json``.
A version is written into a hidden temporary folder and renamed into place in one step, so a
reader sees either a complete version or none; a folder without a manifest is not a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_jobs.dataset import MANIFEST


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_id(source_sha256: str, params: dict[str, Any]) -> str:
    """Content hash of the source and the transform parameters: same inputs, same version."""
    payload = json.dumps({"source_sha256": source_sha256, "params": params}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def version_dir(store: Path, dataset: str, version: str) -> Path:
    return Path(store) / dataset / version


def existing_version(store: Path, dataset: str, version: str) -> Path | None:
    path = version_dir(store, dataset, version)
    return path if (path / MANIFEST).is_file() else None


def latest_version(store: Path, dataset: str) -> str:
    """The most recently written complete version of a dataset."""
    root = Path(store) / dataset
    versions = sorted(
        (p for p in root.glob("*") if (p / MANIFEST).is_file()),
        key=lambda p: (p / MANIFEST).stat().st_mtime,
    )
    if not versions:
        raise FileNotFoundError(f"no version of dataset '{dataset}' in {root}: run data prep first")
    return versions[-1].name


def write_version(
    store: Path, dataset: str, version: str, splits: dict[str, pa.Table], manifest: dict[str, Any]
) -> Path:
    """Write all splits and the manifest, then publish the version with one atomic rename."""
    final = version_dir(store, dataset, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        for name, table in splits.items():
            pq.write_table(table, staging / f"{name}.parquet")
        manifest = {**manifest, "dataset": dataset, "version": version}
        manifest["splits"] = {name: {"rows": table.num_rows} for name, table in splits.items()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.rename(staging, final)
        except OSError:
            if existing_version(store, dataset, version) is None:
                raise
            # Another writer published the same content-addressed version first: theirs stands.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
