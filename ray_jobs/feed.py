"""A worker's share of a dataset split, read with Ray Data and, where it fits, kept on the device.

The first pass streams the worker's shard (``get_dataset_shard(...).iter_torch_batches(...)``).
When the shard fits in the device's memory (the GPU's, or the host's for CPU workers), that pass
also keeps its rows there, and later epochs reshuffle them in place with a seeded permutation
instead of reading and copying the data again: that is what makes small datasets fast on a GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch

# Share of free memory a resident shard may take: the rest is for the model, activations, batches.
GPU_MEMORY_SHARE = 0.5
HOST_MEMORY_SHARE = 0.25


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits_on_device(rows: int, manifest: dict[str, Any], device: torch.device) -> bool:
    """Whether ``rows`` rows of this dataset (float32 features + target) fit the memory share."""
    row_bytes = 4 * (math.prod(manifest["feature_shape"]) + 1)
    share = GPU_MEMORY_SHARE if device.type == "cuda" else HOST_MEMORY_SHARE
    return rows * row_bytes <= share * free_memory_bytes(device)


class ShardFeed:
    """Batches ``(features, target)`` on ``device`` from one worker's Ray Data shard."""

    def __init__(
        self,
        shard,
        manifest: dict[str, Any],
        task: str,
        device: torch.device,
        *,
        resident: bool,
        memory_format: torch.memory_format = torch.preserve_format,
    ):
        self.shard = shard
        self.columns = manifest["feature_columns"]
        self.shape = tuple(manifest["feature_shape"])
        self.target = manifest["target_column"]
        self.target_dtype = torch.long if task == "classification" else torch.float32
        self.device = device
        self.resident = resident
        self.memory_format = memory_format
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def is_resident(self) -> bool:
        return self._rows is not None

    def _to_tensors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.columns) == 1:  # one fixed-size list column holding the whole feature tensor
            x = batch[self.columns[0]]
        else:
            x = torch.stack([batch[c] for c in self.columns], dim=1)
        x = x.to(self.device, torch.float32, non_blocking=True).reshape(-1, *self.shape)
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        y = batch[self.target].to(self.device, self.target_dtype, non_blocking=True)
        return x, y

    def batches(
        self, batch_size: int, *, seed: int | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the shard; shuffled when ``seed`` is given, whole batches only with ``drop_last``."""
        if self._rows is not None:
            x, y = self._rows
            order = (
                torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(self.device)
                if seed is not None
                else None
            )
            stop = len(x) - len(x) % batch_size if drop_last else len(x)
            for start in range(0, stop, batch_size):
                if order is None:
                    yield x[start : start + batch_size], y[start : start + batch_size]
                else:
                    rows = order[start : start + batch_size]
                    yield x[rows], y[rows]
            return

        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for batch in self.shard.iter_torch_batches(
            batch_size=batch_size,
            device="cpu",
            local_shuffle_buffer_size=4 * batch_size if seed is not None else None,
            local_shuffle_seed=seed,
        ):
            x, y = self._to_tensors(batch)
            if self.resident:
                kept.append((x, y))
            if len(x) == batch_size or not drop_last:
                yield x, y
        if self.resident and kept:
            self._rows = (torch.cat([x for x, _ in kept]), torch.cat([y for _, y in kept]))
