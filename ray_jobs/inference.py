"""What batch inference and online serving share: which version scores, how it is loaded, what it returns.

A registered version is scored with the features of the dataset version it was trained on (its
``skytrain.dataset_version`` tag names it; the manifest says the columns, the shape and the
normalization). It runs either as the PyTorch model MLflow logged or as its ONNX export under
onnxruntime (``SKYTRAIN_INFERENCE_RUNTIME``); both return the same outputs (checked at
registration, ``ray_jobs/onnx_model.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import mlflow
import numpy as np
import pyarrow as pa
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ray_jobs import storage
from ray_jobs.dataset import read_manifest
from ray_jobs.onnx_model import OnnxPredictor

CHAMPION = "champion"
Runtime = Literal["torch", "onnx"]


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


@dataclass(frozen=True)
class Scoring:
    """The model version that scores and what its rows look like: all an actor needs (picklable).

    ``artifact_uri`` is where the version's files are (``file://``, ``s3://``, ``mlflow-artifacts:``);
    ``run_id`` is its training run (where its ONNX export is); ``manifest`` is the manifest of the
    dataset version the model was trained on: feature columns and shape, classes or target, and
    the normalization of raw images. ``onnx_providers``: onnxruntime's execution providers, empty
    for the preferred available ones; decided where the scoring is set up, not in each actor.
    """

    model_name: str
    model_version: str
    artifact_uri: str
    tracking_uri: str
    manifest: dict[str, Any]
    run_id: str | None = None
    runtime: Runtime = "torch"
    onnx_providers: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        name: str,
        version: str,
        manifest: dict[str, Any],
        tracking_uri: str,
        runtime: str = "torch",
        onnx_providers: list[str] | tuple[str, ...] = (),
    ) -> Scoring:
        """Scoring with a registered version whose files are located here, once: the actors load them
        straight from the artifact store without opening the registry (3 s less per actor here).

        ``runtime`` ``auto`` is ``onnx`` for a version with an ONNX export (its ``skytrain.onnx``
        tag), else ``torch``.
        """
        client = mlflow.MlflowClient(tracking_uri)
        artifacts = client.get_model_version_download_uri(name, str(version))
        registered = client.get_model_version(name, str(version))
        if runtime == "auto":
            runtime = "onnx" if "skytrain.onnx" in registered.tags else "torch"
        return cls(
            name, str(version), artifacts, tracking_uri, manifest, registered.run_id, runtime, tuple(onnx_providers)
        )

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"

    @property
    def classification(self) -> bool:
        return self.manifest["task"] == "classification"

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["feature_shape"])

    @property
    def tensor_column(self) -> str | None:
        """The one list column holding each row's whole feature tensor (images), where that is the layout."""
        columns = self.manifest["feature_columns"]
        return columns[0] if len(columns) == 1 and len(self.feature_shape) > 1 else None

    @property
    def unlogged_target(self) -> str | None:
        """For a target trained as ``log(x)`` (diamonds: log price), the name ``x`` of its value in its units."""
        transform = self.manifest.get("target", {}).get("transform", "")
        return transform[4:-1] if transform.startswith("log(") and transform.endswith(")") else None

    def predictions_schema(self) -> pa.Schema:
        if self.classification:
            fields = [
                ("predicted", pa.int64()),
                ("probability", pa.float32()),  # of the predicted class
                ("probabilities", pa.list_(pa.float32(), self.manifest["classes"])),
            ]
        else:
            fields = [(self.manifest["target_column"], pa.float32())]  # the model's output, in its units
            if self.unlogged_target:
                fields.append((self.unlogged_target, pa.float64()))
        return pa.schema([("row", pa.int64()), *fields, ("model_name", pa.string()), ("model_version", pa.string())])


def load_predictor(scoring: Scoring, threads: int = 1, device: str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """The version as a function from float32 rows (shaped as the model takes them) to its output.

    ``torch``: the PyTorch module MLflow logged, rather than the pyfunc wrapper: the same forward
    pass (outputs equal), minus the wrapper's per-call schema enforcement. ``onnx``: the version's
    ONNX export on onnxruntime, with the preferred available execution providers.
    """
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(scoring.tracking_uri)  # resolves ``mlflow-artifacts:`` URIs of a server
    if scoring.runtime == "onnx":
        if scoring.run_id is None:
            raise ValueError(f"{scoring.model_uri}: no training run known, so no ONNX export to load")
        providers = list(scoring.onnx_providers) or None
        session = OnnxPredictor.of_run(scoring.run_id, scoring.tracking_uri, threads, providers)
        return lambda rows: torch.from_numpy(session.predict(rows))
    model = mlflow.pytorch.load_model(scoring.artifact_uri, map_location=device)
    target = torch.device(device)

    def predict(rows: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.from_numpy(rows).to(target)).float().cpu()

    return predict


def outputs(output: torch.Tensor, reasons: np.ndarray, scoring: Scoring) -> pa.Table:
    """One row per input row: the prediction (zeros where rejected) and the reason (null where scored)."""
    valid = reasons == None  # noqa: E711
    if scoring.classification:
        probabilities = np.zeros((len(reasons), output.shape[1]), np.float32)
        probabilities[valid] = torch.softmax(output, dim=1).numpy()
        predicted = np.zeros(len(reasons), np.int64)
        predicted[valid] = output.argmax(dim=1).numpy()
        columns = {
            "predicted": predicted,
            "probability": probabilities.max(axis=1),
            "probabilities": pa.FixedSizeListArray.from_arrays(probabilities.reshape(-1), probabilities.shape[1]),
        }
    else:
        prediction = np.zeros(len(reasons), np.float32)
        prediction[valid] = output.numpy().reshape(-1)
        columns = {scoring.manifest["target_column"]: prediction}
        if scoring.unlogged_target:
            columns[scoring.unlogged_target] = np.exp(prediction.astype(np.float64))
    return pa.table({**columns, "reason": pa.array(reasons, pa.string())})
