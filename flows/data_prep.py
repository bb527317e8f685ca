"""Data prep flows: source → validate → transform → split → versioned Parquet.

``prepare-data`` prepares the datasets it is given, each through its own flow (``prepare-mnist``,
``prepare-diamonds``); ``prepare-tabular`` prepares a user's own tabular regression dataset.
Sources are local paths or ``s3://`` URIs: MNIST as the bundled pickle or the four standard IDX
files, tabular data as CSV or Parquet. The store (``SKYTRAIN_DATA_STORE``) is a local folder or
``s3://bucket/prefix``.

The version id is a content hash of the source and the transform parameters. Every version gets
a validation report (rule, field, status, count) in its manifest and as a Prefect artifact
``validation-<dataset>``: schema, ranges, NaN, duplicates, class balance, and drift against the
previous version of the same dataset. A failed rule raises ``DataValidationError`` (file, field,
rule) before anything is written, and is never retried; reading the source and publishing the
version are retried on transient I/O errors (``flows/operations.py``). ``allow_drift`` turns drift
failures into warnings, for a shift you expect.

Two lines of reuse: the build task's result is cached by Prefect on its inputs (the source's
sha256, the parameters, the store, the task's code) and persisted, so a rerun in a new process
returns the version without reading more than the source's hash; a version that disappeared
since is rebuilt (the cache is refreshed whenever the version is not in the store). Behind it, a
build that finds the content-addressed version already written reuses it. ``force`` rebuilds the
version and replaces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.utilities.annotations import quote
from pydantic import Field

from flows.datasets import diamonds, idx, mnist, quality, sources, tabular
from flows.datasets.store import existing_version, previous_manifest, version_id, write_version
from flows.datasets.tabular import TabularSpec
from flows.datasets.validation import DataValidationError
from flows.operations import io_task
from flows.parameters import ALL_DATASETS, DatasetName, LimitRows, Seed, described
from ray_jobs.settings import Settings

SOURCE_TIMEOUT_SECONDS = 600  # hashing or reading one source file
PUBLISH_TIMEOUT_SECONDS = 1800  # writing a version's Parquet files and publishing its manifest
DATASET_CACHE = INPUTS + TASK_SOURCE
CACHE_EXPIRATION = timedelta(days=30)
PICKLE_SUFFIXES = (".pkl", ".pkl.gz", ".pickle", ".pickle.gz")
MNIST_IDX_FILES = (*idx.TRAIN_FILES, *idx.TEST_FILES)

Datasets = Annotated[list[DatasetName], Field(min_length=1, description="Datasets to prepare: mnist, diamonds.")]
ValSize = Annotated[
    int, Field(ge=1, le=59_999, description="MNIST validation images, carved by seed from the official 60k train set.")
]
ValFraction = Annotated[float, Field(gt=0, lt=1, description="Fraction of rows for validation (tabular data).")]
TestFraction = Annotated[float, Field(gt=0, lt=1, description="Fraction of rows for test (tabular data).")]
MnistSource = Annotated[
    str | None,
    Field(
        description="MNIST source, a local path or s3:// URI: a pickle (.pkl.gz, checked against "
        "SKYTRAIN_MNIST_SHA256) or a folder / prefix with the four IDX files; empty: SKYTRAIN_MNIST_SOURCE, "
        "else the bundled pickle."
    ),
]
DiamondsSource = Annotated[
    str | None,
    Field(
        description="Diamonds CSV or Parquet, local or s3://; empty: SKYTRAIN_DIAMONDS_SOURCE, else the bundled CSV."
    ),
]
Force = Annotated[bool, Field(description="Rebuild the version and replace it, even when it exists or is cached.")]
AllowDrift = Annotated[
    bool,
    Field(description="Report drift against the previous version as a warning instead of failing (an expected shift)."),
]


def _dataset_ref(location: str, dataset: str, version: str, reused: bool) -> dict[str, Any]:
    return {"dataset": dataset, "version": version, "path": location, "reused": reused}


@io_task("hash-source", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def hash_source(location: str, files: tuple[str, ...] = ()) -> str:
    """A source file's sha256, or one hash of the named files in a source folder / prefix."""
    return sources.files_sha256(location, files) if files else sources.sha256(location)


