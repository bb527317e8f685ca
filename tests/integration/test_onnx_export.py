"""Every registered version's ONNX export: checked, logged and named on the version, or nothing registered."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from ray_jobs import tracking
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.models import spec_for
from ray_jobs.onnx_model import ATOL, RTOL, OnnxExportError, OnnxPredictor
from ray_jobs.settings import Settings
from tests.registered import least_squares, register, small_diamonds

REGRESSOR = spec_for("diamonds-regressor")


class DataDependentBranch(torch.nn.Module):
    """A forward pass torch.export cannot trace: which branch runs depends on the values."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(26, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.sum() > 0:
            return self.linear(rows).squeeze(-1)
        return -self.linear(rows).squeeze(-1)


@pytest.fixture
def gems(state_dir):
    settings = Settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return small_diamonds(settings, rows=1000)


def test_a_registered_version_carries_its_checked_export(gems):
    version = register(least_squares(gems, offset=0.3), REGRESSOR, gems, {"arch": "linear", "hidden": 0})
    client = mlflow.MlflowClient()
    registered = client.get_model_version(REGRESSOR.registered_name, version)
    assert registered.tags["skytrain.onnx"] == "onnx/model.onnx"
    assert registered.tags["skytrain.onnx.tolerance"] == f"atol {ATOL:g} + rtol {RTOL:g} x |value| on 5 test rows"
    check = json.loads(mlflow.artifacts.load_text(f"runs:/{registered.run_id}/onnx/check.json"))
    assert check["passed"] and check["max_abs_diff"] == pytest.approx(
        float(registered.tags["skytrain.onnx.max_abs_diff"]), rel=1e-2
    )

    rows, _ = load_split(gems, "test")
    onnx = OnnxPredictor.of_run(registered.run_id, Settings().mlflow_tracking_uri).predict(rows)
    expected = mlflow.pyfunc.load_model(f"models:/{REGRESSOR.registered_name}/{version}").predict(rows)
    np.testing.assert_allclose(onnx, expected, rtol=RTOL, atol=ATOL)


def test_a_model_that_cannot_be_exported_is_not_registered(gems):
    manifest = read_manifest(gems)
    example, _ = load_split(gems, "test", manifest)
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(Settings())) as run:
        with pytest.raises(OnnxExportError, match="ONNX export failed: TorchExportError"):
            tracking.log_and_register(
                DataDependentBranch(), REGRESSOR, example[:5], manifest, {"arch": "x", "hidden": 0}, run.info.run_id
            )
    assert mlflow.MlflowClient().search_model_versions(f"name = '{REGRESSOR.registered_name}'") == []
