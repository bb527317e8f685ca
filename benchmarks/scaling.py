"""Scaling with the data: Ray Train's seconds per epoch on 25 %, 50 % and 100 % of MNIST.

A training that scales linearly takes ``f`` times the full epoch on a fraction ``f`` of the rows;
the figure per fraction is that ratio, ``(epoch on f) / (f × epoch on 100 %)``: 1.0 is linear, above
1 means a fixed cost per epoch (the validation pass, DDP's synchronization, Ray's reporting) that
small datasets pay relatively more. Each size is its own dataset version (training and validation
rows cut alike) and its own ``run_training`` on the same local Ray, 2 workers by default (quick: 1); medians
over epochs 2 and later (epoch 1 includes Ray Data's first read).

    python -m benchmarks.scaling            # 25/50/100 % of MNIST's 55,000 training rows, 3 epochs
    python -m benchmarks.scaling --quick    # 50/100 % of 2,000 rows, 2 epochs, 1 worker (CI)
"""

from __future__ import annotations

import argparse

from benchmarks import private_state  # first: it sets the environment skytrain and Ray read

private_state.use()

from pathlib import Path  # noqa: E402

import ray  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.train_epoch import prepare, ray_epochs, summary  # noqa: E402
from ray_jobs.cluster import ray_session  # noqa: E402
from ray_jobs.dataset import read_manifest  # noqa: E402
from ray_jobs.models import spec_for  # noqa: E402
from ray_jobs.settings import Settings  # noqa: E402
from ray_jobs.train import resolve_hparams  # noqa: E402

MODEL = "mnist-cnn"
FRACTIONS = (0.25, 0.5, 1.0)
QUICK_FRACTIONS = (0.5, 1.0)  # CI's: each size is one more Ray Train start-up (~30 s), the same code path
FULL_TRAIN_ROWS, FULL_VAL_ROWS = 55_000, 5_000  # the full MNIST version's training and validation splits
TOLERANCE = 0.15  # "linear": within 15 % of f × the full epoch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 %% and 100 %% of 2,000 rows, 2 epochs, 1 worker (CI)")
    parser.add_argument("--workers", type=int, help="Ray Train workers (default 2; quick 1)")
    parser.add_argument("--epochs", type=int, help="per size (default 3; quick 2)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<date>-scaling.json)")
    args = parser.parse_args(argv)
    workers = args.workers or (1 if args.quick else 2)
    full_rows = 2_000 if args.quick else FULL_TRAIN_ROWS
    full_val = full_rows // 10 if args.quick else FULL_VAL_ROWS
    hp = resolve_hparams(spec_for(MODEL), None, args.epochs or (2 if args.quick else 3))
    settings = Settings()
    by_fraction = {}
    with ray_session():
        cpus = int(ray.cluster_resources().get("CPU", 1))
        for fraction in QUICK_FRACTIONS if args.quick else FRACTIONS:
            limit = None if fraction == 1.0 and not args.quick else round(full_rows * fraction)
            dataset_dir = prepare(MODEL, limit, settings, val_size=round(full_val * fraction))
            times, startup = ray_epochs(MODEL, dataset_dir, hp, workers)
            by_fraction[str(fraction)] = {
                **summary(times),
                "rows": read_manifest(dataset_dir)["splits"]["train"]["rows"],
                "startup_s": startup,
            }
    full = by_fraction["1.0"]["median_s"]
    for fraction, measured in by_fraction.items():
        measured["linearity"] = measured["median_s"] / (float(fraction) * full)
    row = {"model": MODEL, "workers": workers, "tolerance": TOLERANCE, "by_fraction": by_fraction}
    print(format_row(row), flush=True)
    report.write("scaling", args.quick, cpus, {"linearity": f"within {TOLERANCE:.0%} of 1"}, [row], args.output)


def format_row(row: dict) -> str:
    lines = [f"{row['model']}, {row['workers']} Ray Train workers, seconds per epoch by share of the rows:"]
    for fraction, m in row["by_fraction"].items():
        verdict = "linear" if abs(m["linearity"] - 1) <= row["tolerance"] else "not linear"
        lines.append(
            f"{float(fraction):>4.0%} ({m['rows']:,} rows): {m['median_s']:.2f}s [{m['min_s']:.2f}-{m['max_s']:.2f}] "
            f"= {m['linearity']:.2f}x of linear ({verdict})"
        )
    return "\n  ".join(lines)


if __name__ == "__main__":
    main()
