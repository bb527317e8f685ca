"""Distributed training with Ray Train: the worker loop, and the driver that runs it.

The driver opens one MLflow run, starts a ``TorchTrainer`` (N workers, CPU or GPU), and lets
rank 0 log per-epoch metrics into that run, so every metric is logged once. Each epoch reports
a checkpoint; after ``fit()`` the driver takes the best one by validation metric, scores it on
the test split, logs the model with its signature and registers it.

Runs on a bare Ray cluster too (no Prefect): ``python -m ray_jobs.train --model mnist-cnn
--dataset-dir <version dir>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import ray
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution import context as ray_train_context
from torch import nn

from ray_jobs import gloo_io, storage, tracking
from ray_jobs.cluster import ray_session, started_local_ray
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.early_stopping import EarlyStopping
from ray_jobs.evaluate import EVAL_BATCH_ROWS, predict_in_batches, score
from ray_jobs.feed import ShardFeed, fits_on_device
from ray_jobs.models import SPECS, ModelSpec, build_model, memory_format, spec_for
from ray_jobs.settings import Settings

CHECKPOINT_FILE = "checkpoint.pt"
DATA_TASK_CPUS = 0.25  # per Ray Data read task: small, so reads fit beside the training workers
RESULT_MARKER = "SKYTRAIN_RESULT "  # the CLI's last line: how a Ray job hands its result back
ONNX_CHECK_ROWS = 512  # test rows on which a version's ONNX export must agree with PyTorch


def _evaluate(model: nn.Module, feed: ShardFeed, spec: ModelSpec, device, batch_size: int) -> dict:
    """Loss and metric sums over this worker's rows, all-reduced to the global values."""
    model.eval()
    loss_fn = _loss(spec, reduction="sum")
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct / squared error, rows
    with torch.no_grad(), _autocast(device):
        for x, y in feed.batches(batch_size):
            out = model(x).float()
            sums[0] += loss_fn(out, y).item()
            if spec.task == "classification":
                sums[1] += (out.argmax(1) == y).sum()
            else:
                sums[1] += ((out - y) ** 2).sum()
            sums[2] += len(x)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss, stat, rows = sums.tolist()
    metric = {"accuracy": stat / rows} if spec.task == "classification" else {"rmse": (stat / rows) ** 0.5}
    return {"loss": loss / rows, **metric}


# DDP without its per-step buffer sync: by default it sends rank 0's buffers (BatchNorm's running
# statistics) to every worker before each training forward, a second collective per step that makes
# every step wait for the slowest worker twice. Rank 0's buffers, the ones checkpointed, come from its
# own batches either way; the other workers get them once at the start (DDP's init sync, kept) and
# once an epoch before validation (``share_buffers``). 2 CNN workers on 2 cores: an epoch 8.13 ->
# 7.45 s (benchmarks/train_epoch.py, back to back). ``forward_sync_buffers``, not the
# ``broadcast_buffers`` torch 2.13 deprecates (a FutureWarning in every worker).
DDP_OPTIONS = {"forward_sync_buffers": False}


def share_buffers(net: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) to every worker: each validates the model
    rank 0 checkpoints."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def _loss(spec: ModelSpec, reduction: str = "mean") -> nn.Module:
    return (
        nn.CrossEntropyLoss(reduction=reduction) if spec.task == "classification" else nn.MSELoss(reduction=reduction)
    )


