"""How many rows batch inference hands a scoring call (``batch_predict.chunk_rows``)."""

from __future__ import annotations

import math

import pyarrow as pa
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


@pytest.mark.parametrize(
    ("columns", "feature_shape", "expected"),
    [
        ({"carat": pa.float32(), "depth": pa.float32()}, [2], 8),
        ({"carat": pa.float64(), "cut": pa.int8()}, [2], 9),
        ({"carat": pa.float32(), "ok": pa.bool_()}, [2], 5),  # a bool: a bit in Arrow, counted as a byte
        ({"carat": pa.string(), "depth": pa.float32()}, [2], 20),  # a string: 16 bytes, a guess
        ({"image": pa.list_(pa.float32())}, [1, 28, 28], 784 * 4 + 4),  # values and a 32-bit offset
        ({"image": pa.large_list(pa.uint8())}, [1, 28, 28], 784 + 8),
        ({"image": pa.list_(pa.float32(), 784)}, [1, 28, 28], 784 * 4),  # fixed size: no offsets
    ],
)
def test_a_rows_bytes_once_read_follow_its_columns_types(columns, feature_shape, expected):
    """The read's block size in bytes is a chunk's rows times this: what Arrow holds for the row."""
    manifest = {"task": "regression", "feature_columns": list(columns), "feature_shape": feature_shape}
    scoring = Scoring("model", "1", "file:///nowhere", "sqlite:///nowhere", manifest)
    schema = pa.schema([("unused", pa.string()), *columns.items()])  # only the feature columns count
    assert batch_predict.row_bytes(schema, scoring) == expected
    if not any(pa.types.is_string(kind) or pa.types.is_boolean(kind) for kind in columns.values()):
        values = {name: _values(kind, 1000) for name, kind in columns.items()}
        table = pa.table({name: pa.array(values[name], kind) for name, kind in columns.items()})
        assert table.nbytes / 1000 == pytest.approx(expected, rel=0.01)  # what Arrow holds, offsets and all


def _values(kind: pa.DataType, rows: int) -> list:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [[0] * 784] * rows
    return [0] * rows
