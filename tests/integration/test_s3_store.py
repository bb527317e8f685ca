"""Dataset versions in an S3 store (moto's S3 server on 127.0.0.1): written with the manifest last,
read back directly, never half-visible.

Preparing a version in S3 and training on it through Ray Data: ``test_data_sources.py``."""

from __future__ import annotations

import time

import boto3
import pytest

from flows.datasets import diamonds, store
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.settings import Settings


@pytest.fixture
def tables():
    frame = diamonds.read_csv(Settings().diamonds_location()).head(3000)
    return diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)


def _keys(bucket: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_a_version_in_s3_is_read_back_directly(s3_bucket, tables):
    location = store.write_version(f"s3://{s3_bucket}/datasets", "diamonds", "v1", *tables)
    assert location == f"s3://{s3_bucket}/datasets/diamonds/v1"
    manifest = read_manifest(location)
    features, target = load_split(location, "val", manifest)
    assert features.shape == (manifest["splits"]["val"]["rows"], *manifest["feature_shape"])
    assert len(target) == len(features)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(location + "-missing")


def test_s3_versions_are_listed_newest_last_and_never_overwritten(s3_bucket, tables):
    root = f"s3://{s3_bucket}/datasets"
    split_tables, manifest = tables
    store.write_version(root, "diamonds", "old", split_tables, {**manifest, "note": "old"})
    time.sleep(1.1)  # S3 keeps modification times to the second
    store.write_version(root, "diamonds", "new", split_tables, {**manifest, "note": "first"})
    store.write_version(root, "diamonds", "new", split_tables, {**manifest, "note": "second"})
    assert store.versions(root, "diamonds") == ["old", "new"]
    assert store.latest_version(root, "diamonds") == "new"
    assert read_manifest(store.version_dir(root, "diamonds", "new"))["note"] == "first"  # content-addressed

    store.write_version(root, "diamonds", "new", split_tables, {**manifest, "note": "forced"}, replace=True)
    assert read_manifest(store.version_dir(root, "diamonds", "new"))["note"] == "forced"


def test_a_failed_upload_leaves_no_version_and_no_objects(s3_bucket, tables, monkeypatch):
    written = []

    def fail_on_second(table, where, filesystem=None, **options):
        written.append(where)
        if len(written) == 2:
            raise OSError("connection reset")
        real_write(table, where, filesystem=filesystem)

    real_write = store.pq.write_table
    monkeypatch.setattr(store.pq, "write_table", fail_on_second)
    with pytest.raises(OSError, match="connection reset"):
        store.write_version(f"s3://{s3_bucket}/datasets", "diamonds", "v1", *tables)
    assert store.existing_version(f"s3://{s3_bucket}/datasets", "diamonds", "v1") is None
    # The split uploaded before the failure was removed too (pyarrow may leave an empty folder marker).
    assert [key for key in _keys(s3_bucket) if key.startswith("datasets/diamonds/v1")] == []
