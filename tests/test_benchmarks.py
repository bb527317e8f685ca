"""Each benchmark's quick mode runs once, so the suite keeps working (figures, not thresholds)."""

from __future__ import annotations

import json
import os

from benchmarks import train_epoch


def test_train_epoch_quick_mode_reports_ratios(tmp_path, state_dir, local_ray, keep_torch_threads):
    output = tmp_path / "train-epoch.json"
    train_epoch.main(
        # One model and one worker count keep CI short; the others take the same code paths.
        ["--quick", "--models", "diamonds-regressor"] + ["--workers", "1", "--output", str(output)],
    )
    report = json.loads(output.read_text())
    assert report["quick"] is True
    assert [row["model"] for row in report["results"]] == ["diamonds-regressor"]
    for row in report["results"]:
        plain = row["plain_torch"]
        assert plain["epochs"] == 2 and 0 < plain["min_s"] <= plain["median_s"] <= plain["max_s"]
        assert plain["median_s"] == min(plain["runs_medians_s"]) and len(plain["runs_medians_s"]) == 2
        ray_run = row["ray_1w"]
        assert ray_run["epochs"] == 2 and ray_run["startup_s"] > 0
        assert ray_run["ratio"] == ray_run["median_s"] / plain["median_s"]
        assert ray_run["ratio_to_1_thread"] == ray_run["median_s"] / row["plain_torch_by_threads"]["1"]["median_s"]


def test_the_floor_runs_one_plain_loop_per_worker_at_once(state_dir):
    from benchmarks.train_epoch import independent_shards, prepare, shard_loops
    from ray_jobs.models import spec_for
    from ray_jobs.settings import Settings
    from ray_jobs.train import resolve_hparams

    dataset = prepare("diamonds-regressor", 3000, Settings())
    hp = resolve_hparams(spec_for("diamonds-regressor"), None, epochs=3)
    loops = shard_loops("diamonds-regressor", dataset, hp, processes=2, cpus=2)
    pids = {run.pid for run in loops}
    assert len(pids) == 2 and os.getpid() not in pids  # a process of its own each
    spans = [(run.started, run.started + sum(run.times)) for run in loops]
    assert all(a_start < b_end for a_start, _ in spans for _, b_end in spans)  # they overlapped: at once
    assert all(len(run.times) == 3 and all(t > 0 for t in run.times) for run in loops)
    assert loops[0].weights_sum != loops[1].weights_sum  # no communication: each learned its own rows
    floor = independent_shards("diamonds-regressor", dataset, hp, processes=2, cpus=2)
    assert len(floor) == 3  # an epoch each, the slower loop's


def test_plain_ddp_is_one_data_parallel_job_without_ray(state_dir):
    """The reference between the floor and Ray Train: the shard loops on one gloo group, whose
    ranks end with the same weights (DDP averaged every step's gradients)."""
    from benchmarks.train_epoch import plain_ddp, prepare, shard_loops
    from ray_jobs.models import spec_for
    from ray_jobs.settings import Settings
    from ray_jobs.train import resolve_hparams

    dataset = prepare("diamonds-regressor", 3000, Settings())
    hp = resolve_hparams(spec_for("diamonds-regressor"), None, epochs=2)
    loops = shard_loops("diamonds-regressor", dataset, hp, processes=2, cpus=2, ddp=True)
    assert len({run.pid for run in loops}) == 2
    assert loops[0].weights_sum == loops[1].weights_sum
    assert all(len(run.times) == 2 for run in loops)
    assert len(plain_ddp("diamonds-regressor", dataset, hp, processes=2, cpus=2)) == 2


def test_data_prep_quick_mode_reports_its_ratio(tmp_path, state_dir, prefect_api):
    from benchmarks import data_prep

    output = tmp_path / "data-prep.json"
    data_prep.main(["--quick", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["quick"] is True
    (row,) = report["results"]
    assert row["source"] == "idx" and row["rows"] == 2500  # 1,500 train + 500 val + 500 test
    plain, prep, flow = row["plain_pyarrow_write"], row["skytrain_prep"], row["prepare_mnist_flow"]
    assert prep["ratio"] == prep["median_s"] / plain["median_s"] and prep["repeats"] == 1
    first = row["first_run"]  # the warm-up prep, reported alone
    assert first["repeats"] == 1 and first["ratio"] == first["median_s"] / plain["median_s"]
    assert flow["ratio"] == flow["median_s"] / plain["median_s"] and flow["median_s"] > 0
