"""Content-addressed, atomically published dataset versions."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flows.datasets import sources, store
from ray_jobs.dataset import read_manifest


def _tables():
    return {s: pa.table({"x": [1.0, 2.0], "y": [0, 1]}) for s in ("train", "val", "test")}


def test_version_id_is_stable_and_content_addressed():
    params = {"seed": 1, "val_size": 10, "transform": "t1"}
    same = store.version_id("abc", dict(reversed(list(params.items()))))
    assert store.version_id("abc", params) == same
    assert store.version_id("abd", params) != same
    assert store.version_id("abc", {**params, "seed": 2}) != same
    assert store.version_id("abc", {**params, "transform": "t2"}) != same


def test_source_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 << 20))
    assert sources.sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_publishes_a_complete_version(tmp_path):
    path = Path(store.write_version(tmp_path, "toy", "v1", _tables(), {"task": "regression"}))
    assert store.existing_version(tmp_path, "toy", "v1") == str(path)
    manifest = read_manifest(path)
    assert manifest["version"] == "v1" and manifest["splits"]["val"] == {"rows": 2}
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "test.parquet", "train.parquet", "val.parquet"]
    assert [p.name for p in (tmp_path / "toy").iterdir()] == ["v1"]  # no staging left behind


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_second(table, where, **options):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        where.write_bytes(b"partial")

    monkeypatch.setattr(store.pq, "write_table", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        store.write_version(tmp_path, "toy", "v1", _tables(), {})
    assert store.existing_version(tmp_path, "toy", "v1") is None
    assert list((tmp_path / "toy").iterdir()) == []


def test_folder_without_manifest_is_not_a_version(tmp_path):
    (tmp_path / "toy" / "v0").mkdir(parents=True)
    assert store.existing_version(tmp_path, "toy", "v0") is None
    with pytest.raises(FileNotFoundError, match="no version of dataset 'toy'"):
        store.latest_version(tmp_path, "toy")


def test_latest_version_is_the_newest_published(tmp_path):
    store.write_version(tmp_path, "toy", "old", _tables(), {})
    time.sleep(0.01)
    store.write_version(tmp_path, "toy", "new", _tables(), {})
    assert store.latest_version(tmp_path, "toy") == "new"


def test_rewriting_an_existing_version_keeps_the_first(tmp_path):
    first = store.write_version(tmp_path, "toy", "v1", _tables(), {"note": "first"})
    store.write_version(tmp_path, "toy", "v1", _tables(), {"note": "second"})
    assert read_manifest(first)["note"] == "first"
    assert [p.name for p in (tmp_path / "toy").iterdir()] == ["v1"]


def test_tensor_columns_are_written_without_a_dictionary(tmp_path):
    import pyarrow.parquet as pq

    pixels = pa.array([0.0, 0.5] * 8, pa.float32())
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pixels, 4), "label": [0, 1, 0, 1]})
    assert store.dictionary_columns(table.schema) == ["label"]
    path = Path(store.write_version(tmp_path, "toy", "v1", {"train": table}, {"task": "classification"}))
    chunks = pq.ParquetFile(path / "train.parquet").metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(chunks.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["image.list.element"]
    assert "RLE_DICTIONARY" in encodings["label"]
    assert pq.read_table(path / "train.parquet").equals(table)
