"""The ``batch_inference`` flow on a real local Ray, Prefect API, MLflow store and S3 (moto).

Nothing is trained: a diamonds regressor fitted by least squares and an untrained small CNN are
registered directly. Their accuracy does not matter; what is checked is that every prediction the
flow writes equals ``mlflow.pyfunc``'s on the same row, that each input row is either scored or
reported with its reason, and that a failed run leaves nothing behind.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from ray.util.state import list_tasks

from flows.batch_inference import batch_inference
from flows.registry import CHAMPION
from ray_jobs import batch_predict, storage
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.models import MnistCNN, spec_for
from ray_jobs.scoring import Scoring
from ray_jobs.settings import Settings
from tests.registered import least_squares, register, small_diamonds, small_mnist

REGRESSOR, CNN = spec_for("diamonds-regressor"), spec_for("mnist-cnn")
IMAGES = 300  # test images; the CNN's dataset version is built from random uint8 images


def write_idx(path: Path, images: np.ndarray, magic: int = 0x00000803, cut: int = 0) -> Path:
    """An IDX3 image file, gzipped, written by hand; ``cut`` drops that many bytes from its end."""
    header = np.array([magic, *images.shape], ">u4").tobytes()
    raw = header + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw[: len(raw) - cut]))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, prefect_api, local_ray):
    """A state directory for the module: a diamonds and an MNIST version, three registered versions.

    Regressor v1 (champion); CNN v1 and v2 (champion), untrained, from different seeds.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_STATE_DIR", str(tmp_path_factory.mktemp("batch-inference") / "state"))
        settings = Settings()
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        gems, (digits, test_images) = small_diamonds(settings), small_mnist(settings, IMAGES)
        client = mlflow.MlflowClient()
        regressor = register(least_squares(gems), REGRESSOR, gems, {"arch": "linear", "hidden": 0})
        client.set_registered_model_alias(REGRESSOR.registered_name, CHAMPION, regressor)
        for seed in (0, 1):
            torch.manual_seed(seed)
            cnn = register(MnistCNN(width=8, depth=1).eval(), CNN, digits, {"width": 8, "depth": 1})
        client.set_registered_model_alias(CNN.registered_name, CHAMPION, cnn)
        yield {"settings": settings, "diamonds": gems, "mnist": digits, "test_images": test_images}


def pyfunc(spec, version: str, features: np.ndarray) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(f"models:/{spec.registered_name}/{version}").predict(features))


def read(location: str) -> pa.Table:
    filesystem, path = storage.resolve(location)
    return pq.read_table(path, filesystem=filesystem)


def probabilities(predictions: pa.Table) -> np.ndarray:
    return np.stack(predictions.column("probabilities").to_numpy(zero_copy_only=False))


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_the_champion_scores_parquet_and_bad_rows_are_reported(store, tmp_path, monkeypatch):
    test = pq.read_table(store["diamonds"] / "test.parquet").drop_columns(["log_price"])
    # Chunks of two model batches (256 rows) instead of up to 32 MiB: the rows cross several scoring tasks.
    monkeypatch.setattr(batch_predict, "CHUNK_BYTES", 2 * 128 * 4 * test.num_columns)
    carat, depth, x = (test.column(c).to_numpy().copy() for c in ("carat", "depth", "x"))
    carat[3], x[11] = np.nan, np.inf
    rows = test.set_column(0, "carat", pa.array(carat)).set_column(test.schema.get_field_index("x"), "x", pa.array(x))
    nulls = np.arange(len(depth)) == 7
    rows = rows.set_column(rows.schema.get_field_index("depth"), "depth", pa.array(depth, mask=nulls))
    pq.write_table(rows, tmp_path / "input.parquet")

    summary = batch_inference(model="diamonds-regressor", input_path=str(tmp_path / "input.parquet"), batch_size=128)
    assert summary["rows_in"] > 2 * 256  # three chunks at least
    # Each read block is scored as one chunk: none is bundled with the next into one task.
    assert summary["chunk_rows"] == 256 and summary["chunks"] == -(-summary["rows_in"] // 256)

    assert summary["model_version"] == "1" and summary["alias"] == CHAMPION
    assert summary["output"].startswith(str(store["settings"].state_dir / "predictions" / "diamonds-regressor"))
    assert summary["output"].endswith("-v1")
    assert summary["rows_in"] == len(rows) == summary["rows_scored"] + summary["rows_rejected"]
    rejected = read(summary["rejected_path"]).to_pydict()
    assert rejected == {
        "row": [3, 7, 11],
        "reason": [
            "column 'carat' holds a NaN or infinite value",
            "column 'depth' is null",
            "column 'x' holds a NaN or infinite value",
        ],
    }
    predictions = read(summary["predictions_path"])
    valid = np.setdiff1d(np.arange(len(rows)), [3, 7, 11])
    assert predictions.column("row").to_numpy().tolist() == valid.tolist()
    features, _ = load_split(store["diamonds"], "test")
    expected = pyfunc(REGRESSOR, "1", features[valid])
    np.testing.assert_allclose(predictions.column("log_price").to_numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(predictions.column("price").to_numpy(), np.exp(expected), rtol=1e-5)
    assert set(predictions.column("model_version").to_pylist()) == {"1"}
    assert set(predictions.column("model_name").to_pylist()) == {REGRESSOR.registered_name}
    key = ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=["batch-inference-diamonds-regressor"]))
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_latest_artifacts(artifact_filter=key)
    assert "| rejected | 3 |" in artifact.data and "| 7 | column 'depth' is null |" in artifact.data


