"""Training without DDP's per-step buffer broadcast: rank 0's BatchNorm statistics still reach every
worker once an epoch, before validation (``ray_jobs.train.share_buffers``), on a real gloo group."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ray_jobs.train import DDP_OPTIONS, share_buffers
from tests.gloo_group import on_two_ranks


def _statistics_after_sharing(rank: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    net.train()
    net(torch.randn(8, 1, 6, 6) + 3 * rank)  # each rank's running statistics from its own batch
    before = [b.clone() for b in net.buffers()]
    share_buffers(net)
    return [b.clone() for b in net.buffers()], before


def test_every_worker_gets_rank_zeros_batchnorm_statistics():
    results = on_two_ranks(_statistics_after_sharing)
    (after0, before0), (after1, before1) = results[0], results[1]
    assert any(not torch.equal(a, b) for a, b in zip(before0, before1)), "the ranks' statistics differed"
    for zero, one, mine in zip(after0, after1, before0):
        assert torch.equal(zero, mine)  # rank 0 keeps its own
        assert torch.equal(one, zero)  # rank 1 now holds rank 0's


def _statistics_around_ddp(rank: int) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
    torch.manual_seed(rank)  # each rank starts from its own weights and statistics
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    net.train()
    net(torch.randn(8, 1, 6, 6) + 5 * rank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's FutureWarning for a deprecated argument fails the test
        model = DistributedDataParallel(net, **DDP_OPTIONS)
    at_start = [b.clone() for b in net.buffers()]
    model(torch.randn(8, 1, 6, 6) + 5 * rank)  # a training forward: each rank's own batch
    return at_start, [b.clone() for b in net.buffers()], model.forward_sync_buffers


def test_ddp_syncs_buffers_at_start_and_not_before_each_training_forward():
    results = on_two_ranks(_statistics_around_ddp)
    (start0, after0, sync0), (start1, after1, sync1) = results[0], results[1]
    assert sync0 is False and sync1 is False
    for zero, one in zip(start0, start1):
        assert torch.equal(one, zero)  # DDP's start: rank 1 holds rank 0's statistics
    # After a forward each rank's running statistics moved with its own batch: no broadcast of rank 0's.
    assert any(not torch.equal(a, b) for a, b in zip(after0, after1))
