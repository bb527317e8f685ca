"""Data prep flows: source → validate → transform → split → versioned Parquet.

``prepare-data`` prepares the datasets it is given, each through its own flow (``prepare-mnist``,
``prepare-diamonds``). The version id is a content hash of the source file and the transform
parameters. Bad input raises ``DataValidationError`` (file, field, rule) before anything is
written, and is never retried; reading the source and publishing the version are retried on
transient I/O errors (``flows/operations.py``).

Two lines of reuse: the build task's result is cached by Prefect on its inputs (the source's
sha256, the parameters, the store, the task's code) and persisted, so a rerun in a new process
returns the version without reading more than the source's hash; a version whose folder was
deleted since is rebuilt (the cache is refreshed whenever the version is not on disk). Behind
it, a build that finds the content-addressed version already written reuses it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NONE, TASK_SOURCE
from pydantic import Field

from flows.datasets import diamonds, mnist
from flows.datasets.store import existing_version, file_sha256, version_id, write_version
from flows.datasets.validation import require
from flows.operations import io_task
from flows.parameters import ALL_DATASETS, DatasetName, LimitRows, Seed, described
from ray_jobs.settings import Settings

SOURCE_TIMEOUT_SECONDS = 600  # hashing or reading one source file
PUBLISH_TIMEOUT_SECONDS = 1800  # writing a version's Parquet files and renaming them into place
DATASET_CACHE = INPUTS + TASK_SOURCE
CACHE_EXPIRATION = timedelta(days=30)

Datasets = Annotated[list[DatasetName], Field(min_length=1, description="Datasets to prepare: mnist, diamonds.")]
ValSize = Annotated[
    int, Field(ge=1, le=59_999, description="MNIST validation images, carved by seed from the official 60k train set.")
]
ValFraction = Annotated[float, Field(gt=0, lt=1, description="Diamonds: fraction of rows for validation.")]
TestFraction = Annotated[float, Field(gt=0, lt=1, description="Diamonds: fraction of rows for test.")]


def _dataset_ref(path: Path, reused: bool) -> dict[str, Any]:
    return {"dataset": path.parent.name, "version": path.name, "path": str(path), "reused": reused}


@io_task("hash-source", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def hash_source(path: Path) -> str:
    require(path.is_file(), path, "file", "exists", "no such file")
    return file_sha256(path)


@io_task("read-mnist", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def read_mnist(path: Path, expected_sha256: str) -> tuple[bytes, str]:
    return mnist.read_verified(path, expected_sha256)


@task(cache_policy=NONE, persist_result=False)
def load_mnist(raw: bytes, path: Path) -> dict:
    splits = mnist.parse(raw, path)
    mnist.validate(splits, path)
    return splits


@io_task("load-diamonds", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def load_diamonds(path: Path):
    frame = diamonds.read_csv(path)
    diamonds.validate(frame, path)  # a DataValidationError is bad input: never retried
    return frame


@io_task("publish-dataset-version", timeout_seconds=PUBLISH_TIMEOUT_SECONDS)
def publish(store: Path, dataset: str, version: str, tables: dict, manifest: dict) -> Path:
    return write_version(store, dataset, version, tables, manifest)


def _source_manifest(path: Path, sha256: str, params: dict, transform: str) -> dict[str, Any]:
    return {
        "source": {"path": str(path), "sha256": sha256},
        "params": params,
        "transform": transform,
        "created_at": datetime.now(UTC).isoformat(),
    }


def _cached_build(name: str):
    """A version's build, cached on its inputs and persisted (JSON) in Prefect's result storage."""
    return task(
        name=name,
        cache_policy=DATASET_CACHE,
        cache_expiration=CACHE_EXPIRATION,
        persist_result=True,
        result_serializer="json",
    )


@_cached_build("build-mnist-version")
def build_mnist_version(
    source: str, sha256: str, seed: int, val_size: int, limit_rows: int | None, store: str, version: str
) -> dict:
    """Read (hash verified again), validate, transform and publish one MNIST version; reuse it if written."""
    logger, path = get_run_logger(), Path(source)
    if found := existing_version(Path(store), mnist.NAME, version):
        logger.info("MNIST version %s exists at %s: reusing it", version, found)
        return _dataset_ref(found, reused=True)
    raw, _ = read_mnist(path, sha256)
    splits = load_mnist(raw, path)
    tables, manifest = mnist.transform(splits, seed=seed, val_size=val_size, limit_rows=limit_rows)
    params = {"seed": seed, "val_size": val_size, "limit_rows": limit_rows}
    manifest |= _source_manifest(path, sha256, params, mnist.TRANSFORM)
    published = publish(Path(store), mnist.NAME, version, tables, manifest)
    logger.info("MNIST version %s written to %s", version, published)
    return _dataset_ref(published, reused=False)


@_cached_build("build-diamonds-version")
def build_diamonds_version(
    source: str,
    sha256: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None,
    store: str,
    version: str,
) -> dict:
    """Read, validate, transform and publish one diamonds version; reuse it if written."""
    logger, path = get_run_logger(), Path(source)
    if found := existing_version(Path(store), diamonds.NAME, version):
        logger.info("diamonds version %s exists at %s: reusing it", version, found)
        return _dataset_ref(found, reused=True)
    frame = load_diamonds(path)
    tables, manifest = diamonds.transform(frame, seed, val_fraction, test_fraction, limit_rows)
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit_rows": limit_rows}
    manifest |= _source_manifest(path, sha256, params, diamonds.TRANSFORM)
    published = publish(Path(store), diamonds.NAME, version, tables, manifest)
    logger.info("diamonds version %s written to %s", version, published)
    return _dataset_ref(published, reused=False)


def _build(build, settings: Settings, dataset: str, version: str, **inputs: Any) -> dict[str, Any]:
    """Run a cached build; a cache entry is only trusted while its version is on disk."""
    store = settings.data_store
    on_disk = existing_version(store, dataset, version) is not None
    runner = build if on_disk else build.with_options(refresh_cache=True)
    state = runner(store=str(store), version=version, **inputs, return_state=True)
    ref = state.result()  # raises the build's error
    if state.name == "Cached":
        get_run_logger().info("%s version %s: cached result of an earlier run, at %s", dataset, version, ref["path"])
        ref = {**ref, "reused": True}
    return ref


@flow(name="prepare-mnist", log_prints=True)
@described
def prepare_mnist(seed: Seed = 42, val_size: ValSize = 5000, limit_rows: LimitRows = None) -> dict:
    """Prepare the MNIST dataset version: official 10k test set, val carved from train by seed."""
    settings = Settings()
    source = settings.mnist_path()
    sha256 = hash_source(source)
    # The pickle's hash must match before anything opens it; it is also the version's source hash.
    mnist.check_sha256(source, sha256, settings.mnist_sha256)
    params = {"seed": seed, "val_size": val_size, "limit_rows": limit_rows}
    version = version_id(sha256, {**params, "transform": mnist.TRANSFORM})
    return _build(build_mnist_version, settings, mnist.NAME, version, source=str(source), sha256=sha256, **params)


@flow(name="prepare-diamonds", log_prints=True)
@described
def prepare_diamonds(
    seed: Seed = 42,
    val_fraction: ValFraction = 0.1,
    test_fraction: TestFraction = 0.1,
    limit_rows: LimitRows = None,
) -> dict:
    """Prepare the diamonds dataset version: one-hot categories, log price, train-only scaling."""
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 (train needs rows), got {val_fraction} + {test_fraction}"
        )
    settings = Settings()
    source = settings.diamonds_path()
    sha256 = hash_source(source)
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit_rows": limit_rows}
    version = version_id(sha256, {**params, "transform": diamonds.TRANSFORM})
    return _build(build_diamonds_version, settings, diamonds.NAME, version, source=str(source), sha256=sha256, **params)


@flow(name="prepare-data", log_prints=True)
@described
def prepare_data(
    datasets: Datasets = ALL_DATASETS,
    seed: Seed = 42,
    limit_rows: LimitRows = None,
    mnist_val_size: ValSize = 5000,
    diamonds_val_fraction: ValFraction = 0.1,
    diamonds_test_fraction: TestFraction = 0.1,
) -> dict[str, dict]:
    """Prepare each chosen dataset (one subflow each); returns {dataset: its version's ref}.

    A ref is ``{"dataset", "version", "path", "reused"}``; ``reused`` is true when the version
    existed already (or came from the cache of an earlier run).
    """
    logger = get_run_logger()
    refs = {}
    for name in dict.fromkeys(datasets):
        if name == "mnist":
            refs[name] = prepare_mnist(seed=seed, val_size=mnist_val_size, limit_rows=limit_rows)
        else:
            refs[name] = prepare_diamonds(
                seed=seed,
                val_fraction=diamonds_val_fraction,
                test_fraction=diamonds_test_fraction,
                limit_rows=limit_rows,
            )
        ref = refs[name]
        logger.info("%s: version %s at %s%s", name, ref["version"], ref["path"], " (reused)" if ref["reused"] else "")
    return refs


if __name__ == "__main__":
    prepare_data()
