"""A dataset version's validation report, and its drift against the previous version.

Every rule a source is checked against becomes a ``Check`` (rule, field, status, count, detail) in
a ``Report``. The report goes into the version's manifest and into a Prefect artifact; a failed
check stops data prep with a ``DataValidationError`` naming the file, the field and the rule of the
first failure, before anything is written.

Drift compares the new version's training split with the previous version's *profile* (per-feature
mean and standard deviation, the label distribution), which each manifest keeps, so the previous
data never has to be read again:
- mean shift: ``|mean_new - mean_old|`` in units of the two versions' pooled standard deviation;
- spread: ``std_new / std_old`` (either way round);
- labels: the population stability index (PSI) of the class shares (classification) or of the
  target over the previous version's deciles (regression). PSI 0.1-0.2 is a moderate shift, above
  0.2 a significant one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from flows.datasets.validation import DataValidationError

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
PSI_FLOOR = 1e-4  # share given to an empty bin, so the index stays finite
ROWS_PER_BLOCK = 2048  # integer features are converted to float this many rows at a time
PERCENTILES = np.arange(101, dtype=np.float64)
DECILE_INDEX = np.arange(10, 100, 10)  # the 10th..90th percentiles: edges of the previous version's deciles
SPREAD_FLOOR = 0.01  # of the largest feature std: below it a feature's spread is not compared
SHOWN_FEATURES = 5  # worst features named in a drift check's detail


class DriftThresholds(BaseModel):
    """How far a new version may move from the previous one before data prep fails."""

    max_mean_shift: float = Field(
        default=0.5, gt=0, description="Largest per-feature mean shift, in pooled standard deviations."
    )
    max_std_ratio: float = Field(default=2.0, gt=1, description="Largest per-feature ratio of standard deviations.")
    max_label_psi: float = Field(default=0.2, gt=0, description="Largest PSI of the label (target) distribution.")
    min_rows: int = Field(default=1000, ge=1, description="Fewer training rows in either version: no drift check.")


@dataclass(frozen=True)
class Check:
    rule: str
    field: str
    status: str
    count: int | None = None  # rows, values or features concerned
    detail: str = ""


class Report:
    """The checks of one source, in the order they ran."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.checks: list[Check] = []

    def check(self, ok: bool, field: str, rule: str, *, count: int | None = None, detail: str = "", warn=False) -> bool:
        """Record one rule; a broken rule fails the report, or only warns with ``warn``."""
        status = PASS if ok else (WARN if warn else FAIL)
        self.checks.append(Check(rule, field, status, count, detail))
        return ok

    def add(self, check: Check) -> None:
        self.checks.append(check)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    def raise_for_failures(self) -> None:
        """Stop at the first failed rule (the report travels with the error)."""
        if failures := self.failures:
            first = failures[0]
            more = (
                f" (and {len(failures) - 1} more failed rule(s) in the validation report)" if len(failures) > 1 else ""
            )
            error = DataValidationError(self.file, first.field, first.rule, first.detail + more)
            error.report = self
            raise error

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "status": self.status, "checks": [asdict(c) for c in self.checks]}

    def markdown(self, title: str) -> str:
        lines = [
            f"## {title}: {self.status}",
            "",
            f"Source: `{self.file}`",
            "",
            "| rule | field | status | count | detail |",
        ]
        lines.append("|---|---|---|---|---|")
        for c in self.checks:
            detail = c.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c.rule} | {c.field} | {c.status} | {'' if c.count is None else c.count} | {detail} |")
        return "\n".join(lines)


