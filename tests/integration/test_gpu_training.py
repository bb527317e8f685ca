"""The GPU path (CUDA device, NCCL, bf16 autocast, channels_last, data resident on the GPU,
optionally torch.compile) on a real CUDA machine."""

from __future__ import annotations

import mlflow
import pytest
import torch

from flows.datasets import mnist
from flows.datasets.store import write_version
from ray_jobs.settings import Settings
from ray_jobs.train import run_training

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the GPU training path (NCCL, bf16 autocast, channels_last, data resident on "
    "the GPU, torch.compile) is not exercised",
)


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_cnn_trains_on_gpu(local_ray, state_dir, compile_model):
    settings = Settings()
    raw, _ = mnist.read_verified(settings.mnist_location(), settings.mnist_sha256)
    tables, manifest = mnist.transform(
        mnist.parse(raw, settings.mnist_location()), seed=0, val_size=1000, limit_rows=5000
    )
    dataset_dir = write_version(settings.data_store, "mnist", "gpu-test", tables, manifest)
    result = run_training("mnist-cnn", dataset_dir, epochs=2, num_workers=1, use_gpu=True, compile_model=compile_model)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["device"] == "cuda"
    assert run.data.metrics["data_resident"] == 1.0  # 4000 MNIST rows fit on any GPU
    assert run.data.metrics["gpu_memory_peak_gib"] > 0
    assert result["metrics"]["test_accuracy"] > 0.8
