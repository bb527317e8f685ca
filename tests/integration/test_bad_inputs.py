"""Malformed inputs through the entry points a user calls: each fails with an error that names the
file or field and the rule it broke, and leaves the platform's state exactly as it was.

One corpus covers data prep sources (MNIST IDX and pickle, CSV, Parquet, bad URIs), flow
parameters (``train``, ``retrain``, ``promote``, ``batch-inference``) and serving bodies
(``ray_jobs.payload``, what ``/predict`` runs before any scoring). A module fixture first builds a
state worth protecting: a diamonds and an MNIST dataset version from the data prep flows, a
champion for each model (registered without training, ``tests/registered.py``, then gated by the
real ``promote`` flow) and a diamonds version never gated. Every case compares one snapshot of
that state before and after: dataset versions and the files of the store, registered versions
with their tags, the aliases (``champion``, ``challenger``) and the MLflow runs.

The IDX and CSV cases of ``test_data_sources.py`` are reused (its builders, its file, field and
rule), here against this populated state instead of an empty store.
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from prefect.exceptions import ParameterTypeError

from flows.batch_inference import batch_inference
from flows.data_prep import prepare_diamonds, prepare_mnist, prepare_tabular
from flows.datasets import idx
from flows.datasets.store import versions
from flows.datasets.validation import DataValidationError
from flows.operations import StepFailed
from flows.promote import promote
from flows.retrain import retrain
from flows.train import train
from ray_jobs.batch_predict import BadInputError
from ray_jobs.models import MnistCNN, spec_for
from ray_jobs.payload import PayloadError, parse
from ray_jobs.settings import Settings
from tests.integration.test_data_sources import BROKEN, _small_idx_arrays
from tests.registered import least_squares, register

REGRESSOR, CNN = spec_for("diamonds-regressor"), spec_for("mnist-cnn")
DIAMONDS_ROWS = 400  # of the bundled CSV: the module's diamonds source (SKYTRAIN_DIAMONDS_SOURCE)
MAX_ROWS, MAX_BYTES = 4, 200_000  # serving limits for the payload cases


@dataclass
class State:
    settings: Settings
    diamonds: Path  # the diamonds version's folder
    mnist: Path
    spare: str  # a registered diamonds version never gated
    bucket: str | None = None  # an S3 bucket on moto's server, for the cases that need one


@pytest.fixture(scope="module")
def state(tmp_path_factory, prefect_api) -> State:
    """A state directory for the module with two dataset versions, three registered versions and
    both models' champion (and challenger) aliases set by the real gate."""
    root = tmp_path_factory.mktemp("bad-inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_STATE_DIR", str(root / "state"))
        patch.delenv("SKYTRAIN_PROMOTION", raising=False)
        bundled = pd.read_csv(Settings().diamonds_location()).sample(DIAMONDS_ROWS, random_state=0)
        bundled.to_csv(source := root / "diamonds.csv", index=False)
        patch.setenv("SKYTRAIN_DIAMONDS_SOURCE", str(source))  # what retrain prepares too: reused, not rebuilt
        settings = Settings()
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        gems = Path(prepare_diamonds()["path"])
        digits = Path(prepare_mnist(source=str(_idx_folder(root / "idx")), val_size=10)["path"])
        linear = {"arch": "linear", "hidden": 0}
        assert promote(model=REGRESSOR.key, version=register(least_squares(gems), REGRESSOR, gems, linear))["promote"]
        spare = register(least_squares(gems, offset=0.5), REGRESSOR, gems, linear)
        torch.manual_seed(0)
        cnn = register(MnistCNN(width=8, depth=1).eval(), CNN, digits, {"width": 8, "depth": 1})
        assert promote(model=CNN.key, version=cnn, floor=0.0)["promote"]  # untrained: no floor
        before = snapshot(settings)
        # The state is worth protecting: an unchanged empty snapshot would prove nothing.
        assert {d: len(v) for d, v in before["datasets"].items()} == {"diamonds": 1, "mnist": 1}
        assert len(before["model_versions"]) == 3 and len(before["runs"]) == 3
        assert before["aliases"] == {
            REGRESSOR.registered_name: {"champion": "1", "challenger": "1"},
            CNN.registered_name: {"champion": cnn, "challenger": cnn},
        }
        yield State(settings, gems, digits, spare)