def _minor_page_faults() -> int:
    """This worker process's minor page faults so far: a step that keeps faulting is writing to
    freshly mapped memory, which costs ~2 ms/MiB on the VMs this was measured on (``worker_env``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    spec = spec_for(config["model"])
    hp = config["hparams"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    # Ray 2.60 logs each report at INFO on a logger named by a file path, which RunConfig's
    # logging_config does not reach: hold it to the configured level too.
    logging.getLogger(ray_train_context.__file__).setLevel(config["log_level"])
    if device.type == "cpu":
        torch.set_num_threads(config["threads_per_worker"])
    torch.manual_seed(config["seed"])

    manifest = config["manifest"]
    layout = memory_format(manifest)
    feeds = {}
    for split in ("train", "val"):
        rows = manifest["splits"][split]["rows"] // world  # Ray Train splits each dataset equally
        resident = {"always": True, "never": False}.get(config["resident_data"]) or (
            config["resident_data"] == "auto" and fits_on_device(rows, manifest, device)
        )
        feeds[split] = ShardFeed(
            ray.train.get_dataset_shard(split),
            manifest,
            spec.task,
            device,
            resident=resident,
            memory_format=layout,
        )

    net = build_model(spec, manifest, hp).to(memory_format=layout)
    model = ray.train.torch.prepare_model(net, parallel_strategy_kwargs=DDP_OPTIONS)  # DDP; ``net`` keeps the weights
    idled = 0
    if device.type == "cpu" and config["gloo_io_idle"]:
        idled = gloo_io.idle_gloo_io_threads()  # gloo's polling I/O thread no longer delays the loop's wake-ups
    if config["compile"]:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    # Whole batches only, so every worker takes the same number of steps (DDP's collectives).
    steps_per_epoch = max(1, (manifest["splits"]["train"]["rows"] // world) // hp["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=hp["lr"], total_steps=hp["epochs"] * steps_per_epoch
    )
    loss_fn = _loss(spec)

    stopper = EarlyStopping(hp["patience"], spec.higher_is_better)
    start_epoch = 0
    if checkpoint := ray.train.get_checkpoint():  # a restarted worker group, or a resumed run
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stopping"])
        start_epoch = state["epoch"]

    tracker = tracking.RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    if tracker and start_epoch:
        tracker.log_epoch({"resumed_from_epoch": start_epoch}, step=start_epoch)
    for epoch in range(start_epoch, hp["epochs"]):
        started, faults_before = time.perf_counter(), _minor_page_faults()
        model.train()
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        steps = 0
        for x, y in feeds["train"].batches(hp["batch_size"], seed=config["seed"] + epoch, drop_last=True):
            if steps == steps_per_epoch:  # the schedule's length; a shard is never longer, but be safe
                continue
            steps += 1
            if tracker and epoch == 0 and steps == 1:  # Ray Train's fixed cost, alone (a fresh run)
                tracker.log_epoch({"startup_seconds": time.time() - config["fit_started_at"]}, step=epoch + 1)
            with _autocast(device):
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach()
        faults_per_step = (_minor_page_faults() - faults_before) / max(steps, 1)
        train_loss = total_loss / max(steps, 1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(train_loss)
            train_loss /= world
        share_buffers(net)
        val = _evaluate(model, feeds["val"], spec, device, batch_size=EVAL_BATCH_ROWS)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss.item(),
            **{f"val_{k}": v for k, v in val.items()},
            "epoch_seconds": (seconds := time.perf_counter() - started),
            "samples_per_second": steps * hp["batch_size"] * world / seconds,
            "lr": schedule.get_last_lr()[0],
            "page_faults_per_step": faults_per_step,
        }
        if device.type == "cuda":  # the peak of this worker's GPU memory so far
            metrics["gpu_memory_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        stop = stopper.update(val[spec.metric])
        if rank == 0:
            tracker.log_epoch(metrics, step=epoch + 1)
            if epoch == start_epoch:
                tracker.log_epoch(
                    {"data_resident": float(feeds["train"].is_resident), "gloo_io_threads_idle": float(idled)},
                    step=epoch + 1,
                )
            summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train_", "val_")))
            # To the real stdout: Ray Train's print patch would also copy it into the logger (twice).
            line = f"{spec.key} epoch {epoch + 1}/{hp['epochs']} ({metrics['epoch_seconds']:.1f}s): {summary}"
            print(line, file=sys.__stdout__, flush=True)
            with tempfile.TemporaryDirectory() as directory:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "epoch": epoch + 1,
                        "early_stopping": stopper.state_dict(),
                    },
                    Path(directory) / CHECKPOINT_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics, checkpoint=None)
        if stop:
            if tracker:
                tracker.log_epoch({"early_stopped_at_epoch": epoch + 1}, step=epoch + 1)
            break


def on_cluster(settings: Settings) -> bool:
    """Connected to a Ray cluster (whose autoscaler may add nodes), not a local fixed-size Ray: an
    address is configured (``SKYTRAIN_RAY_ADDRESS``; ``RAY_ADDRESS``, as in a Ray job), or this
    process connected by address (a flow's ``ray_address`` parameter) rather than starting its own."""
    if settings.ray_address or os.environ.get("RAY_ADDRESS"):
        return True
    return ray.is_initialized() and not started_local_ray()


def cpus_per_worker(num_workers: int, use_gpu: bool, settings: Settings) -> float:
    """CPUs each worker requests.

    On a fixed-size (local) Ray, workers holding every CPU would leave Ray Data's read tasks none
    and training would hang waiting for its input: keep ``settings.data_cpus`` free, and fail fast
    when the cluster can never fit the workers. A cluster's autoscaler adds nodes instead (a Ray
    job sees ``RAY_ADDRESS``), and there each worker asks for a whole CPU.
    """
    if on_cluster(settings):
        return 1.0
    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0), available.get("GPU", 0)
    if use_gpu and gpus < num_workers:
        raise ValueError(f"num_workers={num_workers} needs {num_workers} GPU but the Ray cluster has {gpus:g}")
    if num_workers > cpus or cpus <= settings.data_cpus:
        raise ValueError(
            f"num_workers={num_workers} needs about a CPU each and the Ray cluster has {cpus:g} "
            f"(keeping {settings.data_cpus:g} for data loading): lower num_workers or use a bigger cluster"
        )
    return min(1.0, (cpus - settings.data_cpus) / num_workers)


