"""Data prep flows on a real Prefect API: versions are written once, reused, and never half-made;
bad input stops the pipeline before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from prefect.exceptions import ParameterTypeError

from flows.data_prep import prepare_diamonds, prepare_mnist
from flows.datasets.validation import DataValidationError
from flows.operations import StepFailed
from flows.retrain import retrain
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.settings import MNIST_BUNDLED_SHA256, Settings
from tests.conftest import small_mnist, write_mnist_pickle

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_prepare_mnist_writes_a_version_then_reuses_it(state_dir):
    first = prepare_mnist(limit_rows=300)
    assert first["reused"] is False
    manifest = read_manifest(first["path"])
    assert manifest["source"]["sha256"] == MNIST_BUNDLED_SHA256
    assert manifest["splits"] == {s: {"rows": 300} for s in ("train", "val", "test")}
    assert manifest["schema"] == {"image": "fixed_size_list<float32>[784]", "label": "int64"}
    assert {"mean", "std"} <= set(manifest["normalization"])
    images, labels = load_split(first["path"], "train")
    assert images.shape == (300, 1, 28, 28) and set(labels) <= set(range(10))

    again = prepare_mnist(limit_rows=300)
    assert again == {**first, "reused": True}
    other = prepare_mnist(limit_rows=300, seed=7)
    assert other["version"] != first["version"] and other["reused"] is False


def test_prepare_diamonds_keeps_train_statistics(state_dir):
    ref = prepare_diamonds(limit_rows=2000)
    manifest = read_manifest(ref["path"])
    assert manifest["source"]["path"].endswith("diamonds.csv") and len(manifest["source"]["sha256"]) == 64
    assert set(manifest["standardization"]) == {"carat", "depth", "table", "x", "y", "z"}
    assert prepare_diamonds(limit_rows=2000)["reused"] is True


def _use_mnist(monkeypatch, path):
    """Point data prep at a pickle we wrote, with its real hash: the content rules must catch it."""
    monkeypatch.setenv("SKYTRAIN_MNIST_SOURCE", str(path))
    monkeypatch.setenv("SKYTRAIN_MNIST_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())


def _nan_pixel(tmp_path, monkeypatch):
    splits = small_mnist()
    splits[0][0][0, 0] = float("nan")
    write_mnist_pickle(path := tmp_path / "nan.pkl.gz", splits)
    _use_mnist(monkeypatch, path)
    return path, "train.images", "no NaN or infinite pixel"


def _wrong_shape(tmp_path, monkeypatch):
    splits = small_mnist()
    splits[2] = (splits[2][0].reshape(-1, 28, 28)[:, :27, :27].copy(), splits[2][1])
    write_mnist_pickle(path := tmp_path / "27x27.pkl.gz", splits)
    _use_mnist(monkeypatch, path)
    return path, "test.images", "shape (n, 28x28)"


def _truncated(tmp_path, monkeypatch):
    path = tmp_path / "truncated.pkl.gz"
    path.write_bytes(Path(Settings().mnist_location()).read_bytes()[: 1 << 20])
    _use_mnist(monkeypatch, path)
    return path, "file", "readable gzip-compressed pickle"


def _wrong_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYTRAIN_MNIST_SHA256", "0" * 64)
    return Settings().mnist_location(), "sha256", "matches the expected sha256"


def _unknown_category(tmp_path, monkeypatch):
    frame = pd.read_csv(Settings().diamonds_location()).head(500)
    frame.loc[42, "cut"] = "Superb"
    path = tmp_path / "diamonds.csv"
    frame.to_csv(path, index=False)
    monkeypatch.setenv("SKYTRAIN_DIAMONDS_SOURCE", str(path))
    return path, "cut", "known level"


def _missing_column(tmp_path, monkeypatch):
    path = tmp_path / "diamonds.csv"
    pd.read_csv(Settings().diamonds_location()).head(500).drop(columns=["table"]).to_csv(path, index=False)
    monkeypatch.setenv("SKYTRAIN_DIAMONDS_SOURCE", str(path))
    return path, "table", "column present"


@pytest.mark.parametrize(
    ("model", "break_input"),
    [
        ("mnist-cnn", _nan_pixel),
        ("mnist-cnn", _wrong_shape),
        ("mnist-cnn", _truncated),
        ("mnist-cnn", _wrong_hash),
        ("diamonds-regressor", _unknown_category),
        ("diamonds-regressor", _missing_column),
    ],
)
def test_bad_input_stops_retrain_before_anything_is_written(state_dir, tmp_path, monkeypatch, model, break_input):
    path, field, rule = break_input(tmp_path, monkeypatch)
    with pytest.raises(StepFailed) as err:  # the step, then the data rule's own message
        retrain(models=[model], epochs=1, limit_rows=100)
    assert isinstance(err.value.__cause__, DataValidationError)
    assert str(err.value).startswith(f"prepare {'mnist' if model == 'mnist-cnn' else 'diamonds'} failed: ")
    message = str(err.value.__cause__)
    assert str(path) in message and f"field '{field}'" in message and rule in message
    datasets = state_dir / "datasets"
    assert not datasets.exists() or not any(datasets.rglob("*")), "no dataset version may be left behind"
    assert not (state_dir / "mlflow.db").exists(), "no training may start"
    assert not (state_dir / "ray_results").exists(), "no training may start"


def test_bad_hyperparameters_stop_retrain_before_data_prep(state_dir):
    with pytest.raises(ParameterTypeError, match=r"unknown hyperparameter\(s\) \['widht'\]"):
        retrain(models=["mnist-cnn"], hparams={"mnist-cnn": {"widht": 8}})
    assert not (state_dir / "datasets").exists()
