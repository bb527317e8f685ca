"""A worker's data feed over a real Ray Data iterator: streamed first, then resident and reshuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_jobs import feed as feed_module
from ray_jobs.feed import ShardFeed, fits_on_device

pytestmark = pytest.mark.usefixtures("local_ray")

IMAGES = {"feature_columns": ["image"], "feature_shape": [1, 2, 2], "target_column": "label"}
TABULAR = {"feature_columns": ["a", "b"], "feature_shape": [2], "target_column": "y"}


def _images(rows: int):
    import ray.data

    pixels = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return ray.data.from_items([{"image": pixels[i], "label": i} for i in range(rows)]).iterator()


def _labels(feed: ShardFeed, batch_size: int, **kwargs) -> list[int]:
    return [int(v) for _, y in feed.batches(batch_size, **kwargs) for v in y]


def test_streamed_pass_reshapes_features_and_keeps_every_row():
    feed = ShardFeed(_images(10), IMAGES, "classification", torch.device("cpu"), resident=False)
    batches = list(feed.batches(4))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 2, 2), (4, 1, 2, 2), (2, 1, 2, 2)]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[1].flatten(), torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sorted(_labels(feed, 4)) == list(range(10))
    assert not feed.is_resident  # resident=False: every pass reads through Ray Data again


def test_tabular_columns_are_stacked_in_manifest_order():
    import ray.data

    shard = ray.data.from_items([{"b": 10.0 + i, "a": float(i), "y": 0.5 * i} for i in range(6)]).iterator()
    feed = ShardFeed(shard, TABULAR, "regression", torch.device("cpu"), resident=False)
    x, y = next(iter(feed.batches(6)))
    assert x.shape == (6, 2) and x.dtype == torch.float32
    assert torch.equal(x[2], torch.tensor([2.0, 12.0]))
    assert y.dtype == torch.float32 and y[4].item() == 2.0


def test_resident_feed_keeps_the_rows_and_reshuffles_them_by_seed():
    feed = ShardFeed(_images(10), IMAGES, "classification", torch.device("cpu"), resident=True)
    first = _labels(feed, 4, drop_last=True)
    assert len(first) == 8  # whole batches only...
    assert feed.is_resident
    # ...but the resident copy holds every row, the partial batch's too.
    assert sorted(_labels(feed, 4)) == list(range(10))
    shuffled, again, other = (_labels(feed, 5, seed=s) for s in (7, 7, 8))
    assert sorted(shuffled) == list(range(10))
    assert shuffled == again != other
    assert shuffled != list(range(10))
    # Features travel with their labels through the shuffle.
    for x, y in feed.batches(3, seed=7):
        assert torch.equal(x[:, 0, 0, 0], y.float() * 4)


def test_fits_on_device_compares_with_free_memory(monkeypatch):
    manifest = {"feature_shape": [1, 28, 28]}
    assert fits_on_device(1_000, manifest, torch.device("cpu"))  # this machine's real free memory
    assert not fits_on_device(10**12, manifest, torch.device("cpu"))
    # The boundary: a quarter of the host's free memory, 4 bytes a feature and the target.
    row_bytes = 4 * (28 * 28 + 1)
    monkeypatch.setattr(feed_module, "free_memory_bytes", lambda device: 4 * 1000 * row_bytes)
    assert fits_on_device(1000, manifest, torch.device("cpu"))
    assert not fits_on_device(1001, manifest, torch.device("cpu"))
