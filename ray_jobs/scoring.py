"""What a registered version's scoring is, and what it returns: shared by batch inference's tasks
and the serving replicas, and light to import (numpy and Arrow only) so that a Ray worker that
unpickles a ``Scoring`` does not import MLflow or PyTorch for it (3 s of a batch run's start here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

Runtime = Literal["torch", "onnx"]


@dataclass(frozen=True)
class Scoring:
    """The model version that scores and what its rows look like: all a scoring worker needs (picklable).

    ``artifact_uri`` is where the version's files are (``file://``, ``s3://``, ``mlflow-artifacts:``);
    ``run_id`` is its training run (where its ONNX export is); ``manifest`` is the manifest of the
    dataset version the model was trained on: feature columns and shape, classes or target, and
    the normalization of raw images. ``onnx_providers``: onnxruntime's execution providers, empty
    for the preferred available ones; decided where the scoring is set up, not in each worker.
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
        """Scoring with a registered version whose files are located here, once: the workers load them
        straight from the artifact store without opening the registry (3 s less per worker here).

        ``runtime`` ``auto`` is ``onnx`` for a version with an ONNX export (its ``skytrain.onnx``
        tag), else ``torch``.
        """
        import mlflow  # here: the workers that unpickle a Scoring never need MLflow

        client = mlflow.MlflowClient(tracking_uri)
        artifacts = client.get_model_version_download_uri(name, str(version))
        registered = client.get_model_version(name, str(version))
        if runtime == "auto":
            runtime = "onnx" if "skytrain.onnx" in registered.tags else "torch"
        return cls(
            name, str(version), artifacts, tracking_uri, manifest, registered.run_id, runtime, tuple(onnx_providers)
        )

    def onnx_export(self) -> bytes:
        """The version's ONNX export (logged to its training run at registration), as bytes."""
        if self.run_id is None:
            raise ValueError(f"{self.model_uri}: no training run known, so no ONNX export to load")
        from ray_jobs.onnx_model import export_bytes  # MLflow, imported where the export is fetched

        return export_bytes(self.run_id, self.tracking_uri)

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


def outputs(output: Any, reasons: np.ndarray, scoring: Scoring) -> pa.Table:
    """One row per input row: the prediction (zeros where rejected) and the reason (null where scored).

    ``output``: the model's output for the valid rows (a numpy array, or a CPU tensor).
    """
    output = np.asarray(output, dtype=np.float32)
    valid = reasons == None  # noqa: E711
    if scoring.classification:
        probabilities = np.zeros((len(reasons), output.shape[1]), np.float32)
        probabilities[valid] = softmax(output)
        predicted = np.zeros(len(reasons), np.int64)
        predicted[valid] = output.argmax(axis=1)
        columns = {
            "predicted": predicted,
            "probability": probabilities.max(axis=1),
            "probabilities": pa.FixedSizeListArray.from_arrays(probabilities.reshape(-1), probabilities.shape[1]),
        }
    else:
        prediction = np.zeros(len(reasons), np.float32)
        prediction[valid] = output.reshape(-1)
        columns = {scoring.manifest["target_column"]: prediction}
        if scoring.unlogged_target:
            columns[scoring.unlogged_target] = np.exp(prediction.astype(np.float64))
    return pa.table({**columns, "reason": pa.array(reasons, pa.string())})


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, row by row (shifted by the row's maximum: no overflow)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