def _idx_folder(folder: Path) -> Path:
    folder.mkdir()
    for name, array in _small_idx_arrays().items():
        (folder / name).write_bytes(idx.encode(array))
    return folder


def snapshot(settings: Settings) -> dict[str, Any]:
    """What no bad input may change: dataset versions (and every file of the store), registered
    versions with their tags and descriptions, the aliases, the MLflow runs."""
    store = Path(settings.data_store)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return {
        "datasets": {d.name: versions(store, d.name) for d in sorted(store.iterdir()) if d.is_dir()},
        "files": sorted(str(p.relative_to(store)) for p in store.rglob("*")),
        "model_versions": sorted(
            (v.name, str(v.version), v.description or "", json.dumps(v.tags, sort_keys=True))
            for v in client.search_model_versions()
        ),
        "aliases": {m.name: {a: str(v) for a, v in m.aliases.items()} for m in client.search_registered_models()},
        "runs": sorted((r.info.run_id, r.info.status) for r in runs),
    }


# --- the corpus ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    call: Callable[[State, Path], Any]  # calls the entry point; gets the state and a fresh tmp folder
    error: type[BaseException]
    names: tuple[str, ...]  # what the message must name: file or field, and the rule (regular expressions)
    needs: tuple[str, ...] = ()  # fixtures beyond the state: local_ray, s3_bucket


def _data_prep_case(make, file: str, field: str, rule: str) -> Case:
    """A case of ``test_data_sources.BROKEN``: file, field and rule as that corpus states them."""

    def call(state: State, tmp: Path) -> Any:
        prepare, parameters = make(tmp)
        return prepare(**parameters)

    return Case(call, DataValidationError, (re.escape(file), f"field '{re.escape(field)}'", re.escape(rule)))


# The IDX and CSV cases of test_data_sources.py the issue names (it has more, e.g. wrong image dimensions).
REUSED = (
    "wrong IDX magic",
    "truncated gzip",
    "image/label count mismatch",
    "CSV missing a column",
    "NaN",
    "negative target",
    "unknown category",
    "empty file",
)


def _write_pickle(tmp: Path) -> str:
    """A well-formed MNIST pickle whose sha256 is not the expected one: it must never be opened."""
    rng = np.random.default_rng(0)
    splits = [(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (20, 10, 10)]
    path = tmp / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(splits), f)
    return str(path)


def _rents(tmp: Path, mutate: Callable[[pd.DataFrame], pd.DataFrame]) -> str:
    rng = np.random.default_rng(0)
    rows = 200
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, rows), "area": rng.uniform(20, 250, rows).round(1)})
    frame["rent"] = (frame["area"] * 12 + frame["rooms"] * 40 + rng.normal(0, 50, rows)).round(2)
    path = tmp / "rents.parquet"
    mutate(frame).to_parquet(path, index=False)
    return str(path)


def _area_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    frame["area"] = frame["area"].map(lambda v: f"{v} m2")
    return frame


def _tabular(source: str) -> dict[str, Any]:
    return {"source": source, "target": "rent", "dataset": "rents"}


def _test_rows_without(state: State, column: str, tmp: Path) -> str:
    """The diamonds version's test split as an inference input, one feature column dropped."""
    frame = pd.read_parquet(state.diamonds / "test.parquet").drop(columns=[column, "log_price"])
    frame.to_parquet(path := tmp / "rows.parquet", index=False)
    return str(path)


def _payload(document: Any = None, raw: bytes | None = None) -> Callable[[State, Path], Any]:
    """A ``/predict`` body for the diamonds champion, parsed as serving parses it."""

    def call(state: State, tmp: Path) -> Any:
        body = raw if raw is not None else json.dumps(document).encode()
        row_shape = tuple(json.loads((state.diamonds / "manifest.json").read_text())["feature_shape"])
        return parse(body, row_shape, max_rows=MAX_ROWS, max_bytes=MAX_BYTES)

    return call


ROW = [0.0] * 26
MISSING_VERSION = "0123456789abcdef"