@io_task("read-source", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def read_source(location: str) -> bytes:
    return sources.read_bytes(location)


@io_task("read-source-files", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def read_source_files(location: str, names: tuple[str, ...]) -> dict[str, bytes | Exception]:
    """The named files of a source folder or prefix, in one task run rather than one per file (each
    run is ~20 ms of the Prefect server's CPU here). A file that is missing or refused is returned
    as its error, raised when the reader asks for it: the reader reports the files in its order."""
    found: dict[str, bytes | Exception] = {}
    for name in names:
        try:
            found[name] = sources.read_bytes(sources.join(location, name))
        except (FileNotFoundError, DataValidationError) as error:
            found[name] = error
    return found


@io_task("read-mnist-pickle", timeout_seconds=SOURCE_TIMEOUT_SECONDS)
def read_mnist(location: str, expected_sha256: str) -> tuple[bytes, str]:
    return mnist.read_verified(location, expected_sha256)


@io_task("publish-dataset-version", timeout_seconds=PUBLISH_TIMEOUT_SECONDS)
def publish(store: str, dataset: str, version: str, tables: dict, manifest: dict, replace: bool) -> str:
    return write_version(store, dataset, version, tables, manifest, replace=replace)


def mnist_format(location: str) -> str:
    """``pickle`` for a pickle file, ``idx`` for a folder / prefix of IDX files."""
    return "pickle" if location.lower().endswith(PICKLE_SUFFIXES) else "idx"


def _source_manifest(location: str, sha256: str, params: dict, transform: str, kind: str) -> dict[str, Any]:
    return {
        "source": {"path": location, "sha256": sha256, "format": kind},
        "params": params,
        "transform": transform,
        "created_at": datetime.now(UTC).isoformat(),
    }


def _thresholds(settings: Settings) -> quality.DriftThresholds:
    return quality.DriftThresholds(
        max_mean_shift=settings.drift_max_mean_shift,
        max_std_ratio=settings.drift_max_std_ratio,
        max_label_psi=settings.drift_max_label_psi,
        min_rows=settings.drift_min_rows,
    )


def _publish_report(report: quality.Report, dataset: str, version: str) -> None:
    create_markdown_artifact(
        key=f"validation-{dataset}",
        markdown=report.markdown(f"Validation of {dataset} version {version}"),
        description=f"{dataset} {version}: {report.status}",
    )


@contextmanager
def _reported(dataset: str, version: str) -> Iterator[None]:
    """A failed validation still publishes its report (the artifact), then fails the task."""
    try:
        yield
    except DataValidationError as error:
        if (report := getattr(error, "report", None)) is not None:
            _publish_report(report, dataset, version)
        raise


def _finish(
    report: quality.Report,
    store: str,
    dataset: str,
    version: str,
    tables: dict,
    manifest: dict[str, Any],
    *,
    allow_drift: bool,
    replace: bool,
) -> dict[str, Any]:
    """Drift against the previous version, the report, then (every rule passed) the version itself."""
    previous = previous_manifest(store, dataset, version)
    quality.drift(
        report,
        previous.get("profile") if previous else None,
        manifest["profile"],
        _thresholds(Settings()),
        previous_version=previous["version"] if previous else None,
        enforce=not allow_drift,
    )
    report.raise_for_failures()
    _publish_report(report, dataset, version)
    manifest["validation"] = report.to_dict()
    # quote: Prefect would otherwise walk every value of the tables and the manifest (784 pixels'
    # profile) looking for futures to resolve and inputs to record, twice: ~0.05 s a version here.
    location = publish(store, dataset, version, quote(tables), quote(manifest), replace)
    get_run_logger().info("%s version %s written to %s (validation: %s)", dataset, version, location, report.status)
    return _dataset_ref(location, dataset, version, reused=False)


def _cached_build(name: str):
    """A version's build, cached on its inputs and persisted (JSON) in Prefect's result storage."""
    return task(
        name=name,
        cache_policy=DATASET_CACHE,
        cache_expiration=CACHE_EXPIRATION,
        persist_result=True,
        result_serializer="json",
    )


def _reuse(store: str, dataset: str, version: str, force: bool) -> dict[str, Any] | None:
    if not force and (found := existing_version(store, dataset, version)):
        get_run_logger().info("%s version %s exists at %s: reusing it", dataset, version, found)
        return _dataset_ref(found, dataset, version, reused=True)
    return None


def _read_mnist_splits(location: str, kind: str, sha256: str) -> tuple[dict, bool]:
    """The source's splits, and whether their images are 8-bit pixels (IDX's; the pickle's when every
    pixel is a whole multiple of 1/256, as MNIST's are): ``mnist.prepare(..., eight_bit=...)``."""
    if kind == "pickle":
        raw, _ = read_mnist(location, sha256)
        return mnist.parse_eight_bit(raw, location)

    files = read_source_files(location, MNIST_IDX_FILES)

    def read(name: str) -> bytes:
        if isinstance(content := files[name], Exception):
            raise content
        return content

    return idx.mnist_splits(read, location, eight_bit=True), True


@_cached_build("build-mnist-version")
def build_mnist_version(
    source: str,
    sha256: str,
    kind: str,
    seed: int,
    val_size: int,
    limit_rows: int | None,
    store: str,
    version: str,
    force: bool = False,
    allow_drift: bool = False,
) -> dict:
    """Read (a pickle's hash verified again), validate, transform and publish one MNIST version."""
    if reused := _reuse(store, mnist.NAME, version, force):
        return reused
    settings = Settings()
    with _reported(mnist.NAME, version):
        splits, eight_bit = _read_mnist_splits(source, kind, sha256)
        report, tables, manifest = mnist.prepare(
            splits,
            source,
            seed=seed,
            val_size=val_size,
            limit_rows=limit_rows,
            min_class_share=settings.min_class_share,
            max_duplicate_fraction=settings.max_duplicate_fraction,
            eight_bit=eight_bit,
        )
        params = {"seed": seed, "val_size": val_size, "limit_rows": limit_rows}
        manifest |= _source_manifest(source, sha256, params, mnist.TRANSFORM, kind)
        return _finish(report, store, mnist.NAME, version, tables, manifest, allow_drift=allow_drift, replace=force)


@_cached_build("build-tabular-version")
def build_tabular_version(
    spec: dict,
    source: str,
    sha256: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None,
    store: str,
    version: str,
    force: bool = False,
    allow_drift: bool = False,
) -> dict:
    """Read, validate, transform and publish one version of a tabular dataset (``spec``)."""
    dataset = TabularSpec(**_spec_from_json(spec))
    if reused := _reuse(store, dataset.name, version, force):
        return reused
    with _reported(dataset.name, version):
        frame = tabular.read_table(read_source(source), source)
        report = tabular.validate(frame, dataset, source, max_duplicate_fraction=Settings().max_duplicate_fraction)
        tables, manifest = tabular.transform(frame, dataset, seed, val_fraction, test_fraction, limit_rows)
        params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit_rows": limit_rows}
        manifest |= _source_manifest(
            source, sha256, params, dataset.transform, "parquet" if tabular.is_parquet(source) else "csv"
        )
        return _finish(report, store, dataset.name, version, tables, manifest, allow_drift=allow_drift, replace=force)


def _spec_json(spec: TabularSpec) -> dict[str, Any]:
    """The spec as plain JSON: an input of the cached build (and so of its cache key)."""
    return asdict(spec) | {"categorical": {k: list(v) if v else None for k, v in spec.categorical.items()}}


def _spec_from_json(data: dict[str, Any]) -> dict[str, Any]:
    categorical = {k: tuple(v) if v else None for k, v in data["categorical"].items()}
    numeric = tuple(data["numeric"]) if data.get("numeric") else None
    return {**data, "categorical": categorical, "numeric": numeric}


def _build(build, settings: Settings, dataset: str, version: str, force: bool, **inputs: Any) -> dict[str, Any]:
    """Run a cached build; a cache entry is only trusted while its version is in the store."""
    store = settings.data_store
    present = existing_version(store, dataset, version) is not None
    runner = build if present and not force else build.with_options(refresh_cache=True)
    state = runner(store=store, version=version, force=force, **inputs, return_state=True)
    ref = state.result()  # raises the build's error
    if state.name == "Cached":
        get_run_logger().info("%s version %s: cached result of an earlier run, at %s", dataset, version, ref["path"])
        ref = {**ref, "reused": True}
    return ref


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 (train needs rows), got {val_fraction} + {test_fraction}"
        )


def _prepare_tabular(
    spec: TabularSpec,
    location: str,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    limit_rows: int | None,
    force: bool,
    allow_drift: bool,
) -> dict:
    _check_fractions(val_fraction, test_fraction)
    settings = Settings()
    sha256 = hash_source(location)
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit_rows": limit_rows}
    described_spec = _spec_json(spec)
    version = version_id(sha256, {**params, "transform": spec.transform, "spec": described_spec})
    return _build(
        build_tabular_version,
        settings,
        spec.name,
        version,
        force,
        spec=described_spec,
        source=location,
        sha256=sha256,
        allow_drift=allow_drift,
        **params,
    )


@flow(name="prepare-mnist", log_prints=True)
@described
def prepare_mnist(
    seed: Seed = 42,
    val_size: ValSize = 5000,
    limit_rows: LimitRows = None,
    source: MnistSource = None,
    force: Force = False,
    allow_drift: AllowDrift = False,
) -> dict:
    """Prepare an MNIST dataset version: official 10k test set, val carved from train by seed."""
    settings = Settings()
    location = source or settings.mnist_location()
    kind = mnist_format(location)
    if kind == "pickle":
        sha256 = hash_source(location)
        # The pickle's hash must match before anything opens it; it is also the version's source hash.
        mnist.check_sha256(location, sha256, settings.mnist_sha256)
    else:
        sha256 = hash_source(location, MNIST_IDX_FILES)
    params = {"seed": seed, "val_size": val_size, "limit_rows": limit_rows}
    version = version_id(sha256, {**params, "transform": mnist.TRANSFORM})
    return _build(
        build_mnist_version,
        settings,
        mnist.NAME,
        version,
        force,
        source=location,
        sha256=sha256,
        kind=kind,
        allow_drift=allow_drift,
        **params,
    )


@flow(name="prepare-diamonds", log_prints=True)
@described
def prepare_diamonds(
    seed: Seed = 42,
    val_fraction: ValFraction = 0.1,
    test_fraction: TestFraction = 0.1,
    limit_rows: LimitRows = None,
    source: DiamondsSource = None,
    force: Force = False,
    allow_drift: AllowDrift = False,
) -> dict:
    """Prepare the diamonds dataset version: one-hot categories, log price, train-only scaling."""
    return _prepare_tabular(
        diamonds.SPEC,
        source or Settings().diamonds_location(),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        limit_rows=limit_rows,
        force=force,
        allow_drift=allow_drift,
    )


DatasetNameField = Annotated[
    str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Name of the dataset in the store (a-z, 0-9, -).")
]
TabularSource = Annotated[str, Field(min_length=1, description="CSV or Parquet file, a local path or s3:// URI.")]
TargetColumn = Annotated[str, Field(min_length=1, description="The column to predict (numeric).")]
CategoricalColumns = Annotated[
    list[str], Field(description="Columns holding categories (one-hot encoded; levels learned from the data).")
]
NumericColumns = Annotated[
    list[str] | None, Field(description="Numeric feature columns; empty: every column but the target and categories.")
]
LogTarget = Annotated[bool, Field(description="Train on log(target); the target must then be above 0.")]


@flow(name="prepare-tabular", log_prints=True)
@described
def prepare_tabular(
    source: TabularSource,
    target: TargetColumn,
    dataset: DatasetNameField,
    categorical: CategoricalColumns = [],  # noqa: B006 (Prefect parameters: a literal default for the UI)
    numeric: NumericColumns = None,
    log_target: LogTarget = False,
    seed: Seed = 42,
    val_fraction: ValFraction = 0.1,
    test_fraction: TestFraction = 0.1,
    limit_rows: LimitRows = None,
    force: Force = False,
    allow_drift: AllowDrift = False,
) -> dict:
    """Prepare a version of your own tabular regression dataset from a CSV or Parquet file."""
    spec = TabularSpec(
        name=dataset,
        target=target,
        categorical=dict.fromkeys(categorical),
        numeric=tuple(numeric) if numeric else None,
        log_target=log_target,
    )
    return _prepare_tabular(
        spec,
        source,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        limit_rows=limit_rows,
        force=force,
        allow_drift=allow_drift,
    )


@flow(name="prepare-data", log_prints=True)
@described
def prepare_data(
    datasets: Datasets = ALL_DATASETS,
    seed: Seed = 42,
    limit_rows: LimitRows = None,
    mnist_val_size: ValSize = 5000,
    diamonds_val_fraction: ValFraction = 0.1,
    diamonds_test_fraction: TestFraction = 0.1,
    force: Force = False,
    allow_drift: AllowDrift = False,
) -> dict[str, dict]:
    """Prepare each chosen dataset (one subflow each); returns {dataset: its version's ref}.

    A ref is ``{"dataset", "version", "path", "reused"}``; ``reused`` is true when the version
    existed already (or came from the cache of an earlier run).
    """
    logger = get_run_logger()
    refs = {}
    for name in dict.fromkeys(datasets):
        if name == "mnist":
            refs[name] = prepare_mnist(
                seed=seed, val_size=mnist_val_size, limit_rows=limit_rows, force=force, allow_drift=allow_drift
            )
        else:
            refs[name] = prepare_diamonds(
                seed=seed,
                val_fraction=diamonds_val_fraction,
                test_fraction=diamonds_test_fraction,
                limit_rows=limit_rows,
                force=force,
                allow_drift=allow_drift,
            )
        ref = refs[name]
        logger.info("%s: version %s at %s%s", name, ref["version"], ref["path"], " (reused)" if ref["reused"] else "")
    return refs


if __name__ == "__main__":
    prepare_data()