def duplicate_count(features: np.ndarray, target: np.ndarray | None = None) -> int:
    """How many rows (``features`` with their ``target``, if given) repeat an earlier identical row.

    Rows are first grouped by two random projections of the features and the target (one matrix
    product instead of sorting whole rows, and no copy of the features); only rows that share a
    group are compared value by value.
    """
    flat = features.reshape(len(features), -1)
    weights = np.random.default_rng(0).standard_normal((flat.shape[1], 2))
    if flat.dtype.kind == "f":
        keys = flat @ weights.astype(flat.dtype, copy=False)
    else:  # integers (8-bit pixels): projected a block of rows at a time, never as one float copy
        keys = np.empty((len(flat), 2))
        for lo in range(0, len(flat), ROWS_PER_BLOCK):
            keys[lo : lo + ROWS_PER_BLOCK] = flat[lo : lo + ROWS_PER_BLOCK].astype(np.float64) @ weights
    if target is not None:
        keys = np.column_stack([keys, target.reshape(len(flat), -1).astype(np.float64)])
    _, group, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    duplicates = 0
    for candidate in np.flatnonzero(sizes > 1):
        members = order[starts[candidate] : starts[candidate + 1]]
        rows = flat[members]
        if target is not None:
            rows = np.column_stack([rows.astype(np.float64), target.reshape(len(flat), -1)[members]])
        duplicates += len(rows) - len(np.unique(rows, axis=0))
    return duplicates


def duplicate_rows(report: Report, features: np.ndarray, target: np.ndarray, max_fraction: float) -> None:
    """Identical (features, target) rows: a warning, a failure above ``max_fraction`` of the rows."""
    duplicates = duplicate_count(features, target)
    rows = len(features)
    fraction = duplicates / max(rows, 1)
    if duplicates == 0:
        report.check(True, "rows", "no duplicate rows", count=0)
    else:
        report.check(
            False,
            "rows",
            f"duplicate rows at most {max_fraction:.0%} of the rows",
            count=duplicates,
            detail=f"{duplicates} duplicate row(s), {fraction:.2%} of {rows}",
            warn=fraction <= max_fraction,
        )


def class_balance(report: Report, labels: np.ndarray, classes: int, min_share: float) -> None:
    """Every class holds at least ``min_share`` of its fair share (1/classes) of the rows."""
    counts = np.bincount(labels.astype(np.int64), minlength=classes)
    floor = min_share * len(labels) / classes
    rare = [f"{k}: {int(n)}" for k, n in enumerate(counts) if n < floor]
    report.check(
        not rare,
        "label",
        f"each class has at least {min_share:.0%} of a fair share (1/{classes}) of the rows",
        count=len(rare),
        detail=f"below {floor:.0f} rows: {', '.join(rare)}" if rare else f"smallest class {int(counts.min())} rows",
    )


