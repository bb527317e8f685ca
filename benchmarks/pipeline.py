"""End-to-end ``make run`` split by stage: where the time of a retrain goes.

Each repeat runs ``make run``'s retrain (``python -m flows.retrain``, warm virtualenv) in a child
process on a fresh state directory, as a new user's first run does: both datasets prepared, both
models trained, registered, gated and smoke-tested. Its wall time runs from the child's start to
the retrain's return, then is split with what the run itself recorded:

- **data prep**: the ``prepare-*`` flow runs (Prefect's time in Running);
- **training**: building the ``TorchTrainer`` (its Ray datasets) and its ``fit()``, plus scoring
  the test split and the plots (the MLflow metrics ``phase_fit_seconds`` and
  ``phase_evaluate_seconds`` of each training run); Ray Train's fixed start-up
  (``startup_seconds``) is part of it and shown alone;
- **registration**: logging the model with its ONNX export and registering it (``phase_register_seconds``);
- **promotion**: the ``promote`` flow runs; **inference**: the ``smoke-inference`` task runs;
- **orchestration overhead**: the wall time minus all of the above. It is everything that is not
  a stage's own work: the interpreter, imports and Prefect's temporary API server before the flow
  starts (shown alone), starting Ray, Prefect's flow and task bookkeeping, artifacts, MLflow runs.

The target: overhead at most 25 % of the wall time, with the CNN still at >= 99.0 % test accuracy.

    python -m benchmarks.pipeline              # `make run` on the embedded defaults, 3 repeats
    python -m benchmarks.pipeline --quick      # a 2,000-row retrain of the regressor, 2 epochs, 1 worker, once (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_TARGET = 0.25  # orchestration overhead at most this share of the wall time
ACCURACY_TARGET = 0.99  # the CNN's test accuracy after `make run`
# The retrain each repeat runs: `make run`'s (``python -m flows.retrain``: every default), or CI's quick
# one, the whole pipeline on the small model only (a CNN training adds ~30 s of start-up), one worker.
FULL_RETRAIN = "retrain()"
QUICK_RETRAIN = "retrain(models=['diamonds-regressor'], limit_rows=2000, epochs=2, num_workers=1)"
ENDED, RECORDED = "SKYTRAIN_RETRAIN_ENDED ", "SKYTRAIN_RECORDED "
# The child runs the retrain, says when it ended, then reads what the run recorded while its Prefect
# API (the temporary server a process without ``make up`` starts) is still up: a second process
# would start a second one, ~20 s.
CHILD = f"""
import json, time
from flows.retrain import retrain
{{retrain}}
print({ENDED!r}, time.time(), flush=True)
from benchmarks.pipeline import recorded
print({RECORDED!r} + json.dumps(recorded()), flush=True)
"""
STAGES = ("data_prep", "training", "registration", "promotion", "inference")


def child_env(state_dir: Path) -> dict[str, str]:
    """The environment of a process working on ``state_dir``: its own Prefect database (in that
    state directory), no ``make up`` servers."""
    env = {**os.environ, "SKYTRAIN_STATE_DIR": str(state_dir), "SKYTRAIN_USE_SERVERS": "0"}
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    return env


def run_once(state_dir: Path, quick: bool) -> tuple[float, float, dict]:
    """One retrain on ``state_dir`` (``make run``'s, or the quick one) in a child process: its wall
    seconds, its start (epoch seconds) and what it recorded."""
    command = [sys.executable, "-c", CHILD.format(retrain=QUICK_RETRAIN if quick else FULL_RETRAIN)]
    log = state_dir.parent / f"{state_dir.name}.log"
    started = time.time()
    with log.open("w") as out:
        finished = subprocess.run(
            command, cwd=ROOT, env=child_env(state_dir), stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if finished.returncode != 0:
        raise RuntimeError(f"the retrain failed ({finished.returncode}); its output is in {log}")
    lines = log.read_text().splitlines()
    (ended,) = [float(line.removeprefix(ENDED)) for line in lines if line.startswith(ENDED)]
    (stages,) = [json.loads(line.removeprefix(RECORDED)) for line in lines if line.startswith(RECORDED)]
    return ended - started, started, stages


def recorded() -> dict:
    """(In the child) flow and task runs from Prefect's database, phase metrics from MLflow."""
    import asyncio

    import mlflow
    from prefect.client.orchestration import get_client

    import flows  # noqa: F401  points Prefect at the state directory's database
    from ray_jobs import tracking
    from ray_jobs.settings import Settings

    async def prefect_runs() -> tuple[list, list]:
        async with get_client() as client:
            names = {f.id: f.name for f in await client.read_flows()}
            flow_runs = [(names[r.flow_id], r) for r in await client.read_flow_runs()]
            return flow_runs, await client.read_task_runs()

    flow_runs, task_runs = asyncio.run(prefect_runs())
    (retrain,) = [run for name, run in flow_runs if name == "retrain"]

    def running(name: str) -> float:
        return sum(run.total_run_time.total_seconds() for flow, run in flow_runs if flow == name)

    settings = Settings()
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment(tracking.ensure_experiment(settings))
    metrics = [run.data.metrics for run in client.search_runs([experiment.experiment_id]) if run.data.metrics]
    trainings = [m for m in metrics if "phase_fit_seconds" in m]
    return {
        "flow_started_at": retrain.start_time.timestamp(),
        "data_prep": sum(running(name) for name in {flow for flow, _ in flow_runs if flow.startswith("prepare-")}),
        "training": sum(m["phase_fit_seconds"] + m["phase_evaluate_seconds"] for m in trainings),
        "ray_train_startup": sum(m.get("startup_seconds", 0.0) for m in trainings),
        "registration": sum(m["phase_register_seconds"] for m in trainings),
        "promotion": running("promote"),
        "inference": sum(t.total_run_time.total_seconds() for t in task_runs if t.name.startswith("smoke-inference")),
        "cnn_test_accuracy": next((m["test_accuracy"] for m in trainings if "test_accuracy" in m), None),
    }


def split(wall: float, started: float, stages: dict) -> dict:
    """One repeat: its stages, the overhead (wall minus the stages) and its parts."""
    work = sum(stages[name] for name in STAGES)
    return {
        "wall_s": wall,
        **{f"{name}_s": stages[name] for name in STAGES},
        "ray_train_startup_s": stages["ray_train_startup"],
        "overhead_s": wall - work,
        "overhead_before_flow_s": stages["flow_started_at"] - started,
        "overhead_share": (wall - work) / wall,
        "cnn_test_accuracy": stages["cnn_test_accuracy"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a 2,000-row, 2-epoch, 1-worker retrain of the regressor, once (CI)"
    )
    parser.add_argument("--repeats", type=int, help="runs, each on a fresh state directory (default 3; quick 1)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<date>-pipeline.json)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="skytrain-bench-pipeline-"))
    runs = []
    for repeat in range(repeats):
        state_dir = workdir / f"run-{repeat}"
        runs.append(split(*run_once(state_dir, args.quick)))
        print(format_run(runs[-1]), flush=True)
    summary = {
        key: {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for key in runs[0]
        if None not in (values := [r[key] for r in runs])
    }
    row = {"command": "retrain (quick)" if args.quick else "make run", "repeats": runs, "summary": summary}
    print(format_summary(summary), flush=True)
    targets = {
        "overhead_share": f"<= {OVERHEAD_TARGET:.0%} of the wall time",
        "cnn_test_accuracy": f">= {ACCURACY_TARGET}",
    }
    report.write("pipeline", args.quick, os.cpu_count() or 1, targets, [row], args.output)
    # Every run succeeded (a failed one raised, naming its log): its state and logs are not needed.
    shutil.rmtree(workdir, ignore_errors=True)


def format_run(run: dict) -> str:
    stages = ", ".join(f"{name.replace('_', ' ')} {run[f'{name}_s']:.1f}s" for name in STAGES)
    accuracy = run["cnn_test_accuracy"]
    return (
        f"wall {run['wall_s']:.1f}s: {stages}; overhead {run['overhead_s']:.1f}s = {run['overhead_share']:.0%} "
        f"({run['overhead_before_flow_s']:.1f}s before the flow starts); Ray Train start-up "
        f"{run['ray_train_startup_s']:.1f}s (in training); CNN test accuracy "
        + ("n/a" if accuracy is None else f"{accuracy:.4f}")
    )


def format_summary(summary: dict) -> str:
    share = summary["overhead_share"]["median"]
    verdict = "meets" if share <= OVERHEAD_TARGET else "misses"
    return f"median overhead {share:.0%} of {summary['wall_s']['median']:.1f}s ({verdict} <= {OVERHEAD_TARGET:.0%})"


if __name__ == "__main__":
    main()
