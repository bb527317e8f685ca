"""Figures logged with every training run (matplotlib's object API: no global pyplot state)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def learning_curves(history: dict[str, list[tuple[int, float]]]) -> Figure:
    """One panel per metric: its value at each epoch."""
    figure = Figure(figsize=(5 * len(history), 3.5), layout="tight")
    for axis, (key, points) in zip(np.atleast_1d(figure.subplots(1, len(history))), history.items()):
        steps, values = zip(*sorted(points)) if points else ((), ())
        axis.plot(steps, values, marker="o")
        axis.set(title=key, xlabel="epoch")
        axis.grid(alpha=0.3)
    return figure


def confusion_matrix(target: np.ndarray, predicted: np.ndarray, classes: int) -> Figure:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (target, predicted), 1)
    figure = Figure(figsize=(5.5, 5), layout="tight")
    axis = figure.subplots()
    axis.imshow(np.log1p(matrix), cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axis.text(column, row, str(count), ha="center", va="center", fontsize=6)
    axis.set(title="test confusion matrix", xlabel="predicted", ylabel="true")
    axis.set_xticks(range(classes))
    axis.set_yticks(range(classes))
    return figure


def misclassified_digits(images: np.ndarray, target: np.ndarray, predicted: np.ndarray, limit: int = 25) -> Figure:
    """A grid of test images the model got wrong, titled 'true→predicted'."""
    wrong = np.flatnonzero(target != predicted)[:limit]
    side = max(1, int(np.ceil(np.sqrt(len(wrong)))))
    figure = Figure(figsize=(1.4 * side, 1.5 * side), layout="tight")
    axes = np.atleast_1d(figure.subplots(side, side)).reshape(-1)
    for axis in axes:
        axis.axis("off")
    for axis, index in zip(axes, wrong):
        axis.imshow(images[index].reshape(images.shape[-2:]), cmap="gray")
        axis.set_title(f"{target[index]}→{predicted[index]}", fontsize=8)
    figure.suptitle(f"misclassified test digits ({len(np.flatnonzero(target != predicted))} in all)")
    return figure


def predicted_vs_actual(target: np.ndarray, prediction: np.ndarray, label: str) -> Figure:
    figure = Figure(figsize=(5, 4.5), layout="tight")
    axis = figure.subplots()
    axis.scatter(target, prediction, s=2, alpha=0.3)
    bounds = [float(target.min()), float(target.max())]
    axis.plot(bounds, bounds, color="black", linewidth=1)
    axis.set(title=f"test: predicted vs actual {label}", xlabel="actual", ylabel="predicted")
    return figure


def residuals(target: np.ndarray, prediction: np.ndarray, label: str) -> Figure:
    error = prediction - target
    figure = Figure(figsize=(10, 4), layout="tight")
    scatter, histogram = figure.subplots(1, 2)
    scatter.scatter(prediction, error, s=2, alpha=0.3)
    scatter.axhline(0, color="black", linewidth=1)
    scatter.set(title="residuals vs predicted", xlabel=f"predicted {label}", ylabel="predicted − actual")
    histogram.hist(error, bins=60)
    histogram.set(title="residual distribution", xlabel="predicted − actual", ylabel="rows")
    return figure
