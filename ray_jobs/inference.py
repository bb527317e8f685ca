"""What batch inference and online serving share: which version scores, how it is loaded, what it returns.

A registered version is scored with the features of the dataset version it was trained on (its
``skytrain.dataset_version`` tag names it; the manifest says the columns, the shape and the
normalization). It runs either as the PyTorch model MLflow logged or as its ONNX export under
onnxruntime (``SKYTRAIN_INFERENCE_RUNTIME``); both return the same outputs (checked at
registration, ``ray_jobs/onnx_model.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ray_jobs import storage
from ray_jobs.dataset import read_manifest
from ray_jobs.onnx_model import OnnxPredictor
from ray_jobs.scoring import Scoring

CHAMPION = "champion"


def resolve_version(client: mlflow.MlflowClient, name: str, version: str | None) -> ModelVersion:
    """``version`` of the registered model, or the version ``champion`` points at now."""
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if version is not None:
            raise ValueError(f"{name} has no version '{version}': {error.message}") from None
        raise ValueError(f"{name} has no '{CHAMPION}': promote a version first, or pass version") from None


def training_manifest(chosen: ModelVersion, dataset: str, data_store: Any) -> tuple[str, dict[str, Any]]:
    """The dataset version the model version was trained on, and its manifest (columns, normalization)."""
    dataset_version = chosen.tags.get("skytrain.dataset_version")
    if not dataset_version:
        raise ValueError(
            f"{chosen.name} v{chosen.version} has no 'skytrain.dataset_version' tag: its input columns are unknown"
        )
    return dataset_version, read_manifest(storage.join(storage.join(data_store, dataset), dataset_version))


def load_predictor(scoring: Scoring, threads: int = 1, device: str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """The version as a function from float32 rows (shaped as the model takes them) to its output.

    ``torch``: the PyTorch module MLflow logged, rather than the pyfunc wrapper: the same forward
    pass (outputs equal), minus the wrapper's per-call schema enforcement. ``onnx``: the version's
    ONNX export on onnxruntime, with the preferred available execution providers.
    """
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(scoring.tracking_uri)  # resolves ``mlflow-artifacts:`` URIs of a server
    if scoring.runtime == "onnx":
        session = OnnxPredictor(scoring.onnx_export(), threads, list(scoring.onnx_providers) or None)
        return lambda rows: torch.from_numpy(session.predict(rows))
    model = mlflow.pytorch.load_model(scoring.artifact_uri, map_location=device)
    target = torch.device(device)

    def predict(rows: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.from_numpy(rows).to(target)).float().cpu()

    return predict