def test_a_parquet_input_is_read_in_a_block_per_chunk(store, tmp_path):
    """Ray Data's default cuts a read into ~200 blocks, each a round trip to the driver: the input
    arrives instead in a block per scoring chunk, each handed on as it is read (not read whole and
    cut afterwards, which held a big file's first chunk back), its rows in the files' order."""
    settings, manifest = store["settings"], read_manifest(store["diamonds"])
    scoring = Scoring.of(REGRESSOR.registered_name, "1", manifest, settings.mlflow_tracking_uri)
    source = store["diamonds"] / "test.parquet"
    features, _ = load_split(store["diamonds"], "test")
    columns = manifest["feature_columns"]

    files = batch_predict.parquet_files(str(source), scoring)
    rows = files.count_rows()
    blocks = batch_predict.parquet_dataset(files, scoring, rows, chunk=128).materialize()

    assert rows == len(features) > 4 * 128
    sizes = [block.num_rows for block in blocks.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sizes == [128] * (rows // 128) + ([rows % 128] if rows % 128 else [])
    assert "ReadParquet" in blocks.stats() and "SplitBlocks" not in blocks.stats()
    np.testing.assert_array_equal(blocks.to_pandas()[columns].to_numpy(np.float32), features)

    # A folder of three files, fewer blocks than files: still every row, in the files' order.
    table = pq.read_table(source)
    for part, start in enumerate(range(0, rows, 200)):
        pq.write_table(table.slice(start, 200), tmp_path / f"part-{part}.parquet")
    files = batch_predict.parquet_files(str(tmp_path), scoring)
    assert files.count_rows() == len(features) and len(files.files) == 3
    dataset = batch_predict.parquet_dataset(files, scoring, len(features), chunk=1024)
    np.testing.assert_array_equal(dataset.to_pandas()[columns].to_numpy(np.float32), features)


def test_a_local_ray_reads_a_multi_file_input_one_file_at_a_time(store, tmp_path):
    """Read tasks at once started worker processes of their own beside the scoring tasks' on a
    local Ray (``read_tasks_at_once``): with the default one CPU kept for reading, the four files'
    read tasks (one per chunk, at most one per file) run one after the other (Ray's own task
    records), and every row is scored, in order."""
    settings, manifest = store["settings"], read_manifest(store["diamonds"])
    scoring = Scoring.of(REGRESSOR.registered_name, "1", manifest, settings.mlflow_tracking_uri)
    table = pq.read_table(store["diamonds"] / "test.parquet")
    quarter = -(-table.num_rows // 4)
    (tmp_path / "in").mkdir()
    for part in range(4):
        pq.write_table(table.slice(part * quarter, quarter), tmp_path / "in" / f"part-{part}.parquet")
    assert batch_predict.read_tasks_at_once(settings) == 1

    since_ms = time.time() * 1000
    summary = batch_predict.predict(
        str(tmp_path / "in"), str(tmp_path / "out"), scoring, batch_size=256, settings=settings
    )

    assert summary["rows_scored"] == table.num_rows
    predicted = pq.read_table(tmp_path / "out" / batch_predict.PREDICTIONS)
    assert predicted.column("row").to_pylist() == list(range(table.num_rows))
    expected = min(4, -(-table.num_rows // summary["chunk_rows"]))  # no more read tasks than chunks
    assert expected >= 2
    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + 60  # Ray reports task events about once a second
    while True:
        reads = [
            task
            for task in list_tasks(address=address, filters=[("name", "=", "ReadParquet")], detail=True, limit=10_000)
            if task.state == "FINISHED" and task.start_time_ms and task.start_time_ms >= since_ms
        ]
        if len(reads) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(reads) == expected, [(task.start_time_ms, task.end_time_ms) for task in reads]
    spans = sorted((task.start_time_ms, task.end_time_ms) for task in reads)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def test_a_given_version_scores_images_from_s3_and_from_idx_alike(store, tmp_path, s3_bucket, monkeypatch):
    """Version 1 (not the champion): Parquet images with bad rows on S3 (PyTorch), and the same images
    as IDX (its ONNX export on onnxruntime)."""
    test = pq.read_table(store["mnist"] / "test.parquet")
    images = [np.asarray(image, np.float32) for image in test.column("image").to_pylist()]
    images[5], images[9][100], images[12] = images[5][:-1], np.nan, None
    filesystem, _ = storage.resolve(f"s3://{s3_bucket}")
    table = pa.table({"image": pa.array(images, pa.list_(pa.float32()))})
    pq.write_table(table, f"{s3_bucket}/in/images.parquet", filesystem=filesystem)
    idx = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", store["test_images"])

    def score(source: str, output: str) -> dict:
        return batch_inference(model="mnist-cnn", input_path=source, output_path=output, version="1", concurrency=1)

    monkeypatch.setenv("SKYTRAIN_INFERENCE_RUNTIME", "torch")
    from_s3 = score(f"s3://{s3_bucket}/in/images.parquet", f"s3://{s3_bucket}/out/run")
    monkeypatch.setenv("SKYTRAIN_INFERENCE_RUNTIME", "auto")  # the version has an export: onnx
    from_idx = score(str(idx), str(tmp_path / "idx"))

    assert (from_s3["input_format"], from_idx["input_format"]) == ("parquet", "idx")
    assert from_s3["model_version"] == from_idx["model_version"] == "1" and from_s3["alias"] is None
    assert (from_s3["runtime"], from_idx["runtime"]) == ("torch", "onnx")
    assert read(f"s3://{s3_bucket}/out/run/rejected.parquet").to_pydict() == {
        "row": [5, 9, 12],
        "reason": [
            "column 'image' does not hold 784 values",
            "column 'image' holds a NaN or infinite value",
            "column 'image' is null",
        ],
    }
    listing = filesystem.get_file_info(pafs.FileSelector(s3_bucket, recursive=True))
    files = {info.path.removeprefix(f"{s3_bucket}/") for info in listing if info.is_file}
    assert files == {"in/images.parquet", "out/run/predictions.parquet", "out/run/rejected.parquet"}
    assert not [info.path for info in listing if "staging" in info.path]

    features, _ = load_split(store["mnist"], "test")
    expected = softmax(pyfunc(CNN, "1", features))
    assert not np.allclose(expected, softmax(pyfunc(CNN, "2", features)), atol=1e-3)  # the champion differs
    by_idx, by_s3 = read(from_idx["predictions_path"]), read(from_s3["predictions_path"])
    assert from_idx["rows_scored"] == by_idx.num_rows == IMAGES and from_idx["rows_rejected"] == 0
    assert from_s3["rows_in"] == IMAGES and from_s3["rows_scored"] == by_s3.num_rows == IMAGES - 3
    np.testing.assert_allclose(probabilities(by_idx), expected, atol=1e-5)
    np.testing.assert_allclose(by_idx.column("probability").to_numpy(), expected.max(axis=1), atol=1e-5)
    assert by_idx.column("predicted").to_numpy().tolist() == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(probabilities(by_s3), probabilities(by_idx.take(by_s3.column("row"))), atol=1e-6)
    assert set(by_s3.column("model_version").to_pylist()) == set(by_idx.column("model_version").to_pylist()) == {"1"}


def test_unusable_inputs_fail_naming_the_file_and_write_nothing(store, tmp_path):
    test = pq.read_table(store["diamonds"] / "test.parquet")
    missing = tmp_path / "missing-carat.parquet"
    pq.write_table(test.drop_columns(["carat"]), missing)
    hopeless = tmp_path / "all-nan.parquet"
    pq.write_table(test.slice(0, 4).set_column(0, "carat", pa.array([np.nan] * 4)), hopeless)
    label_file = write_idx(tmp_path / "labels.gz", store["test_images"], magic=0x00000801)
    truncated = write_idx(tmp_path / "truncated.gz", store["test_images"], cut=100)
    cases = [
        ("diamonds-regressor", missing, f"{missing}: field 'carat' breaks rule 'column present'"),
        (
            "diamonds-regressor",
            hopeless,
            f"{hopeless}: field 'rows' breaks rule 'at least one valid row to score': all 4",
        ),
        ("mnist-cnn", label_file, f"{label_file}: field 'magic' breaks rule .*found 0x00000801"),
        ("mnist-cnn", truncated, f"{truncated}: field 'size' breaks rule .*truncated"),
    ]
    out = tmp_path / "out"
    for model, path, message in cases:
        with pytest.raises(ValueError, match=message):
            batch_inference(model=model, input_path=str(path), output_path=str(out / path.stem), concurrency=1)
    assert not out.exists() or not list(out.iterdir())  # not even a staging folder is left