CASES: dict[str, Case] = {
    # MNIST IDX and CSV: the corpus of test_data_sources.py, on a populated store
    **{f"data prep: {name}": _data_prep_case(*BROKEN[name]) for name in REUSED},
    "MNIST pickle: sha256 mismatch": Case(
        lambda state, tmp: prepare_mnist(source=_write_pickle(tmp)),
        DataValidationError,
        (r"mnist\.pkl\.gz", "field 'sha256'", r"matches the expected sha256 \(SKYTRAIN_MNIST_SHA256\)"),
    ),
    "Parquet: text in a numeric column": Case(
        lambda state, tmp: prepare_tabular(**_tabular(_rents(tmp, _area_as_text))),
        DataValidationError,
        (r"rents\.parquet", "field 'area'", "numeric values", "dtype"),
    ),
    "Parquet: target column missing": Case(
        lambda state, tmp: prepare_tabular(**_tabular(_rents(tmp, lambda f: f.drop(columns=["rent"])))),
        DataValidationError,
        (r"rents\.parquet", "field 'rent'", "column present"),
    ),
    "source: ftp:// URI": Case(
        lambda state, tmp: prepare_tabular(**_tabular("ftp://example.com/rents.csv")),
        DataValidationError,
        (
            "ftp://example.com/rents.csv",
            "field 'source'",
            "a local path or s3://bucket/key",
            "unsupported scheme 'ftp://'",
        ),
    ),
    "source: s3:// URI without a bucket": Case(
        lambda state, tmp: prepare_diamonds(source="s3:///diamonds.csv"),
        DataValidationError,
        ("s3:///diamonds.csv", "field 'source'", "s3://bucket/key", "no bucket"),
    ),
    "source: s3:// object missing": Case(
        lambda state, tmp: prepare_diamonds(source=f"s3://{state.bucket}/raw/diamonds.csv"),
        DataValidationError,
        (r"s3://skytrain-test-\w+/raw/diamonds\.csv", "field 'file'", "exists", "NoSuchKey"),
        needs=("s3_bucket",),
    ),
    "source: local file missing": Case(
        lambda state, tmp: prepare_tabular(**_tabular(str(tmp / "nowhere.csv"))),
        DataValidationError,
        (r"nowhere\.csv", "field 'file'", "exists", "no such file"),
    ),
    # flow parameters, refused by Prefect before the flow body runs
    "train: negative epochs": Case(
        lambda state, tmp: train(model=REGRESSOR.key, epochs=-1),
        ParameterTypeError,
        ("epochs", "greater than or equal to 1"),
    ),
    "train: zero workers": Case(
        lambda state, tmp: train(model=REGRESSOR.key, num_workers=0),
        ParameterTypeError,
        ("num_workers", "greater than or equal to 1"),
    ),
    "retrain: negative workers": Case(
        lambda state, tmp: retrain(models=[REGRESSOR.key], num_workers=-2),
        ParameterTypeError,
        ("num_workers", "greater than or equal to 1"),
    ),
    "train: unknown model": Case(
        lambda state, tmp: train(model="resnet"),
        ParameterTypeError,
        ("model", "'mnist-cnn' or 'diamonds-regressor'"),
    ),
    "train: unknown hyperparameter": Case(
        lambda state, tmp: train(model=CNN.key, hparams={"widht": 8}),
        ParameterTypeError,
        ("hparams", re.escape("unknown hyperparameter(s) ['widht']")),
    ),
    "retrain: unknown hyperparameter": Case(
        lambda state, tmp: retrain(models=[CNN.key], hparams={"mnist-cnn": {"lr": 0.1, "momentum": 0.9}}),
        ParameterTypeError,
        ("hparams.mnist-cnn", re.escape("unknown hyperparameter(s) ['momentum']")),
    ),
    "retrain: negative epochs": Case(
        lambda state, tmp: retrain(models=[REGRESSOR.key], epochs=-3),
        ParameterTypeError,
        ("epochs", "greater than or equal to 1"),
    ),
    "promote: version not a number": Case(
        lambda state, tmp: promote(model=REGRESSOR.key, version="latest"),
        ParameterTypeError,
        ("version", "should match pattern"),
    ),
    # flow parameters the flow body refuses, before any training or registry change
    "train: more workers than the local Ray has CPUs": Case(
        lambda state, tmp: train(model=REGRESSOR.key, num_workers=3, epochs=1),
        ValueError,
        ("num_workers=3", "the Ray cluster has 2", "lower num_workers"),
        needs=("local_ray",),
    ),
    "retrain: more workers than the local Ray has CPUs": Case(
        lambda state, tmp: retrain(models=[REGRESSOR.key], num_workers=3, epochs=1),
        StepFailed,
        ("check ray resources failed", "num_workers=3", "the Ray cluster has 2"),
        needs=("local_ray",),
    ),
    "train: dataset version that does not exist": Case(
        lambda state, tmp: train(model=REGRESSOR.key, dataset_version=MISSING_VERSION, epochs=1),
        FileNotFoundError,
        ("dataset 'diamonds'", f"no version '{MISSING_VERSION}'"),
    ),
    "promote: version that does not exist": Case(
        lambda state, tmp: promote(model=REGRESSOR.key, version="999"),
        MlflowException,
        (rf"name={REGRESSOR.registered_name}, version=999\)", "not found"),
    ),
    "promote: bad promotion policy": Case(
        lambda state, tmp: _with_policy('{"diamonds-regressor": {"margin": -1}}', REGRESSOR.key, state.spare),
        ValueError,
        ("SKYTRAIN_PROMOTION", "'diamonds-regressor'", "margin", "greater than or equal to 0"),
    ),
    "batch-inference: version that does not exist": Case(
        lambda state, tmp: batch_inference(model=REGRESSOR.key, input_path=str(tmp / "x.parquet"), version="999"),
        ValueError,
        (REGRESSOR.registered_name, "no version '999'"),
    ),
    "batch-inference: input file missing": Case(
        lambda state, tmp: batch_inference(model=REGRESSOR.key, input_path=str(tmp / "nowhere.parquet")),
        FileNotFoundError,
        (r"nowhere\.parquet", "no such file or folder"),
        needs=("local_ray",),
    ),
    "batch-inference: ftp:// input": Case(
        lambda state, tmp: batch_inference(model=REGRESSOR.key, input_path="ftp://example.com/rows.parquet"),
        ValueError,
        ("ftp://example.com/rows.parquet", "unsupported scheme 'ftp://'", "a local path or s3://bucket/key"),
        needs=("local_ray",),
    ),
    "batch-inference: Parquet missing a feature column": Case(
        lambda state, tmp: batch_inference(model=REGRESSOR.key, input_path=_test_rows_without(state, "carat", tmp)),
        BadInputError,
        (r"rows\.parquet", "field 'carat'", "column present"),
        needs=("local_ray",),
    ),
    # serving bodies
    "payload: wrong shape": Case(
        _payload({"inputs": [[0.0] * 27]}), PayloadError, ("field 'inputs'", "each row of shape 26", "27")
    ),
    "payload: strings": Case(
        _payload({"inputs": [ROW[:25] + ["heavy"]]}), PayloadError, (r"field 'inputs\[0\]\[25\]'", "a number", "heavy")
    ),
    "payload: NaN": Case(
        _payload(raw=b'{"inputs": [[NaN' + b", 0" * 25 + b"]]}"),
        PayloadError,
        ("field 'inputs'", "finite numbers only", "NaN"),
    ),
    "payload: too many rows": Case(
        _payload({"inputs": [ROW] * (MAX_ROWS + 1)}),
        PayloadError,
        ("field 'inputs'", f"at most {MAX_ROWS} rows per request", f"got {MAX_ROWS + 1}"),
    ),
}


def _with_policy(policy: str, model: str, version: str) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_PROMOTION", policy)
        return promote(model=model, version=version)


def test_the_corpus_covers_the_issue():
    assert len(CASES) >= 20
    kinds = {name.split(":")[0] for name in CASES}
    assert {"data prep", "MNIST pickle", "Parquet", "source", "train", "retrain", "promote"} <= kinds
    assert {"batch-inference", "payload"} <= kinds


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_clearly_and_changes_nothing(state, tmp_path, request, name):
    case = CASES[name]
    for fixture in case.needs:
        value = request.getfixturevalue(fixture)
        if fixture == "s3_bucket":
            state = replace(state, bucket=value)
    before = snapshot(state.settings)
    with pytest.raises(case.error) as caught:
        case.call(state, tmp_path)
    message = str(caught.value)
    for pattern in case.names:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert snapshot(state.settings) == before