def worker_resources(num_workers: int, use_gpu: bool | None, settings: Settings) -> tuple[bool, float]:
    """Whether the workers train on GPUs (``None``: when the connected Ray has one for each) and the
    CPUs each asks for; ``ValueError`` when the Ray can never fit them. Callers check this before
    any work, so that a run refused for its size has written nothing."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= num_workers
    return use_gpu, cpus_per_worker(num_workers, use_gpu, settings)


def threads_per_worker(spec: ModelSpec, worker_cpus: float, cores: float | None = None) -> int:
    """PyTorch threads for each CPU worker: ``cores`` (default: the CPUs it asked for), at least one.

    A local training passes its share of the machine's cores (cores / workers): its workers asked
    for fewer CPUs than that only to leave room for Ray Data's reads in the first epoch, and from
    then on they train on resident data with the machine to themselves. Measured on 2 cores (CNN,
    full MNIST): one worker ran an epoch in 36.4 s on 1 thread, where a 2-thread plain loop takes
    25.7 s. A model whose operations are too small to split (``spec.parallel_ops``) runs one thread.
    """
    return max(1, int(worker_cpus if cores is None else cores)) if spec.parallel_ops else 1


def worker_env(threads_per_worker: int) -> dict[str, str]:
    """Environment of the training worker processes: settings the C runtime reads once, at start.

    - ``OMP_NUM_THREADS``: OpenMP reads its thread count when torch loads, before the loop's
      ``set_num_threads``; Ray sets it from the CPUs a worker asked for. Raising it later makes each
      parallel region several times slower (measured here), so the workers start with the right value.
    - ``MALLOC_*``: Ray Train runs the training loop in a thread of the worker, and glibc gives
      such a thread its own malloc arena, made of 64 MiB heaps that it unmaps as soon as one is
      wholly free and maps again on the next step. Every step's activations then land on fresh
      pages, which cost ~2 ms/MiB on the 2-core VMs this was measured on: ~40,000 page faults a
      second in a 1-worker CNN run, whose epoch took 1.3-1.45x a plain loop's. One arena (the
      main one) with fixed thresholds keeps the freed pages for the next step instead: blocks up
      to 32 MiB (a CNN batch's activations) come from the heap, and the heap's free top is kept
      up to 1 GiB. The same run then faults ~0 times a step once warm (``page_faults_per_step``).
    """
    return {
        "OMP_NUM_THREADS": str(threads_per_worker),
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
        "MALLOC_TRIM_THRESHOLD_": str(2**30),
    }


def _datasets(dataset_dir: str, log_level: str) -> dict[str, ray.data.Dataset]:
    """The training and validation splits as Ray Data datasets (local or S3), sharded per worker."""
    context = ray.data.DataContext.get_current()  # travels with the datasets to Ray Data's actors
    if logging.getLevelName(log_level) > logging.INFO:
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    datasets = {}
    for split in ("train", "val"):
        filesystem, path = storage.resolve(storage.join(dataset_dir, f"{split}.parquet"))
        with storage.parquet_read():
            datasets[split] = ray.data.read_parquet(path, filesystem=filesystem, num_cpus=DATA_TASK_CPUS)
    return datasets


def make_trainer(
    spec: ModelSpec,
    manifest: dict[str, Any],
    dataset_dir: str,
    hp: dict[str, Any],
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    threads_per_worker: int,
    seed: int,
    run_id: str,
    run_name: str,
    compile_model: bool,
    settings: Settings,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The ``TorchTrainer`` of one training: its rank 0 logs into the MLflow run ``run_id``.

    Checkpoints land in ``<ray_storage_path>/<run_name>`` (the best two by validation metric are
    kept); a failed worker group is restarted from the latest one, twice at most.
    """
    storage_path, storage_filesystem = storage.ray_storage(settings.ray_storage_path)  # abfss://: a filesystem
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": spec.key,
            "hparams": hp,
            "seed": seed,
            "manifest": manifest,
            "resident_data": settings.resident_data,
            "gloo_io_idle": settings.gloo_io_idle,
            "compile": compile_model,
            "threads_per_worker": threads_per_worker,
            "tracking_uri": settings.mlflow_tracking_uri,
            "run_id": run_id,
            "log_level": settings.ray_log_level,
            "fit_started_at": time.time(),  # wall clock: compared across processes
        },
        datasets=_datasets(dataset_dir, settings.ray_log_level),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=f"val_{spec.metric}",
                checkpoint_score_order="max" if spec.higher_is_better else "min",
            ),
            failure_config=FailureConfig(max_failures=2),
            logging_config=ray.LoggingConfig(log_level=settings.ray_log_level),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": worker_env(threads_per_worker)},
        ),
    )


