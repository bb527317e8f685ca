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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution import context as ray_train_context
from torch import nn

from ray_jobs import tracking
from ray_jobs.cluster import ray_session
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.early_stopping import EarlyStopping
from ray_jobs.evaluate import predict_in_batches, score
from ray_jobs.models import SPECS, ModelSpec, build_model, spec_for
from ray_jobs.settings import Settings

CHECKPOINT_FILE = "checkpoint.pt"
RESULT_MARKER = "SKYTRAIN_RESULT "  # the CLI's last line: how a Ray job hands its result back


def _shard(n: int, rank: int, world: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffled, equal-sized share of ``n`` rows: equal sizes keep DDP's collectives in step."""
    order = torch.randperm(n, generator=generator)
    return order[rank::world][: n // world]


def _evaluate(model: nn.Module, features, target, spec: ModelSpec, device, batch_size: int) -> dict:
    """Loss and metric sums over this worker's rows, all-reduced to the global values."""
    model.eval()
    loss_fn = _loss(spec, reduction="sum")
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct / squared error, rows
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(features), batch_size):
            x, y = features[i : i + batch_size].to(device), target[i : i + batch_size].to(device)
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


def _loss(spec: ModelSpec, reduction: str = "mean") -> nn.Module:
    return (
        nn.CrossEntropyLoss(reduction=reduction) if spec.task == "classification" else nn.MSELoss(reduction=reduction)
    )


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _tensors(version_dir: str, split: str, manifest: dict, spec: ModelSpec):
    features, target = load_split(version_dir, split, manifest)
    target_dtype = torch.long if spec.task == "classification" else torch.float32
    return torch.from_numpy(features), torch.as_tensor(target, dtype=target_dtype)


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

    manifest = read_manifest(config["dataset_dir"])
    train_x, train_y = _tensors(config["dataset_dir"], "train", manifest, spec)
    val_x, val_y = _tensors(config["dataset_dir"], "val", manifest, spec)
    val_rows = _shard(len(val_x), rank, world, torch.Generator().manual_seed(0))
    val_x, val_y = val_x[val_rows], val_y[val_rows]

    model = build_model(spec, manifest, hp)
    # channels_last suits the tensor cores' convolution kernels; on CPU it buys nothing here.
    memory_format = torch.channels_last if device.type == "cuda" and train_x.dim() == 4 else torch.preserve_format
    model = ray.train.torch.prepare_model(model.to(memory_format=memory_format))
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = max(1, (len(train_x) // world) // hp["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=hp["lr"], total_steps=hp["epochs"] * steps_per_epoch
    )
    loss_fn = _loss(spec)

    stopper = EarlyStopping(hp["patience"], spec.higher_is_better)
    start_epoch = 0
    if checkpoint := ray.train.get_checkpoint():  # a restarted worker group, or a resumed run
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stopping"])
        start_epoch = state["epoch"]

    tracker = tracking.RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    if tracker and start_epoch:
        tracker.log_epoch({"resumed_from_epoch": start_epoch}, step=start_epoch)
    for epoch in range(start_epoch, hp["epochs"]):
        started = time.perf_counter()
        model.train()
        rows = _shard(len(train_x), rank, world, torch.Generator().manual_seed(config["seed"] + epoch))
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(steps_per_epoch):
            batch = rows[step * hp["batch_size"] : (step + 1) * hp["batch_size"]]
            x = train_x[batch].to(device, non_blocking=True, memory_format=memory_format)
            y = train_y[batch].to(device, non_blocking=True)
            with _autocast(device):
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach()
        train_loss = total_loss / steps_per_epoch
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(train_loss)
            train_loss /= world
        val = _evaluate(model, val_x, val_y, spec, device, batch_size=4096)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss.item(),
            **{f"val_{k}": v for k, v in val.items()},
            "epoch_seconds": (seconds := time.perf_counter() - started),
            "samples_per_second": steps_per_epoch * hp["batch_size"] * world / seconds,
            "lr": schedule.get_last_lr()[0],
        }
        stop = stopper.update(val[spec.metric])
        if rank == 0:
            tracker.log_epoch(metrics, step=epoch + 1)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train_", "val_")))
            # To the real stdout: Ray Train's print patch would also copy it into the logger (twice).
            line = f"{spec.key} epoch {epoch + 1}/{hp['epochs']} ({metrics['epoch_seconds']:.1f}s): {summary}"
            print(line, file=sys.__stdout__, flush=True)
            with tempfile.TemporaryDirectory() as directory:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _check_capacity(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> None:
    """Fail fast instead of waiting forever for resources a fixed-size cluster will never have."""
    available = ray.cluster_resources()
    needed = {"CPU": num_workers * cpus_per_worker, **({"GPU": num_workers} if use_gpu else {})}
    for resource, amount in needed.items():
        if available.get(resource, 0) < amount:
            raise ValueError(
                f"num_workers={num_workers} needs {amount:g} {resource} but the Ray cluster has "
                f"{available.get(resource, 0):g}: lower num_workers or use a bigger cluster"
            )


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
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train one model on one dataset version with Ray Train, log it and register it.

    Needs a connected Ray (``ray.init``). Returns run id, registered version and metrics. Rerunning a
    crashed training with the same ``run_name`` resumes it (same MLflow run, latest checkpoint).
    """
    settings = settings or Settings()
    spec = spec_for(model)
    dataset_dir = str(Path(dataset_dir).resolve())
    manifest = read_manifest(dataset_dir)
    if manifest["dataset"] != spec.dataset:
        raise ValueError(f"model '{model}' trains on '{spec.dataset}', not on '{manifest['dataset']}' ({dataset_dir})")
    hp = resolve_hparams(spec, hparams, epochs)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= num_workers
    cpus_per_worker = 1.0
    # A local Ray cannot grow; a cluster's autoscaler may add nodes (a Ray job sees RAY_ADDRESS).
    if not (settings.ray_address or os.environ.get("RAY_ADDRESS")):
        _check_capacity(num_workers, cpus_per_worker, use_gpu)

    run_name = run_name or f"{model}-{manifest['version']}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_id = tracking.ensure_experiment(settings)
    # Same run name as an unfinished run: continue its MLflow run, as Ray Train continues from the
    # checkpoints it left under <storage_path>/<run_name>.
    unfinished = tracking.unfinished_run_id(experiment_id, run_name)
    with mlflow.start_run(run_id=unfinished, experiment_id=experiment_id, run_name=run_name) as run:
        if unfinished is None:
            tracking.log_training_inputs(spec, manifest, dataset_dir, hp, num_workers, use_gpu, seed)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "model": model,
                "hparams": hp,
                "seed": seed,
                "dataset_dir": dataset_dir,
                "threads_per_worker": int(cpus_per_worker),
                "tracking_uri": settings.mlflow_tracking_uri,
                "run_id": run.info.run_id,
                "log_level": settings.ray_log_level,
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=settings.ray_storage_path,
                checkpoint_config=CheckpointConfig(
                    num_to_keep=2,
                    checkpoint_score_attribute=f"val_{spec.metric}",
                    checkpoint_score_order="max" if spec.higher_is_better else "min",
                ),
                failure_config=FailureConfig(max_failures=2),
                logging_config=ray.LoggingConfig(log_level=settings.ray_log_level),
            ),
        )
        started = time.perf_counter()
        result = trainer.fit()
        phases = {"fit": time.perf_counter() - started}
        best = result.get_best_checkpoint(metric=f"val_{spec.metric}", mode="max" if spec.higher_is_better else "min")
        with best.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        net = build_model(spec, manifest, hp)
        net.load_state_dict(state["model"])
        net.eval()

        started = time.perf_counter()
        test_x, test_y = load_split(dataset_dir, "test", manifest)
        with torch.no_grad():
            output = predict_in_batches(lambda x: net(torch.from_numpy(x)).numpy(), test_x)
        test_metrics = {f"test_{k}": v for k, v in score(spec.task, test_y, output).items()}
        tracking.log_results(spec, test_metrics, test_x, test_y, output, best_epoch=state["epoch"])
        phases["evaluate"] = time.perf_counter() - started
        started = time.perf_counter()
        version = tracking.log_and_register(net, spec, test_x[:5], manifest, hp, run.info.run_id)
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
            settings=settings,
        )
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
