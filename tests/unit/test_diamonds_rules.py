"""Diamonds CSV rules and transform."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.datasets import diamonds
from flows.datasets.validation import DataValidationError


def sample_frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """Rows shaped like the diamonds CSV, every category level represented."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "carat": rng.uniform(0.2, 3, rows).round(2),
            **{c: [levels[i % len(levels)] for i in range(rows)] for c, levels in diamonds.CATEGORIES.items()},
            "depth": rng.uniform(55, 70, rows).round(1),
            "table": rng.uniform(50, 70, rows).round(0),
            "x": rng.uniform(3, 9, rows).round(2),
            "y": rng.uniform(3, 9, rows).round(2),
            "z": rng.uniform(2, 6, rows).round(2),
        }
    )
    frame["price"] = (np.exp(6 + frame["carat"]) + rng.uniform(0, 100, rows)).round().astype(int)
    return frame


def _check(tmp_path, frame=None, text=None):
    path = tmp_path / "diamonds.csv"
    if text is not None:
        path.write_text(text)
    else:
        frame.to_csv(path, index=False)
    return diamonds.validate(diamonds.read_csv(path), path)


def test_well_formed_csv_passes(tmp_path):
    report = _check(tmp_path, sample_frame())
    assert report.status == "pass" and not report.failures
    fields = {check.field for check in report.checks}
    assert {"carat", "price", "cut"} <= fields  # the rules ran on the columns, and every one passed


def _set(column, row, value):
    def mutate(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field", "rule"),
    [
        (lambda f: f.drop(columns=["clarity"]), "clarity", "column present"),
        (_set("depth", 3, "deep"), "depth", "numeric values"),
        (_set("carat", 7, np.nan), "carat", "no missing (NaN) values"),
        (_set("cut", 2, np.nan), "cut", "no missing (NaN) values"),
        (_set("price", 5, 0), "price", "price > 0"),
        (_set("price", 6, -12), "price", "price > 0"),
        (_set("color", 4, "Z"), "color", "known level (one of ['J', 'I', 'H', 'G', 'F', 'E', 'D'])"),
        (_set("depth", 9, 120.0), "depth", "values in [0, 100]"),
        (_set("x", 1, -3.5), "x", "values in [0, inf]"),
    ],
)
def test_each_rule_names_file_field_and_rule(tmp_path, mutate, field, rule):
    with pytest.raises(DataValidationError) as err:
        _check(tmp_path, mutate(sample_frame()))
    assert (err.value.field, err.value.rule) == (field, rule)
    assert str(tmp_path / "diamonds.csv") in str(err.value)


def test_nan_message_points_at_the_csv_line(tmp_path):
    with pytest.raises(DataValidationError, match=r"1 row\(s\), first at CSV line\(s\) 9"):
        _check(tmp_path, _set("carat", 7, np.nan)(sample_frame()))


@pytest.mark.parametrize("text", ["", "carat,cut,color\n"])
def test_empty_file(tmp_path, text):
    with pytest.raises(DataValidationError, match="field 'file'"):
        _check(tmp_path, text=text)


def test_transform_encodes_scales_and_splits():
    frame = sample_frame(rows=500)
    tables, manifest = diamonds.transform(frame, seed=3, val_fraction=0.1, test_fraction=0.2)
    assert {k: t.num_rows for k, t in tables.items()} == {"train": 350, "val": 50, "test": 100}
    train = tables["train"].to_pandas()
    for column in diamonds.NUMERIC:  # standardized with train-only statistics
        assert abs(train[column].mean()) < 1e-5 and abs(train[column].std(ddof=0) - 1) < 1e-4
    for column, levels in diamonds.CATEGORIES.items():  # exactly one level set per row
        assert (train[[f"{column}={lvl}" for lvl in levels]].sum(axis=1) == 1).all()
    every = pd.concat([t.to_pandas() for t in tables.values()])
    np.testing.assert_allclose(np.sort(every["log_price"]), np.sort(np.log(frame["price"])), rtol=1e-6)
    assert manifest["feature_columns"] == [c for c in train.columns if c != "log_price"]
    assert manifest["target"]["mean"] == pytest.approx(train["log_price"].mean(), rel=1e-5)


def test_split_is_deterministic_by_seed():
    frame = sample_frame(rows=300)

    def test_prices(seed):
        tables, _ = diamonds.transform(frame, seed=seed, val_fraction=0.1, test_fraction=0.1)
        return tables["test"].column("log_price").to_numpy()

    np.testing.assert_array_equal(test_prices(5), test_prices(5))
    assert not np.array_equal(test_prices(5), test_prices(6))


def test_bundled_csv_passes_every_rule():
    from ray_jobs.settings import Settings

    path = Settings().diamonds_location()
    frame = diamonds.read_csv(path)
    diamonds.validate(frame, path)
    assert len(frame) == 53_940
