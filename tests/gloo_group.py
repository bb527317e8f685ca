"""A real two-process gloo group on 127.0.0.1 for tests of code that runs inside one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from ray_jobs.ports import free_ports


def _rank(rank: int, body: Callable[[int], Any], port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = body(rank)
    finally:
        dist.destroy_process_group()


def on_two_ranks(body: Callable[[int], Any]) -> dict[int, Any]:
    """``body(rank)`` in each of two spawned processes joined in one gloo group; what each returned,
    by rank. ``body`` must be importable (a module-level function) and return picklable values."""
    (port,) = free_ports()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(body, port, results), nprocs=2, join=True)
        return dict(results)
