"""Per-epoch training time: Ray Train (1 and 2 workers) against a plain single-process PyTorch loop.

Same model, hyperparameters, data and per-step batch; both hold the data in memory after the
first pass (Ray Train's workers through ``ray_jobs/feed.py``). An epoch is one pass over the
training rows plus the validation pass, as in ``ray_jobs/train.py``. Reported per model: the
median epoch time (first epoch excluded: it includes Ray Data's read) with min–max, its ratio to
the fastest plain loop measured in the same run (and to the 1-thread one; the fastest thread count
runs first and again last, and the faster of its two runs is the baseline), and Ray Train's fixed
start-up cost (``fit()`` to the first step) on its own. For N > 1 workers it also measures the
floor no data-parallel framework can beat on this machine: N plain loops running at once on 1/N
of the rows each, without any communication; and the same data-parallel job without Ray (plain
DDP on a gloo group, set up as skytrain's workers are), which splits the gap between the floor and
Ray Train into what DDP's synchronization costs and what Ray Train adds. The floor's and plain
DDP's processes, and one more run of the plain loop, start with the environment skytrain gives its
training workers (``worker_env``: malloc settings), so the table shows what those settings alone
are worth to a plain loop.

    python -m benchmarks.train_epoch            # full MNIST and diamonds, 4 epochs each
    python -m benchmarks.train_epoch --quick    # small slices, 2 epochs: keeps the code working
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import private_state  # first: it sets the environment skytrain and Ray read

private_state.use()

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import report  # noqa: E402
from flows.datasets import diamonds, mnist  # noqa: E402
from flows.datasets.store import write_version  # noqa: E402
from ray_jobs import gloo_io  # noqa: E402
from ray_jobs.cluster import ray_session  # noqa: E402
from ray_jobs.dataset import load_split, read_manifest  # noqa: E402
from ray_jobs.evaluate import EVAL_BATCH_ROWS  # noqa: E402
from ray_jobs.models import build_model, memory_format, spec_for  # noqa: E402
from ray_jobs.ports import free_ports  # noqa: E402
from ray_jobs.settings import Settings  # noqa: E402
from ray_jobs.train import DDP_OPTIONS, resolve_hparams, run_training, share_buffers, worker_env  # noqa: E402

# How long the floor's loops wait for each other to be ready: a fresh process imports PyTorch first.
SHARD_START_TIMEOUT_S = 300


def prepare(model: str, limit_rows: int | None, settings: Settings, val_size: int | None = None) -> Path:
    """A dataset version of ``model``'s dataset, cut to ``limit_rows`` rows per split (MNIST's
    validation split: ``val_size`` rows, default 5,000 or a tenth of ``limit_rows``)."""
    if model == "mnist-cnn":
        raw, _ = mnist.read_verified(settings.mnist_location(), settings.mnist_sha256)
        val_size = val_size or (5000 if limit_rows is None else max(100, limit_rows // 10))
        splits = mnist.parse(raw, settings.mnist_location())
        tables, manifest = mnist.transform(splits, seed=0, val_size=val_size, limit_rows=limit_rows)
    else:
        frame = diamonds.read_csv(settings.diamonds_location())
        frame = frame if limit_rows is None else frame.head(limit_rows)
        tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)
    name = f"bench-{limit_rows}-{val_size}"
    return Path(write_version(settings.data_store, spec_for(model).dataset, name, tables, manifest))


class ShardRun(NamedTuple):
    """One of ``shard_loops``' loops: its process, when its first epoch started (``time.time()``),
    its epoch times, and the sum of its trained weights (equal on every rank of a DDP job)."""

    pid: int
    started: float
    times: list[float]
    weights_sum: float


def plain_epochs(*args, **kwargs) -> list[float]:
    """``plain_training``'s epoch times."""
    return plain_training(*args, **kwargs)[0]


