"""``make bench``'s suite: the scaling, pipeline and GPU benchmarks' quick modes, and the report
(``benchmarks/results/<date>.json`` and ``docs/benchmarks.md``) built from measured results."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_mnist, pipeline, scaling, suite, tables


def test_scaling_quick_mode_reports_each_fraction_against_linear(tmp_path, state_dir, local_ray, keep_torch_threads):
    output = tmp_path / "scaling.json"
    scaling.main(["--quick", "--output", str(output)])
    (row,) = json.loads(output.read_text())["results"]
    fractions = row["by_fraction"]
    assert list(fractions) == ["0.5", "1.0"]
    assert [fractions[f]["rows"] for f in fractions] == [1000, 2000]  # training rows of each version
    assert row["workers"] == 1
    for fraction, measured in fractions.items():
        expected = measured["median_s"] / (float(fraction) * fractions["1.0"]["median_s"])
        assert measured["linearity"] == pytest.approx(expected) and measured["epochs"] == 2
    assert fractions["1.0"]["linearity"] == pytest.approx(1.0)


def test_pipeline_quick_mode_splits_the_wall_time_by_stage(tmp_path):
    output = tmp_path / "pipeline.json"
    pipeline.main(["--quick", "--output", str(output)])
    (row,) = json.loads(output.read_text())["results"]
    (run,) = row["repeats"]
    stages = [run[f"{name}_s"] for name in pipeline.STAGES]
    assert all(seconds > 0 for seconds in stages), run  # every stage ran and was found in the records
    assert run["overhead_s"] == pytest.approx(run["wall_s"] - sum(stages))
    assert 0 < run["overhead_before_flow_s"] < run["overhead_s"]
    assert run["cnn_test_accuracy"] is None  # the quick mode trains the regressor only
    assert row["summary"]["overhead_share"]["median"] == pytest.approx(run["overhead_s"] / run["wall_s"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the GPU benchmark trains for real")
def test_gpu_benchmark_says_it_measured_nothing_without_cuda(tmp_path):
    output = tmp_path / "gpu-mnist.json"
    gpu_mnist.main(["--quick", "--output", str(output)])
    (result,) = json.loads(output.read_text())["results"]
    assert "no CUDA device" in result["skipped"]
    (row,) = tables.gpu_mnist(json.loads(output.read_text()))
    assert row["skytrain"] == "not measured" and row["met"] == "n/a"


def test_the_report_has_a_table_per_measured_benchmark_and_lists_every_missed_target(tmp_path, monkeypatch):
    """Built from the reports this repository keeps (benchmarks/results/), as `make bench` does."""
    reports = {name: report for name in suite.BENCHMARKS if (report := suite.latest(name)) is not None}
    assert {"train_epoch", "data_prep", "batch_inference", "serving"} <= set(reports)
    document = suite.markdown(suite.combined(reports))
    for name in suite.BENCHMARKS:
        assert f"## {suite.TITLES[name]}" in document
    # A figure is "met" exactly when its ratio is within its target, and every miss is listed on top.
    train = reports["train_epoch"]["results"][0]
    rows = {row["figure"]: row for row in tables.train_epoch(reports["train_epoch"])}
    one_worker = rows[f"{train['model']}: seconds per epoch, Ray Train 1 worker"]
    assert one_worker["met"] == ("yes" if train["ray_1w"]["ratio"] <= 1.05 else "**no**")
    missed = suite.missed_targets(reports)
    every_row = [row for name, report in reports.items() for row in tables.TABLES[name](report)]
    assert len(missed) == sum(row["met"] == "**no**" for row in every_row)
    assert all(f"- {line}" in document for line in missed)


def test_the_engine_pace_after_start_up_is_shown_only_for_a_run_mostly_past_it():
    engine = {"rows_in": 540_000, "rows_per_second": 1_400_000.0, "steady_ratio": 0.9}  # a 0.39 s run
    assert tables.steady_pace({**engine, "startup_seconds": 0.3}) is None  # the other chunks arrived together
    assert tables.steady_pace({**engine, "startup_seconds": 0.1}) == 0.9
    assert tables.steady_pace({**engine, "startup_seconds": 0.1, "steady_ratio": None}) is None  # one chunk
