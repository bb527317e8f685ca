"""Data prep flows, one per dataset: source → validate → transform → split → versioned Parquet.

The version id is a content hash of the source file and the transform parameters, so a rerun
with the same inputs finds the existing version and reuses it. Bad input raises
``DataValidationError`` (file, field, rule) before anything is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.datasets import diamonds, mnist
from flows.datasets.store import existing_version, file_sha256, version_id, write_version
from flows.datasets.validation import require
from ray_jobs.settings import Settings


def _dataset_ref(path: Path, reused: bool) -> dict[str, Any]:
    return {"dataset": path.parent.name, "version": path.name, "path": str(path), "reused": reused}


@task(cache_policy=NONE)
def hash_source(path: Path) -> str:
    require(path.is_file(), path, "file", "exists", "no such file")
    return file_sha256(path)


@task(cache_policy=NONE)
def read_mnist(path: Path, expected_sha256: str) -> tuple[bytes, str]:
    return mnist.read_verified(path, expected_sha256)


@task(cache_policy=NONE)
def load_mnist(raw: bytes, path: Path) -> dict:
    splits = mnist.parse(raw, path)
    mnist.validate(splits, path)
    return splits


@task(cache_policy=NONE)
def load_diamonds(path: Path):
    frame = diamonds.read_csv(path)
    diamonds.validate(frame, path)
    return frame


@task(cache_policy=NONE)
def publish(store: Path, dataset: str, version: str, tables: dict, manifest: dict) -> Path:
    return write_version(store, dataset, version, tables, manifest)


def _source_manifest(path: Path, sha256: str, params: dict, transform: str) -> dict[str, Any]:
    return {
        "source": {"path": str(path), "sha256": sha256},
        "params": params,
        "transform": transform,
        "created_at": datetime.now(UTC).isoformat(),
    }


@flow(name="prepare-mnist", log_prints=True)
def prepare_mnist(seed: int = 42, val_size: int = 5000, limit_rows: int | None = None) -> dict:
    """Prepare the MNIST dataset version: official 10k test set, val carved from train by seed.

    ``limit_rows`` caps every split (quick experiments and tests); it is part of the version id.
    """
    settings, logger = Settings(), get_run_logger()
    source = settings.mnist_path()
    # The pickle is hashed before it is opened; that hash is also the version's source hash.
    raw, sha256 = read_mnist(source, settings.mnist_sha256)
    params = {"seed": seed, "val_size": val_size, "limit_rows": limit_rows}
    version = version_id(sha256, {**params, "transform": mnist.TRANSFORM})
    if found := existing_version(settings.data_store, mnist.NAME, version):
        logger.info("MNIST version %s exists at %s: reusing it", version, found)
        return _dataset_ref(found, reused=True)
    splits = load_mnist(raw, source)
    tables, manifest = mnist.transform(splits, seed=seed, val_size=val_size, limit_rows=limit_rows)
    manifest |= _source_manifest(source, sha256, params, mnist.TRANSFORM)
    path = publish(settings.data_store, mnist.NAME, version, tables, manifest)
    logger.info("MNIST version %s written to %s", version, path)
    return _dataset_ref(path, reused=False)


@flow(name="prepare-diamonds", log_prints=True)
def prepare_diamonds(
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit_rows: int | None = None,
) -> dict:
    """Prepare the diamonds dataset version: one-hot categories, log price, train-only scaling."""
    settings, logger = Settings(), get_run_logger()
    source = settings.diamonds_path()
    sha256 = hash_source(source)
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit_rows": limit_rows}
    version = version_id(sha256, {**params, "transform": diamonds.TRANSFORM})
    if found := existing_version(settings.data_store, diamonds.NAME, version):
        logger.info("diamonds version %s exists at %s: reusing it", version, found)
        return _dataset_ref(found, reused=True)
    frame = load_diamonds(source)
    tables, manifest = diamonds.transform(frame, seed, val_fraction, test_fraction, limit_rows)
    manifest |= _source_manifest(source, sha256, params, diamonds.TRANSFORM)
    path = publish(settings.data_store, diamonds.NAME, version, tables, manifest)
    logger.info("diamonds version %s written to %s", version, path)
    return _dataset_ref(path, reused=False)


if __name__ == "__main__":
    prepare_mnist()
    prepare_diamonds()
