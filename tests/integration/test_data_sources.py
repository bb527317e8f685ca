"""Data prep from real sources: MNIST IDX and tabular files on S3 (moto's server on 127.0.0.1),
versions stored in S3 and trained on through Ray Data, validation reports, drift, ``force``, and a
corpus of broken inputs that each fail with a clear message and leave nothing behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.data_prep import prepare_diamonds, prepare_mnist, prepare_tabular
from flows.datasets import idx, mnist
from flows.datasets.store import versions
from flows.datasets.validation import DataValidationError
from flows.train import train
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_api")


def _mnist_idx_files(train_rows: int, test_rows: int) -> dict[str, bytes]:
    """The four IDX files of a slice of real MNIST (from the bundled pickle, pixels back to bytes)."""
    settings = Settings()
    raw, _ = mnist.read_verified(settings.mnist_location(), settings.mnist_sha256)
    splits = mnist.official(mnist.parse(raw, "bundled"))
    files = {}
    for split, rows in (("train", train_rows), ("test", test_rows)):
        images, labels = splits[split][0][:rows], splits[split][1][:rows]
        pixels = np.rint(images.reshape(-1, 28, 28) * 256).astype(np.uint8)
        images_name, labels_name = idx.MNIST_FILES[split]
        files[images_name] = idx.encode(pixels)
        files[labels_name] = idx.encode(labels.astype(np.uint8))
    return files


def _upload(bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    s3 = boto3.client("s3")
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{bucket}/{prefix}"


def _keys(bucket: str, prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def _artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created) if found else None


def test_mnist_from_idx_in_s3_is_stored_in_s3_and_trained_through_ray_data(
    state_dir, s3_bucket, monkeypatch, local_ray
):
    source = _upload(s3_bucket, "raw/mnist", _mnist_idx_files(train_rows=1500, test_rows=300))
    monkeypatch.setenv("SKYTRAIN_DATA_STORE", f"s3://{s3_bucket}/datasets")

    ref = prepare_mnist(source=source, val_size=300)
    assert ref["path"] == f"s3://{s3_bucket}/datasets/mnist/{ref['version']}" and ref["reused"] is False
    assert _keys(s3_bucket, "datasets/") == [
        f"datasets/mnist/{ref['version']}/{name}"
        for name in ("manifest.json", "test.parquet", "train.parquet", "val.parquet")
    ]
    manifest = read_manifest(ref["path"])
    assert manifest["source"] == {"path": source, "sha256": manifest["source"]["sha256"], "format": "idx"}
    assert manifest["splits"] == {"train": {"rows": 1200}, "val": {"rows": 300}, "test": {"rows": 300}}
    report = manifest["validation"]
    assert report["status"] == "pass" and report["file"] == source
    rules = {(c["field"], c["rule"]) for c in report["checks"]}
    assert ("train.images", "no NaN or infinite pixel") in rules and ("rows", "no duplicate rows") in rules
    assert ("features", "drift against the previous version") in rules  # skipped: the first version
    assert "| no duplicate rows | rows | pass |" in _artifact("validation-mnist").data

    # IDX bytes / 256 are the pickle's own values: the test split is the official one, normalized.
    images, labels = load_split(ref["path"], "test", manifest)
    raw, _ = mnist.read_verified(Settings().mnist_location(), Settings().mnist_sha256)
    official = mnist.parse(raw, "bundled")["test"]
    norm = manifest["normalization"]
    expected = (official[0][:300].reshape(-1, 1, 28, 28) - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, official[1][:300])

    # The train flow finds the latest version in S3 and Ray Data reads it from there.
    result = train(model="mnist-cnn", epochs=1, num_workers=1, hparams={"width": 8})
    run = mlflow.MlflowClient(Settings().mlflow_tracking_uri).get_run(result["run_id"])
    assert run.data.tags["skytrain.dataset_path"] == ref["path"]
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [ref["version"]]
    assert result["metrics"]["test_accuracy"] > 0.5  # 1,200 real digits, one epoch: well above chance
    assert (
        mlflow.MlflowClient().get_model_version(result["registered_model"], result["version"]).run_id == run.info.run_id
    )


def _diamonds_csv(tmp_path: Path, name: str, rows: int = 3000, mutate=None) -> str:
    frame = pd.read_csv(Settings().diamonds_location()).sample(rows, random_state=0).reset_index(drop=True)
    if mutate is not None:
        frame = mutate(frame)
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def test_drift_against_the_previous_version_fails_unless_allowed(state_dir, tmp_path):
    first = prepare_diamonds(source=_diamonds_csv(tmp_path, "v1.csv"))
    skipped = [c for c in read_manifest(first["path"])["validation"]["checks"] if c["status"] == "skip"]
    assert {c["detail"] for c in skipped} == {"no previous version"}

    def heavier(frame):
        frame["carat"] = frame["carat"] * 1.8
        frame["price"] = frame["price"] * 3
        return frame

    shifted = _diamonds_csv(tmp_path, "v2.csv", mutate=heavier)
    with pytest.raises(DataValidationError) as err:
        prepare_diamonds(source=shifted)
    assert (err.value.field, err.value.rule) == ("features", "mean shift at most 0.5 pooled std")
    assert "carat=" in str(err.value) and f"against version {first['version']}" in str(err.value)
    assert versions(Settings().data_store, "diamonds") == [first["version"]], "nothing may be written"
    failed = _artifact("validation-diamonds").data
    assert "| label distribution PSI at most 0.2 | label | fail |" in failed

    second = prepare_diamonds(source=shifted, allow_drift=True)
    report = read_manifest(second["path"])["validation"]
    drift = {
        c["rule"]: c for c in report["checks"] if "drift" in c["rule"] or "PSI" in c["rule"] or "shift" in c["rule"]
    }
    assert drift["mean shift at most 0.5 pooled std"]["status"] == "warn"
    assert drift["label distribution PSI at most 0.2"]["status"] == "warn"
    assert versions(Settings().data_store, "diamonds") == [first["version"], second["version"]]


def test_force_rebuilds_a_version_in_place(state_dir, tmp_path):
    source = _diamonds_csv(tmp_path, "d.csv", rows=1500)
    first = prepare_diamonds(source=source)
    created = read_manifest(first["path"])["created_at"]
    assert prepare_diamonds(source=source)["reused"] is True
    again = prepare_diamonds(source=source, force=True)
    assert again["reused"] is False and again["version"] == first["version"]
    assert read_manifest(again["path"])["created_at"] > created
    assert versions(Settings().data_store, "diamonds") == [first["version"]]
    assert sorted(p.name for p in Path(first["path"]).parent.iterdir()) == [first["version"]]


def test_users_own_tabular_dataset_from_parquet_in_s3(state_dir, s3_bucket, monkeypatch):
    rng = np.random.default_rng(0)
    rows = 1200
    frame = pd.DataFrame(
        {
            "rooms": rng.integers(1, 8, rows),
            "area": rng.uniform(20, 250, rows).round(1),
            "district": rng.choice(["north", "south", "east"], rows),
        }
    )
    frame["rent"] = (frame["area"] * 12 + frame["rooms"] * 40 + rng.normal(0, 50, rows)).round(2)
    key = "raw/rents.parquet"
    frame.to_parquet(local := Path(state_dir).parent / "rents.parquet", index=False)
    boto3.client("s3").upload_file(str(local), s3_bucket, key)
    monkeypatch.setenv("SKYTRAIN_DATA_STORE", f"s3://{s3_bucket}/store")

    ref = prepare_tabular(source=f"s3://{s3_bucket}/{key}", target="rent", dataset="rents", categorical=["district"])
    manifest = read_manifest(ref["path"])
    assert ref["path"].startswith(f"s3://{s3_bucket}/store/rents/")
    assert manifest["categories"] == {"district": ["east", "north", "south"]}
    assert manifest["feature_columns"] == ["rooms", "area", "district=east", "district=north", "district=south"]
    assert manifest["target_column"] == "rent" and manifest["source"]["format"] == "parquet"
    features, target = load_split(ref["path"], "train", manifest)
    assert features.shape == (manifest["splits"]["train"]["rows"], 5) and np.isfinite(target).all()
    assert abs(features[:, 1].mean()) < 1e-4  # area standardized on the train split


# --- broken inputs: a clear message naming the file, the field and the rule; nothing written -----


def _idx_case(mutate):
    def make(tmp_path):
        files = {name: idx.encode(array) for name, array in _small_idx_arrays().items()}
        mutate(files)
        folder = tmp_path / "idx"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return prepare_mnist, {"source": str(folder)}

    return make


def _small_idx_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {}
    for split, rows in (("train", 60), ("test", 20)):
        images_name, labels_name = idx.MNIST_FILES[split]
        arrays[images_name] = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
        arrays[labels_name] = (np.arange(rows) % 10).astype(np.uint8)
    return arrays


def _wrong_magic(files):
    name = idx.TRAIN_FILES[0]
    files[name] = gzip.compress(b"\x12\x34" + gzip.decompress(files[name])[2:])


def _truncated_gzip(files):
    files[idx.TEST_FILES[0]] = files[idx.TEST_FILES[0]][:200]


def _count_mismatch(files):
    files[idx.TRAIN_FILES[1]] = idx.encode(np.zeros(59, dtype=np.uint8))


def _wrong_dimensions(files):
    files[idx.TRAIN_FILES[0]] = idx.encode(np.zeros((60, 28, 27), dtype=np.uint8))


def _missing_file(files):
    del files[idx.TEST_FILES[1]]


def _csv_case(mutate=None, text=None):
    def make(tmp_path):
        path = tmp_path / "diamonds.csv"
        if text is not None:
            path.write_text(text)
        else:
            frame = pd.read_csv(Settings().diamonds_location()).head(300)
            mutate(frame).to_csv(path, index=False)
        return prepare_diamonds, {"source": str(path)}

    return make


def _set(column, row, value):
    def mutate(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return mutate


BROKEN = {
    "wrong IDX magic": (_idx_case(_wrong_magic), idx.TRAIN_FILES[0], "magic", "starts with two zero bytes"),
    "truncated gzip": (_idx_case(_truncated_gzip), idx.TEST_FILES[0], "file", "readable gzip stream"),
    "image/label count mismatch": (
        _idx_case(_count_mismatch),
        idx.TRAIN_FILES[1],
        "train.labels",
        "one label per image",
    ),
    "wrong dimensions": (_idx_case(_wrong_dimensions), idx.TRAIN_FILES[0], "train.images", "shape (n, 28, 28)"),
    "missing IDX file": (_idx_case(_missing_file), idx.TEST_FILES[1], "file", "exists"),
    "CSV missing a column": (_csv_case(lambda f: f.drop(columns=["depth"])), "diamonds.csv", "depth", "column present"),
    "NaN": (_csv_case(_set("carat", 10, np.nan)), "diamonds.csv", "carat", "no missing (NaN) values"),
    "negative target": (_csv_case(_set("price", 3, -5)), "diamonds.csv", "price", "price > 0"),
    "unknown category": (_csv_case(_set("clarity", 7, "XX")), "diamonds.csv", "clarity", "known level"),
    "empty file": (_csv_case(text=""), "diamonds.csv", "file", "not empty"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_input_fails_clearly_and_writes_nothing(state_dir, tmp_path, case):
    make, file, field, rule = BROKEN[case]
    prepare, parameters = make(tmp_path)
    with pytest.raises(DataValidationError) as err:
        prepare(**parameters)
    assert err.value.field == field and rule in err.value.rule, str(err.value)
    assert err.value.file.endswith(file) and f"field '{field}'" in str(err.value)
    store = Path(Settings().data_store)
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*")), "nothing may be written"
