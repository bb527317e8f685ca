"""Batch inference's scoring tasks: what a worker keeps loaded between tasks."""

from __future__ import annotations

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
