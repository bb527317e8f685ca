"""Each benchmark's report as rows of one markdown table: figure, measured, baseline, ratio, target.

One function per benchmark, named after it (``report["benchmark"]``); each row says whether its
target is met, so the table, not the README, is where a missed target shows.
"""

from __future__ import annotations

from collections.abc import Callable

Row = dict[str, str]
COLUMNS = ("figure", "skytrain", "baseline", "ratio", "target", "met")


def _s(summary: dict) -> str:
    """``median s [min–max]``."""
    return f"{summary['median_s']:.2f} s [{summary['min_s']:.2f}–{summary['max_s']:.2f}]"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def train_epoch(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        base = result["plain_torch"]
        threads = base["threads"]
        baseline = f"plain PyTorch, {threads} thread{'s' if threads > 1 else ''}: {_s(base)}"
        if (tuned := result.get("plain_torch_worker_env")) is not None:
            rows.append(
                _row(
                    f"{result['model']}: the same plain loop, started with the workers' environment "
                    "(`worker_env`: malloc settings)",
                    _s(tuned),
                    baseline=baseline,
                    ratio=f"{tuned['ratio']:.2f}×",
                )
            )
        for workers, target in ((1, 1.05), (2, 0.85)):
            if (ray := result.get(f"ray_{workers}w")) is None:
                continue
            plural = "s" * (workers > 1)
            rows.append(
                _row(
                    f"{result['model']}: seconds per epoch, Ray Train {workers} worker{plural}",
                    _s(ray),
                    baseline=baseline,
                    ratio=f"{ray['ratio']:.2f}×",
                    target=f"≤ {target}×",
                    met=_verdict(ray["ratio"] <= target),
                )
            )
            rows.append(
                _row(
                    f"{result['model']}: `fit()` to first step, {workers} worker{plural}",
                    f"{ray['startup_s']:.1f} s",
                    target="reported alone",
                )
            )
            if (floor := result.get(f"floor_{workers}w")) is not None:
                rows.append(
                    _row(
                        f"{result['model']}: {workers} plain loops on 1/{workers} of the rows each, "
                        "no communication (the floor)",
                        _s(floor),
                        baseline=baseline,
                        ratio=f"{floor['ratio']:.2f}×",
                    )
                )
            if (ddp := result.get(f"plain_ddp_{workers}w")) is not None:
                rows.append(
                    _row(
                        f"{result['model']}: the same {workers}-process DDP job without Ray (gloo, "
                        f"skytrain's DDP settings); Ray Train {ray['ratio_to_plain_ddp']:.2f}× of it",
                        _s(ddp),
                        baseline=baseline,
                        ratio=f"{ddp['ratio']:.2f}×",
                    )
                )
    return rows


def scaling(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        full = result["by_fraction"]["1.0"]
        for fraction, measured in result["by_fraction"].items():
            rows.append(
                {
                    "figure": f"{result['model']}: seconds per epoch on {float(fraction):.0%} of the rows "
                    f"({measured['rows']:,}), {result['workers']} workers",
                    "skytrain": _s(measured),
                    "baseline": f"100 %: {full['median_s']:.2f} s × {float(fraction):.2f}",
                    "ratio": f"{measured['linearity']:.2f}×",
                    "target": "≈ 1× (linear)",
                    "met": _verdict(abs(measured["linearity"] - 1) <= result["tolerance"]),
                }
            )
    return rows


def pipeline(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        summary, n = result["summary"], len(result["repeats"])

        def seconds(key: str, summary: dict = summary) -> str:
            s = summary[key]
            return f"{s['median']:.1f} s [{s['min']:.1f}–{s['max']:.1f}]"

        wall = summary["wall_s"]["median"]
        rows.append(_row(f"`{result['command']}` wall time ({n} run{'s' * (n > 1)})", seconds("wall_s")))
        for stage in ("data_prep", "training", "registration", "promotion", "inference"):
            share = summary[f"{stage}_s"]["median"] / wall
            rows.append(_row(f"  stage: {stage.replace('_', ' ')}", seconds(f"{stage}_s"), ratio=f"{share:.0%}"))
        rows.append(_row("  of training: Ray Train start-up", seconds("ray_train_startup_s")))
        share = summary["overhead_share"]["median"]
        rows.append(
            _row(
                "  orchestration overhead (wall − stages)",
                seconds("overhead_s"),
                ratio=f"{share:.0%}",
                target="≤ 25 % of wall",
                met=_verdict(share <= 0.25),
            )
        )
        before = seconds("overhead_before_flow_s")
        rows.append(_row("  of overhead: before the flow starts (imports, Prefect API)", before))
        if (accuracy := summary.get("cnn_test_accuracy")) is not None:
            rows.append(
                _row(
                    "  CNN test accuracy",
                    f"{accuracy['median']:.4f}",
                    target="≥ 0.990",
                    met=_verdict(accuracy["min"] >= 0.99),
                )
            )
    return rows


def data_prep(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        base = result["plain_pyarrow_write"]
        figures = (
            ("skytrain_prep", "data prep", True),
            ("first_run", "its first run in the process (fresh memory, reported alone)", False),
            ("prepare_mnist_flow", "`prepare-mnist` flow end to end", True),
            (
                "prepare_mnist_flow_first_run",
                "the flow's first run (Prefect's per-process setup, reported alone)",
                False,
            ),
        )
        for key, label, targeted in figures:
            if (measured := result.get(key)) is None:  # the first runs: results from 2026-12-05 on
                continue
            rows.append(
                {
                    "figure": f"MNIST from {result['source']} ({result['rows']:,} images): {label}",
                    "skytrain": _s(measured),
                    "baseline": f"plain pyarrow write: {_s(base)}",
                    "ratio": f"{measured['ratio']:.2f}×",
                    "target": "≤ 1.5×" if targeted else "",
                    "met": _verdict(measured["ratio"] <= 1.5 if targeted else None),
                }
            )
    return rows


def steady_pace(engine: dict) -> float | None:
    """The engine's pace after its first chunk, as a ratio to the plain loop; None when the run was
    mostly start-up (the first chunk back after more than half the run): then the other chunks were
    scored meanwhile and arrive together, and their pace says nothing."""
    run_seconds = engine["rows_in"] / engine["rows_per_second"]
    return engine.get("steady_ratio") if engine["startup_seconds"] < run_seconds / 2 else None


def batch_inference(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        plain, onnx, engine = result["plain_torch"], result["onnxruntime"], result["engine"]
        # Until 2026-11-23 the engine scored in an actor pool ("actors"); since, in tasks ("workers").
        pool = (
            f"{engine['actors']} actor{'s' * (engine['actors'] > 1)}"
            if "actors" in engine
            else (f"{engine['workers']} scoring at once")
        )
        baseline = f"plain PyTorch loop: {plain['rows_per_second']:,.0f} rows/s"
        name = f"{result['model']} ({result['rows']:,} rows)"
        rows.append(
            {
                "figure": f"{name}: `batch_inference` engine end to end ({engine['runtime']}, {pool})",
                "skytrain": f"{engine['rows_per_second']:,.0f} rows/s",
                "baseline": baseline,
                "ratio": f"{engine['ratio']:.2f}×",
                "target": "≥ 0.8×",
                "met": _verdict(engine["ratio"] >= 0.8),
            }
        )
        if steady := steady_pace(engine):
            rows.append(
                _row(
                    f"{name}: the engine after its {engine['startup_seconds']:.1f} s start-up",
                    f"{engine['steady_rows_per_second']:,.0f} rows/s",
                    baseline=baseline,
                    ratio=f"{steady:.2f}×",
                )
            )
        if script := result.get("plain_script"):  # since 2026-12-05
            rows.append(
                _row(
                    f"{name}: the engine against a plain script doing its job (read, loop, write)",
                    f"{engine['rows_per_second']:,.0f} rows/s",
                    baseline=f"plain script: {script['rows_per_second']:,.0f} rows/s",
                    ratio=f"{engine['script_ratio']:.2f}×",
                )
            )
        if floor := result.get("ray_data_floor"):  # since 2026-12-06
            rows.append(
                _row(
                    f"{name}: Ray Data's floor, an execution doing nothing (the most any engine on it can reach)",
                    f"{min(floor['seconds']) * 1000:.0f} ms a run",
                    baseline=baseline,
                    ratio=f"≤ {floor['ceiling']:.2f}×",
                )
            )
        rows.append(
            _row(
                f"{name}: ONNX export on onnxruntime, in process",
                f"{onnx['rows_per_second']:,.0f} rows/s",
                baseline=baseline,
                ratio=f"{onnx['ratio']:.2f}×",
            )
        )
    return rows


def serving(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        mlflow_server = next(s for s in result["servers"] if s["server"].startswith("mlflow"))
        for server in result["servers"]:
            if server is mlflow_server:
                continue
            for concurrency, measured in server["by_concurrency"].items():
                theirs = mlflow_server["by_concurrency"][concurrency]
                figure = f"{result['model']} v{result['model_version']}, {server['server']}, concurrency {concurrency}"
                rows.append(
                    {
                        "figure": f"{figure}: p50 / p99",
                        "skytrain": f"{measured['p50_ms']:.1f} / {measured['p99_ms']:.1f} ms",
                        "baseline": f"`mlflow models serve`: {theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f} ms",
                        "ratio": f"{measured['p50_ratio_to_mlflow']:.2f}× (p50)",
                        "target": "p50 ≤ 5 ms" if concurrency == "1" else "",
                        "met": _verdict(measured["p50_ms"] <= 5.0) if concurrency == "1" else "n/a",
                    }
                )
                rows.append(
                    {
                        "figure": f"{figure}: requests/s",
                        "skytrain": f"{measured['requests_per_second']:.0f}",
                        "baseline": f"`mlflow models serve`: {theirs['requests_per_second']:.0f}",
                        "ratio": f"{measured['rps_ratio_to_mlflow']:.2f}×",
                        "target": "> 1×",
                        "met": _verdict(measured["rps_ratio_to_mlflow"] > 1),
                    }
                )
    return rows


def gpu_mnist(report: dict) -> list[Row]:
    rows = []
    for result in report["results"]:
        if result.get("skipped"):
            rows.append(_row("MNIST to ≥ 99.0 % test accuracy on a GPU", "not measured", baseline=result["skipped"]))
            continue
        rows.append(
            _row(
                f"MNIST to {result['test_accuracy']:.2%} test accuracy on {result['device']}: training time",
                f"{result['training_s']:.2f} s ({result['epochs']} epochs)",
                baseline="tuomaso/train_mnist_fast: 99.04 % in 0.762 s (GTX 1660 Ti)",
                target="< 1 s, ≥ 99.0 %",
                met=_verdict(result["training_s"] < 1 and result["test_accuracy"] >= 0.99),
            )
        )
        rows.append(_row("  whole Ray Train job (start-up, data, training, evaluation)", f"{result['job_s']:.1f} s"))
        rows.append(_row("  peak GPU memory", f"{result['gpu_memory_gib']:.2f} GiB"))
        rows.append(_row("  samples/s", f"{result['samples_per_second']:,.0f}"))
    return rows


def _row(figure: str, skytrain: str, *, baseline: str = "", ratio: str = "", target: str = "", met: str = "n/a") -> Row:
    return {"figure": figure, "skytrain": skytrain, "baseline": baseline, "ratio": ratio, "target": target, "met": met}


TABLES: dict[str, Callable[[dict], list[Row]]] = {
    "train_epoch": train_epoch,
    "scaling": scaling,
    "pipeline": pipeline,
    "data_prep": data_prep,
    "batch_inference": batch_inference,
    "serving": serving,
    "gpu_mnist": gpu_mnist,
}


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c].replace("|", "\\|") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
