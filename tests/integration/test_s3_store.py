"""Training straight from a dataset version in S3 (moto's S3 server on 127.0.0.1) through Ray Data."""

from __future__ import annotations

import shutil

import boto3
import mlflow
import pytest

from flows.datasets import diamonds
from flows.datasets.store import write_version
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.settings import Settings
from ray_jobs.train import run_training


@pytest.fixture
def s3_version(state_dir, s3_bucket) -> str:
    """A small diamonds version, uploaded to the bucket and removed from the local disk."""
    settings = Settings()
    frame = diamonds.read_csv(settings.diamonds_path()).head(3000)
    tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)
    local = write_version(settings.data_store, "diamonds", "s3-test", tables, manifest)
    s3 = boto3.client("s3")
    for path in local.iterdir():
        s3.upload_file(str(path), s3_bucket, f"datasets/diamonds/s3-test/{path.name}")
    shutil.rmtree(local)  # whatever the training reads, it reads from S3
    return f"s3://{s3_bucket}/datasets/diamonds/s3-test"


def test_manifest_and_splits_read_from_s3(s3_version):
    manifest = read_manifest(s3_version)
    features, target = load_split(s3_version, "val", manifest)
    assert features.shape == (manifest["splits"]["val"]["rows"], *manifest["feature_shape"])
    assert len(target) == len(features)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(s3_version + "-missing")


def test_training_reads_its_dataset_version_from_s3(local_ray, s3_version):
    result = run_training("diamonds-regressor", s3_version, epochs=2, num_workers=1)
    client = mlflow.MlflowClient(Settings().mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["skytrain.dataset_path"] == s3_version
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [read_manifest(s3_version)["version"]]
    assert sorted(m.step for m in client.get_metric_history(result["run_id"], "val_rmse")) == [1, 2]
    assert result["metrics"]["test_r2"] > 0  # better than predicting the mean, after two epochs
    assert client.get_model_version("skytrain-diamonds-regressor", result["version"]).run_id == result["run_id"]