def column_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature (column of the flattened rows): the mean and the mean of the squares, in float64.
    Integer features (8-bit pixels) are summed a block of rows at a time, never as one float copy."""
    flat = features.reshape(len(features), -1)
    if flat.dtype.kind == "f":
        sums = flat.sum(axis=0, dtype=np.float64)
        squares = np.einsum("ij,ij->j", flat, flat, dtype=np.float64)
    else:
        sums, squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
        for lo in range(0, len(flat), ROWS_PER_BLOCK):
            block = flat[lo : lo + ROWS_PER_BLOCK].astype(np.float64)
            sums += block.sum(axis=0)
            squares += np.einsum("ij,ij->j", block, block)
    rows = max(len(flat), 1)
    return sums / rows, squares / rows


def profile(
    features: np.ndarray,
    target: np.ndarray,
    names: list[str],
    task: str,
    moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """What the next version's drift checks compare with: per-feature mean/std, the label distribution
    (class shares, or the target's percentiles 0..100). ``moments``: ``column_moments(features)``
    when the caller has them already."""
    mean, squares = moments if moments is not None else column_moments(features)
    result: dict[str, Any] = {
        "rows": len(features),
        "features": names,
        "mean": mean.round(6).tolist(),
        "std": np.sqrt(np.maximum(squares - mean**2, 0.0)).round(6).tolist(),
    }
    if task == "classification":
        counts = np.bincount(target.astype(np.int64))
        result["label"] = {"kind": "classes", "shares": (counts / counts.sum()).round(6).tolist()}
    else:
        percentiles = np.percentile(target.astype(np.float64), PERCENTILES)
        result["label"] = {"kind": "percentiles", "values": percentiles.round(6).tolist()}
    return result


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(((actual - expected) * np.log(actual / expected)).sum())


def label_shares(previous: dict[str, Any], current: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The two versions' label distributions over the same bins: the classes, or the previous
    version's target deciles (the new version's shares read off its percentiles)."""
    if previous["kind"] == "classes":
        expected, actual = np.asarray(previous["shares"]), np.asarray(current["shares"])
        size = max(len(expected), len(actual))  # classes one version never had count as 0
        return np.pad(expected, (0, size - len(expected))), np.pad(actual, (0, size - len(actual)))
    edges = np.asarray(previous["values"])[DECILE_INDEX]
    cdf = np.interp(edges, np.asarray(current["values"]), PERCENTILES / 100, left=0.0, right=1.0)
    actual = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return np.full(10, 0.1), actual


def _worst(names: list[str], values: np.ndarray, over: np.ndarray) -> str:
    order = np.argsort(-values)[:SHOWN_FEATURES]
    return ", ".join(f"{names[i]}={values[i]:.3g}" for i in order if over[i])


def drift(
    report: Report,
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    thresholds: DriftThresholds,
    *,
    previous_version: str | None,
    enforce: bool = True,
) -> None:
    """Drift checks of ``current`` (a ``profile`` of the new training split) against the previous
    version's profile.

    Broken thresholds fail the report, or only warn when ``enforce`` is off (a shift the user expects).
    """
    reason = None
    if previous is None:
        reason = "no previous version"
    elif previous.get("features") != current["features"]:
        reason = "the previous version has other features"
    elif min(previous["rows"], current["rows"]) < thresholds.min_rows:
        reason = f"fewer than {thresholds.min_rows} training rows in one version: too few to compare"
    if reason:
        for field in ("features", "label"):
            report.add(Check("drift against the previous version", field, SKIP, detail=reason))
        return
    against = f"against version {previous_version}"
    old_mean, new_mean = np.asarray(previous["mean"]), np.asarray(current["mean"])
    old_std, new_std = np.asarray(previous["std"]), np.asarray(current["std"])
    names = current["features"]
    pooled = np.sqrt((old_std**2 + new_std**2) / 2)
    difference = np.abs(new_mean - old_mean)
    shift = np.divide(difference, pooled, out=np.where(difference > 0, np.inf, 0.0), where=pooled > 0)
    over = shift > thresholds.max_mean_shift
    report.check(
        not over.any(),
        "features",
        f"mean shift at most {thresholds.max_mean_shift:g} pooled std",
        count=int(over.sum()),
        detail=f"{int(over.sum())} feature(s) {against}: {_worst(names, shift, over)}"
        if over.any()
        else f"largest {float(shift.max(initial=0)):.3g} {against}",
        warn=not enforce,
    )
    # Features with too little spread to compare (a border pixel inked in a handful of images) are
    # left out of the spread check: their ratio is noise.
    floor = SPREAD_FLOOR * float(old_std.max(initial=0.0))
    varying = (old_std > floor) & (new_std > floor)
    ratio = np.ones_like(old_std)
    ratio[varying] = np.maximum(new_std[varying] / old_std[varying], old_std[varying] / new_std[varying])
    over = ratio > thresholds.max_std_ratio
    report.check(
        not over.any(),
        "features",
        f"std ratio at most {thresholds.max_std_ratio:g}",
        count=int(over.sum()),
        detail=f"{int(over.sum())} feature(s) {against}: {_worst(names, ratio, over)}"
        if over.any()
        else f"largest {float(ratio.max(initial=1)):.3g} {against}",
        warn=not enforce,
    )
    if previous["label"]["kind"] != current["label"]["kind"]:
        report.add(Check("drift against the previous version", "label", SKIP, detail="another kind of label"))
        return
    expected, actual = label_shares(previous["label"], current["label"])
    index = psi(expected, actual)
    report.check(
        index <= thresholds.max_label_psi,
        "label",
        f"label distribution PSI at most {thresholds.max_label_psi:g}",
        detail=f"PSI {index:.4f} {against}",
        warn=not enforce,
    )
