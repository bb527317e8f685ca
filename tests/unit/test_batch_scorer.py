"""Batch inference's scoring tasks: what a worker keeps loaded between tasks."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest

from ray_jobs import batch_scorer
from ray_jobs.scoring import Scoring

MANIFEST = {"task": "regression", "feature_columns": ["a", "b"], "feature_shape": [2], "target_column": "y"}


def _scoring(store: str) -> Scoring:
    return Scoring("skytrain-diamonds-regressor", "1", f"file://{store}/models/m-1", f"sqlite:///{store}/db", MANIFEST)


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def load(scoring, threads, onnx_model=None):
        calls.append(scoring.artifact_uri)
        offset = len(calls)  # a different "model" per load: the answers show which one scored
        return lambda rows: rows.sum(axis=1, keepdims=True) + offset

    monkeypatch.setattr(batch_scorer, "load", load)
    monkeypatch.setattr(batch_scorer, "_LOADED", {})
    return calls


def _batch() -> pa.Table:
    return pa.table({"a": [1.0, np.nan], "b": [2.0, 3.0]})


def test_a_worker_loads_a_version_once_for_all_its_tasks(loads):
    first = batch_scorer.score(_batch(), _scoring("/a"), 1, None)
    second = batch_scorer.score(_batch(), _scoring("/a"), 1, None)
    assert loads == ["file:///a/models/m-1"]
    assert first.equals(second)
    assert first.column("y").to_pylist() == [4.0, 0.0]  # 1 + 2 + the model's offset 1; row 2 rejected
    assert first.column("reason").to_pylist() == [None, "column 'a' holds a NaN or infinite value"]


def test_the_same_name_and_version_from_another_store_is_loaded_again(loads):
    batch_scorer.score(_batch(), _scoring("/a"), 1, None)
    other = batch_scorer.score(_batch(), _scoring("/b"), 1, None)
    assert loads == ["file:///a/models/m-1", "file:///b/models/m-1"]
    assert other.column("y").to_pylist()[0] == 5.0  # scored by the second model, not the cached first


def test_a_chunk_goes_through_the_model_model_batch_rows_at_a_time(monkeypatch):
    sizes = []

    def load(scoring, threads, onnx_model=None):
        def predict(rows):
            sizes.append(len(rows))
            return rows.sum(axis=1, keepdims=True)

        return predict

    monkeypatch.setattr(batch_scorer, "load", load)
    monkeypatch.setattr(batch_scorer, "_LOADED", {})
    a = np.arange(10, dtype=np.float64)
    a[[3, 7]] = np.nan  # rejected: 8 valid rows remain
    chunk = pa.table({"a": a, "b": np.ones(10)})
    scored = batch_scorer.score(chunk, _scoring("/a"), 1, None, model_batch=3)
    assert sizes == [3, 3, 2]  # the valid rows only, in calls of at most 3
    whole = batch_scorer.score(chunk, _scoring("/a"), 1, None)
    assert sizes[3:] == [8]  # without model_batch: one call
    assert scored.equals(whole)
    assert scored.column("y").to_pylist() == [1, 2, 3, 0, 5, 6, 7, 0, 9, 10]
    nothing_valid = pa.table({"a": [np.nan], "b": [1.0]})
    assert batch_scorer.score(nothing_valid, _scoring("/a"), 1, None, model_batch=3).column("y").to_pylist() == [0]
    assert sizes[-1] == 0  # still one call, with no rows: the output's shape comes from the model


def test_each_rejected_row_keeps_the_first_rule_it_breaks_and_clean_rows_none():
    batch = pa.table(
        {
            "a": pa.array([1.0, None, np.inf, 4.0, 1e39, 6.0], pa.float64()),
            "b": pa.array(["2", "3", "x", None, "5", "6"]),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1e39 does not fit float32: rejected, without an overflow warning
        features, reasons = batch_scorer.validate(batch, _scoring("/a"))
    assert reasons.tolist() == [
        None,
        "column 'a' is null",  # b is fine on this row
        "column 'a' holds a NaN or infinite value",  # b is not a number either: a's rule came first
        "column 'b' is null",
        "column 'a' is beyond float32's range",
        None,
    ]
    assert features.dtype == np.float32 and features.tolist() == [[1.0, 2.0], [6.0, 6.0]]


def test_a_clean_batch_has_no_reason_and_every_row_scored():
    batch = pa.table({"a": pa.array(np.arange(1000, dtype=np.float32)), "b": pa.array(np.ones(1000))})
    features, reasons = batch_scorer.validate(batch, _scoring("/a"))
    assert (reasons == None).all() and features.shape == (1000, 2)  # noqa: E711
    assert features[:, 0].tolist() == list(range(1000))


def test_image_rows_of_the_wrong_length_or_with_a_missing_value_are_rejected():
    manifest = {**MANIFEST, "task": "classification", "feature_columns": ["image"], "feature_shape": [1, 3]}
    scoring = Scoring("m", "1", "file:///a", "sqlite:///db", manifest)
    images = pa.array([[1, 2, 3], [1, 2], None, [1, None, 3], [4, 5, 6]], pa.list_(pa.float32()))
    features, reasons = batch_scorer.validate(pa.table({"image": images}), scoring)
    assert reasons.tolist() == [
        None,
        "column 'image' does not hold 3 values",
        "column 'image' is null",
        "column 'image' holds a missing value",
        None,
    ]
    assert features.tolist() == [[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]]]


def test_an_onnx_scoring_task_lets_its_threads_sleep_between_model_calls(tmp_path):
    """A scoring task shares the cores with the read and the driver: its onnxruntime threads must not
    spin between model batches. Serving keeps onnxruntime's default (spinning: the lowest latency)."""
    import torch

    from ray_jobs.onnx_model import OnnxPredictor, export

    torch.manual_seed(0)
    net, rows = torch.nn.Linear(2, 1), np.random.default_rng(0).random((4, 2), np.float32)
    export(net, rows, tmp_path / "model.onnx")
    model = (tmp_path / "model.onnx").read_bytes()

    predict = batch_scorer.load(_scoring(str(tmp_path)), threads=2, onnx_model=model)
    options = predict.__self__.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with torch.no_grad():
        np.testing.assert_allclose(predict(rows), net(torch.from_numpy(rows)).numpy(), atol=1e-6)

    serving = OnnxPredictor(model, threads=2).session.get_session_options()
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default
        serving.get_session_config_entry("session.intra_op.allow_spinning")