def open_version(spec: ModelSpec, location: str | Path) -> tuple[str, dict[str, Any]]:
    """A dataset version's normalized location and manifest, refused if it is not the model's dataset."""
    location = storage.normalize(location)
    manifest = read_manifest(location)
    if manifest["dataset"] != spec.dataset:
        raise ValueError(f"model '{spec.key}' trains on '{spec.dataset}', not on '{manifest['dataset']}' ({location})")
    return location, manifest


def resolve_hparams(spec: ModelSpec, overrides: dict[str, Any] | None, epochs: int | None = None) -> dict[str, Any]:
    """The model's defaults with the overrides applied; unknown names and bad values are refused."""
    overrides = {**(overrides or {}), **({"epochs": epochs} if epochs is not None else {})}
    unknown = set(overrides) - set(spec.defaults)
    if unknown:
        known = sorted(spec.defaults)
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for '{spec.key}': known are {known}")
    hp = {**spec.defaults, **overrides}
    for name in ("epochs", "batch_size"):
        if not isinstance(hp[name], int) or hp[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {hp[name]!r}")
    if hp["patience"] is not None and (not isinstance(hp["patience"], int) or hp["patience"] < 1):
        raise ValueError(f"patience must be empty (no early stopping) or an integer >= 1, got {hp['patience']!r}")
    if not hp["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {hp['lr']!r}")
    return hp


def run_training(
    model: str,
    dataset_dir: str | Path,
    *,
    epochs: int | None = None,
    num_workers: int = 2,
    use_gpu: bool | None = None,
    seed: int = 42,
    run_name: str | None = None,
    hparams: dict[str, Any] | None = None,
    compile_model: bool | None = None,
    settings: Settings | None = None,
    register: bool = True,
) -> dict[str, Any]:
    """Train one model on one dataset version with Ray Train, log it and register it.

    ``register=False`` stops after ``fit()`` (no test scoring, plots, export or version; ``version``
    is None): for measurements of training alone, such as the benchmarks'.

    Needs a connected Ray (``ray.init``). Returns run id, registered version and metrics. Rerunning a
    crashed training with the same ``run_name`` resumes it (same MLflow run, latest checkpoint).
    """
    settings = settings or Settings()
    spec = spec_for(model)
    dataset_dir, manifest = open_version(spec, dataset_dir)
    hp = resolve_hparams(spec, hparams, epochs)
    build_model(spec, manifest, hp)  # a bad architecture value fails here, before anything is logged or started
    use_gpu, worker_cpus = worker_resources(num_workers, use_gpu, settings)
    # A local Ray is this machine: its cores are the workers' once the first epoch has read the data.
    local_cores = None if on_cluster(settings) else ray.cluster_resources().get("CPU", 1) / num_workers
    worker_threads = threads_per_worker(spec, worker_cpus, local_cores)

    run_name = run_name or f"{model}-{manifest['version']}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = tracking.ensure_experiment(settings)
    # Same run name as an unfinished run: continue its MLflow run, as Ray Train continues from the
    # checkpoints it left under <storage_path>/<run_name>.
    unfinished = tracking.unfinished_run_id(experiment_id, run_name)
    compile_model = settings.torch_compile if compile_model is None else compile_model
    runtime = {
        "cpus_per_worker": worker_cpus,
        "threads_per_worker": worker_threads,
        "resident_data": settings.resident_data,
        "gloo_io_idle": settings.gloo_io_idle,
        "torch_compile": compile_model,
    }
    with mlflow.start_run(run_id=unfinished, experiment_id=experiment_id, run_name=run_name) as run:
        if unfinished is None:
            tracking.log_training_inputs(spec, manifest, dataset_dir, hp, num_workers, use_gpu, seed, runtime)
        started = time.perf_counter()  # the "fit" phase: building the trainer (its datasets), then fit()
        trainer = make_trainer(
            spec,
            manifest,
            dataset_dir,
            hp,
            num_workers=num_workers,
            use_gpu=use_gpu,
            cpus_per_worker=worker_cpus,
            threads_per_worker=worker_threads,
            seed=seed,
            run_id=run.info.run_id,
            run_name=run_name,
            compile_model=compile_model,
            settings=settings,
        )
        result = trainer.fit()
        phases = {"fit": time.perf_counter() - started}
        best = result.get_best_checkpoint(metric=f"val_{spec.metric}", mode="max" if spec.higher_is_better else "min")
        with best.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        net = build_model(spec, manifest, hp)
        net.load_state_dict(state["model"])
        net.eval()

        version, test_metrics = None, {}
        if register:
            started = time.perf_counter()
            test_x, test_y = load_split(dataset_dir, "test", manifest)
            with torch.no_grad():
                output = predict_in_batches(lambda x: net(torch.from_numpy(x)).numpy(), test_x)
            test_metrics = {f"test_{k}": v for k, v in score(spec.task, test_y, output).items()}
            tracking.log_results(spec, test_metrics, test_x, test_y, output, best_epoch=state["epoch"])
            phases["evaluate"] = time.perf_counter() - started
            started = time.perf_counter()
            version = tracking.log_and_register(
                net, spec, test_x[:5], manifest, hp, run.info.run_id, check_rows=test_x[:ONNX_CHECK_ROWS]
            )
            phases["register"] = time.perf_counter() - started
        mlflow.log_metrics({f"phase_{name}_seconds": seconds for name, seconds in phases.items()})

    return {
        "model": model,
        "registered_model": spec.registered_name,
        "version": version,
        "run_id": run.info.run_id,
        "run_name": run_name,
        "dataset": manifest["dataset"],
        "dataset_version": manifest["version"],
        "best_epoch": state["epoch"],
        "metrics": test_metrics,
        "checkpoint": best.path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(SPECS))
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--run-name")
    parser.add_argument("--hparams", type=json.loads, default={}, help="JSON object of hyperparameter overrides")
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    args = parser.parse_args()
    settings = Settings()
    with ray_session(settings.ray_address):
        result = run_training(
            args.model,
            args.dataset_dir,
            epochs=args.epochs,
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            seed=args.seed,
            run_name=args.run_name,
            hparams=args.hparams,
            compile_model=args.compile,
            settings=settings,
        )
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
