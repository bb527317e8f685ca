"""How many rows batch inference hands a scoring call (``batch_predict.chunk_rows``)."""

from __future__ import annotations

import math

import pytest

from ray_jobs import batch_predict
from ray_jobs.scoring import Scoring


def _scoring(feature_shape: list[int]) -> Scoring:
    manifest = {"task": "regression", "feature_columns": ["x"], "feature_shape": feature_shape, "target_column": "y"}
    return Scoring("model", "1", "file:///nowhere", "sqlite:///nowhere", manifest)


DIAMONDS, MNIST = _scoring([26]), _scoring([1, 28, 28])  # 104 and 3,136 bytes of float32 a row


@pytest.mark.parametrize(
    ("scoring", "rows", "workers", "expected"),
    [
        (DIAMONDS, 539_400, 2, 269_824),  # a worker's share (527 batches), under the 32 MiB cap
        (DIAMONDS, 5_394_000, 2, 322_560),  # the cap: 630 batches of 512 rows x 104 bytes
        (MNIST, 10_000, 1, 10_240),  # 20 batches: the cap and the share alike
        (MNIST, 10_000, 2, 5_120),  # two workers: a chunk each
        (DIAMONDS, 10, 2, 512),  # never less than one model batch
        (DIAMONDS, 0, 2, 512),
    ],
)
def test_a_chunk_is_whole_batches_within_the_cap_and_a_workers_share(scoring, rows, workers, expected, monkeypatch):
    monkeypatch.setattr(batch_predict, "CHUNK_BYTES", 32 * 2**20)
    chunk = batch_predict.chunk_rows(512, scoring, rows, workers)
    assert chunk == expected and chunk % 512 == 0
    assert chunk * 4 * math.prod(scoring.feature_shape) <= 32 * 2**20
    if rows >= workers * 512:
        assert -(-rows // chunk) >= workers  # every scoring worker gets a chunk


def test_a_row_bigger_than_the_cap_still_makes_a_chunk_of_one_batch(monkeypatch):
    monkeypatch.setattr(batch_predict, "CHUNK_BYTES", 1024)
    assert batch_predict.chunk_rows(64, MNIST, 10_000, 1) == 64
