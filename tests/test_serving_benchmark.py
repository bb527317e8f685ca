"""The serving benchmark's quick mode runs once, so it keeps working (figures, not thresholds)."""

from __future__ import annotations

import json

from benchmarks import serving


def test_serving_quick_mode_compares_skytrain_with_mlflow_models_serve(tmp_path, state_dir, local_ray):
    output = tmp_path / "serving.json"
    serving.main(
        # One runtime (the other is one setting away: tests/integration/test_serving.py serves both),
        # two concurrencies, few requests; the replica takes a quarter CPU beside the test's Ray.
        ["--quick", "--replica-cpus", "0.25", "--runtimes", "onnx"]
        + ["--concurrency", "1", "4", "--requests", "20", "40", "--output", str(output)],
    )
    report = json.loads(output.read_text())
    assert report["quick"] is True and report["benchmark"] == "serving"
    (result,) = report["results"]
    servers = {server["server"]: server for server in result["servers"]}
    assert list(servers) == ["skytrain (onnx)", "mlflow models serve"]
    mlflow_figures = servers["mlflow models serve"]["by_concurrency"]
    assert set(result["ray_serve_floor"]["by_concurrency"]) == {"1", "4"}
    for name in ["skytrain (onnx)"]:
        for level, requests in (("1", 20), ("4", 40)):
            figures = servers[name]["by_concurrency"][level]
            assert figures["requests"] == requests and 0 < figures["p50_ms"] <= figures["p99_ms"]
            assert (
                figures["rps_ratio_to_mlflow"]
                == figures["requests_per_second"] / mlflow_figures[level]["requests_per_second"]
            )
            assert figures["p50_goal_met"] == (figures["p50_ms"] <= 5.0)
