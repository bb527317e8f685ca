"""The batch inference benchmark's quick mode runs once, so it keeps working (figures, not thresholds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batch_inference_quick_mode_reports_ratios(tmp_path):
    output = tmp_path / "batch-inference.json"
    env = {**os.environ, "SKYTRAIN_STATE_DIR": str(tmp_path / "state")}
    subprocess.run(
        # One model keeps CI short; the CNN takes the same code paths.
        [sys.executable, "-m", "benchmarks.batch_inference", "--quick", "--models", "diamonds-regressor"]
        + ["--batch-size", "64", "--actors", "1", "--output", str(output)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=900,
    )
    report = json.loads(output.read_text())
    assert report["quick"] is True
    (row,) = report["results"]
    assert row["model"] == "diamonds-regressor" and row["rows"] == 200  # 10 % of the quick slice's 2,000 rows
    plain, engine = row["plain_torch"], row["engine"]
    assert engine["rows_in"] == engine["rows_scored"] == row["rows"] and engine["rows_rejected"] == 0
    assert plain["rows_per_second"] == row["rows"] / min(plain["seconds"]) > 0
    assert engine["rows_per_second"] > 0 and engine["ratio"] == engine["rows_per_second"] / plain["rows_per_second"]
    assert row["pyfunc"]["rows_per_second"] > 0 and row["batch_size"] == 64
    onnx = row["onnxruntime"]
    assert onnx["providers"][-1] == "CPUExecutionProvider" and onnx["ratio"] == min(plain["seconds"]) / min(
        onnx["seconds"]
    )
    assert engine["actors"] == 1 and row["engine_by_actors"] == {"1": engine}
    assert engine["startup_seconds"] > 0 and engine["steady_rows_per_second"] > 0  # 4 batches: a pace after the 1st