def plain_training(
    model: str,
    dataset_dir: Path,
    hp: dict,
    threads: int,
    shard: tuple[int, int] = (0, 1),
    start: Any = None,
    ddp_port: int | None = None,
) -> tuple[list[float], nn.Module]:
    """The reference: one process, tensors in memory, the same layout, optimizer, schedule and
    evaluation. ``shard=(rank, world)`` trains on every world-th row only, as a Ray Train worker does;
    ``start``, a barrier shared with the other shards' loops, holds the first epoch until all are ready.
    With ``ddp_port`` the shards' loops are one data-parallel job without Ray: a gloo group on
    127.0.0.1, DDP as skytrain's workers set it (``DDP_OPTIONS``, gloo's I/O thread idled, BatchNorm
    statistics and the loss shared once an epoch)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec, manifest = spec_for(model), read_manifest(dataset_dir)
    layout = memory_format(manifest)
    target_dtype = torch.long if spec.task == "classification" else torch.float32
    rank, world = shard
    data = {}
    for split in ("train", "val"):
        x, y = load_split(dataset_dir, split, manifest)
        x, y = np.ascontiguousarray(x[rank::world]), np.ascontiguousarray(y[rank::world])
        x = torch.from_numpy(x)
        data[split] = x.contiguous(memory_format=layout) if x.dim() == 4 else x, torch.as_tensor(y, dtype=target_dtype)
    net = build_model(spec, manifest, hp).to(memory_format=layout)
    model = net
    if ddp_port is not None:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ddp_port}", rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(net, **DDP_OPTIONS)
        gloo_io.idle_gloo_io_threads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    train_x, train_y = data["train"]
    steps = len(train_x) // hp["batch_size"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp["lr"], total_steps=hp["epochs"] * steps)
    loss_fn = nn.CrossEntropyLoss() if spec.task == "classification" else nn.MSELoss()
    if start is not None:
        start.wait()
    times = []
    for epoch in range(hp["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch))
        total_loss = torch.zeros((), dtype=torch.float64)
        for step in range(steps):
            rows = order[step * hp["batch_size"] : (step + 1) * hp["batch_size"]]
            loss = loss_fn(model(train_x[rows]), train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach()
        if ddp_port is not None:
            dist.all_reduce(total_loss)
            share_buffers(net)
        model.eval()
        val_x, val_y = data["val"]
        with torch.no_grad():
            for i in range(0, len(val_x), EVAL_BATCH_ROWS):
                loss_fn(model(val_x[i : i + EVAL_BATCH_ROWS]), val_y[i : i + EVAL_BATCH_ROWS]).item()
        times.append(time.perf_counter() - started)
    if ddp_port is not None:
        dist.destroy_process_group()
    return times, net


@contextmanager
def spawned(processes: int, env: dict[str, str]) -> Iterator[ProcessPoolExecutor]:
    """A pool of up to ``processes`` fresh Python processes started with ``env`` added to this one's
    environment (glibc's malloc and OpenMP read theirs when a process starts). The pool starts a
    process when a task finds none idle: tasks meant to run at once must wait for each other
    (``shard_loops``), or one process may run them one after the other."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(int).result()  # the first process starts now, with ``env``
            yield pool
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def plain_with_worker_env(model: str, dataset_dir: Path, hp: dict, threads: int) -> list[float]:
    """The plain loop in a process started with the environment skytrain gives its training workers
    (``ray_jobs.train.worker_env``): how much of a comparison with the default-environment baseline
    is the malloc settings rather than Ray Train."""
    with spawned(1, worker_env(threads)) as pool:
        return pool.submit(plain_epochs, model, dataset_dir, hp, threads).result()


def shard_loops(
    model: str, dataset_dir: Path, hp: dict, processes: int, cpus: int, ddp: bool = False
) -> list[ShardRun]:
    """``processes`` plain loops at once, each in its own process on its share of the rows and of
    the cores, started with the environment skytrain gives its training workers. With ``ddp`` they
    are one DDP job on a gloo group (``plain_training``), otherwise independent."""
    threads = max(1, cpus // processes)
    ddp_port = free_ports()[0] if ddp else None
    # The barrier's manager is a spawned process too: a fork would share this process's gRPC state
    # with Ray's client, which gRPC does not support (suspected in a CI run whose Ray shutdown then
    # hung in a call to the GCS).
    manager_context = multiprocessing.get_context("spawn")
    with spawned(processes, worker_env(threads)) as pool, manager_context.Manager() as manager:
        # Each loop waits for the others before its first epoch: that also makes the pool start a
        # process per loop (one process could not wait twice), where it had given both loops to one
        # process one after the other, or started the second one seconds late.
        start = manager.Barrier(processes, timeout=SHARD_START_TIMEOUT_S)
        futures = [
            pool.submit(_timed_shard, model, dataset_dir, hp, threads, (rank, processes), start, ddp_port)
            for rank in range(processes)
        ]
        return [future.result() for future in futures]


def _timed_shard(*args) -> ShardRun:
    """``plain_training(*args)`` with this process's id and when its first epoch started (now, less
    the epochs' time)."""
    times, net = plain_training(*args)
    weights_sum = float(sum(parameter.double().sum() for parameter in net.parameters()))
    return ShardRun(os.getpid(), time.time() - sum(times), times, weights_sum)


def independent_shards(model: str, dataset_dir: Path, hp: dict, processes: int, cpus: int) -> list[float]:
    """What ``processes`` data-parallel workers could do at best on this machine: as many plain loops
    at once, each on its share of the rows with its share of the cores, and no communication at all
    (``shard_loops``). An epoch lasts as long as the slowest of them."""
    per_process = [run.times for run in shard_loops(model, dataset_dir, hp, processes, cpus)]
    return [max(epoch) for epoch in zip(*per_process)]


def plain_ddp(model: str, dataset_dir: Path, hp: dict, processes: int, cpus: int) -> list[float]:
    """The same data-parallel job without Ray: ``processes`` plain loops as one DDP job on a gloo
    group, each on its share of the rows and cores, set up as skytrain's workers are
    (``shard_loops(ddp=True)``). Between it and the floor is what DDP's synchronization costs here;
    between Ray Train and it, what Ray Train adds. An epoch lasts as long as the slowest loop's."""
    per_process = [run.times for run in shard_loops(model, dataset_dir, hp, processes, cpus, ddp=True)]
    return [max(epoch) for epoch in zip(*per_process)]


def ray_epochs(model: str, dataset_dir: Path, hp: dict, workers: int) -> tuple[list[float], float]:
    """Epoch times and fit()-to-first-step seconds of a real ``run_training`` (logged to MLflow)."""
    overrides = {k: v for k, v in hp.items() if k != "epochs"}
    # Training alone: no test scoring, export or registration after fit() (nothing here reads them).
    result = run_training(
        model, dataset_dir, epochs=hp["epochs"], num_workers=workers, hparams=overrides, register=False
    )
    client = mlflow.MlflowClient(Settings().mlflow_tracking_uri)
    history = sorted(client.get_metric_history(result["run_id"], "epoch_seconds"), key=lambda m: m.step)
    startup = client.get_run(result["run_id"]).data.metrics["startup_seconds"]
    return [m.value for m in history], startup


def summary(times: list[float]) -> dict:
    steady = times[1:] or times  # the first epoch carries the first read of the data
    return {
        "median_s": statistics.median(steady),
        "min_s": min(steady),
        "max_s": max(steady),
        "first_epoch_s": times[0],
        "epochs": len(times),
    }


def add_ratios(row: dict, baseline_s: float, one_thread_s: float) -> None:
    """Every measurement's ratio to the baseline's median; Ray Train's also to the 1-thread plain
    loop and to plain DDP with as many workers."""
    for key, measured in row.items():
        if key.startswith(("plain_torch_worker_env", "floor_", "plain_ddp_", "ray_")):
            measured["ratio"] = measured["median_s"] / baseline_s
        if key.startswith("ray_"):
            measured["ratio_to_1_thread"] = measured["median_s"] / one_thread_s
            if (ddp := row.get(f"plain_ddp_{key.removeprefix('ray_')}")) is not None:
                measured["ratio_to_plain_ddp"] = measured["median_s"] / ddp["median_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small slices and 2 epochs (CI)")
    parser.add_argument("--models", nargs="+", default=["mnist-cnn", "diamonds-regressor"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<date>-train-epoch.json)")
    args = parser.parse_args(argv)
    limit_rows, epochs = (3000, 2) if args.quick else (None, args.epochs or 4)
    settings = Settings()
    rows = []
    with ray_session():
        cpus = int(ray.cluster_resources().get("CPU", 1))
        for model in args.models:
            spec = spec_for(model)
            hp = resolve_hparams(spec, None, epochs)
            dataset_dir = prepare(model, limit_rows, settings)
            baselines = {t: summary(plain_epochs(model, dataset_dir, hp, t)) for t in sorted({1, cpus})}
            threads, first = min(baselines.items(), key=lambda item: item[1]["median_s"])
            row = {"model": model, "rows": read_manifest(dataset_dir)["splits"]["train"]["rows"]}
            row["plain_torch_by_threads"] = {str(t): b for t, b in baselines.items()}
            row["plain_torch_worker_env"] = summary(plain_with_worker_env(model, dataset_dir, hp, threads))
            for workers in args.workers:
                if workers > cpus:
                    print(f"skipping {workers} workers: the local Ray has {cpus} CPUs")
                    continue
                if workers > 1:
                    row[f"floor_{workers}w"] = summary(independent_shards(model, dataset_dir, hp, workers, cpus))
                    row[f"plain_ddp_{workers}w"] = summary(plain_ddp(model, dataset_dir, hp, workers, cpus))
                times, startup = ray_epochs(model, dataset_dir, hp, workers)
                row[f"ray_{workers}w"] = {**summary(times), "startup_s": startup}
            # The baseline once more, after everything else: on these VMs the same loop's pace drifts
            # by 10-25 % over minutes, and the faster of its two runs is the one the others are held to.
            again = summary(plain_epochs(model, dataset_dir, hp, threads))
            baseline = min(first, again, key=lambda b: b["median_s"])
            row["plain_torch"] = {
                **baseline,
                "threads": threads,
                "runs_medians_s": [first["median_s"], again["median_s"]],
            }
            add_ratios(row, baseline["median_s"], baselines[1]["median_s"])
            rows.append(row)
            print(format_row(row), flush=True)
    targets = {"ray_1w": "<= 1.05x plain", "ray_2w": "<= 0.85x plain"}
    report.write("train-epoch", args.quick, cpus, targets, rows, args.output)


def format_row(row: dict) -> str:
    base = row["plain_torch"]
    parts = [f"{row['model']} ({row['rows']} train rows): plain torch {base['median_s']:.2f}s/epoch"]
    parts[0] += f" ({base['threads']} thread{'s' if base['threads'] > 1 else ''})"
    if (tuned := row.get("plain_torch_worker_env")) is not None:
        parts.append(f"plain torch in the workers' environment: {tuned['median_s']:.2f}s/epoch = {tuned['ratio']:.2f}x")
    targets = {1: 1.05, 2: 0.85}
    for workers, target in targets.items():
        if (r := row.get(f"ray_{workers}w")) is None:
            continue
        verdict = "meets" if r["ratio"] <= target else "misses"
        parts.append(
            f"Ray Train {workers} worker{'s' if workers > 1 else ''}: {r['median_s']:.2f}s/epoch "
            f"[{r['min_s']:.2f}-{r['max_s']:.2f}] = {r['ratio']:.2f}x ({verdict} <= {target}x; "
            f"{r['ratio_to_1_thread']:.2f}x a 1-thread plain loop); "
            f"fit() to first step {r['startup_s']:.1f}s"
        )
        if (floor := row.get(f"floor_{workers}w")) is not None:
            parts.append(
                f"  floor: {workers} independent plain loops on 1/{workers} of the rows each, no communication: "
                f"{floor['median_s']:.2f}s/epoch = {floor['ratio']:.2f}x"
            )
        if (ddp := row.get(f"plain_ddp_{workers}w")) is not None:
            parts.append(
                f"  plain DDP: {workers} plain loops as one DDP job on gloo, no Ray: "
                f"{ddp['median_s']:.2f}s/epoch = {ddp['ratio']:.2f}x (Ray Train: {r['ratio_to_plain_ddp']:.2f}x of it)"
            )
    return "\n  ".join(parts)


if __name__ == "__main__":
    main()
