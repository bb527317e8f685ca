"""Metrics shared by training and the promotion gate, so both score a model the same way."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def score(task: str, target: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Metrics of model outputs (logits for classification, values for regression)."""
    output = np.asarray(output)
    target = np.asarray(target)
    if task == "classification":
        return {"accuracy": float((output.argmax(axis=1) == target).mean())}
    prediction = output.reshape(-1).astype(np.float64)
    target = target.astype(np.float64)
    error = prediction - target
    total = ((target - target.mean()) ** 2).sum()
    return {
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": float(1.0 - (error**2).sum() / total) if total > 0 else float("nan"),
    }


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], features: np.ndarray, batch_size: int = 4096):
    return np.concatenate(
        [np.asarray(predict(features[i : i + batch_size])) for i in range(0, len(features), batch_size)]
    )
