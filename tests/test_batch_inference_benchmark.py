"""The batch inference benchmark's quick mode runs once, so it keeps working (figures, not thresholds)."""

from __future__ import annotations

import json

from benchmarks import batch_inference
from ray_jobs import batch_predict


def test_batch_inference_quick_mode_reports_ratios(tmp_path, state_dir, local_ray, keep_torch_threads, monkeypatch):
    output = tmp_path / "batch-inference.json"
    monkeypatch.setattr(batch_predict, "CHUNK_BYTES", 64 * 4 * 26)  # chunks of one 64-row batch: 4 of them
    batch_inference.main(
        # One model keeps CI short; the CNN takes the same code paths.
        ["--quick", "--models", "diamonds-regressor"]
        + ["--batch-size", "64", "--workers", "1", "--files", "2", "--output", str(output)],
    )
    report = json.loads(output.read_text())
    assert report["quick"] is True
    (row,) = report["results"]
    assert row["model"] == "diamonds-regressor" and row["rows"] == 200  # 10 % of the quick slice's 2,000 rows
    assert row["files"] == 2  # the input as a folder of two files
    plain, engine = row["plain_torch"], row["engine"]
    assert engine["rows_in"] == engine["rows_scored"] == row["rows"] and engine["rows_rejected"] == 0
    assert plain["rows_per_second"] == row["rows"] / min(plain["seconds"]) > 0
    assert len(plain["seconds"]) == 2  # one pass before the engine, one after
    script = row["plain_script"]
    assert script["rows_per_second"] == row["rows"] / min(script["seconds"]) > 0 and len(script["seconds"]) == 2
    assert engine["script_ratio"] == engine["rows_per_second"] / script["rows_per_second"]
    assert engine["rows_per_second"] > 0 and engine["ratio"] == engine["rows_per_second"] / plain["rows_per_second"]
    assert row["pyfunc"]["rows_per_second"] > 0 and row["batch_size"] == 64
    onnx = row["onnxruntime"]
    assert onnx["providers"][-1] == "CPUExecutionProvider" and onnx["ratio"] == min(plain["seconds"]) / min(
        onnx["seconds"]
    )
    floor = row["ray_data_floor"]  # an execution of Ray Data that does nothing: the most any engine on it reaches
    assert len(floor["seconds"]) == 5 and floor["ceiling"] == min(plain["seconds"]) / min(floor["seconds"])
    assert engine["workers"] == 1 and row["engine_by_workers"] == {"1": engine}
    assert engine["startup_seconds"] > 0 and engine["steady_rows_per_second"] > 0  # 4 batches: a pace after the 1st
