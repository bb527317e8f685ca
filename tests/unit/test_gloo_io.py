"""Gloo's polling I/O thread goes on SCHED_IDLE (``ray_jobs.gloo_io``), on a real 2-process gloo group;
the all-reduce still gives the right sum."""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest
import torch
import torch.distributed as dist

from ray_jobs.gloo_io import GLOO_IO_THREAD, idle_gloo_io_threads, threads_named
from tests.gloo_group import on_two_ranks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread policies are Linux's")


def _idle_and_sum(rank: int) -> dict:
    threads = threads_named(GLOO_IO_THREAD)
    policies_before = [os.sched_getscheduler(tid) for tid in threads]
    changed = idle_gloo_io_threads()
    sums = []
    for step in range(20):  # collectives keep working with the thread on SCHED_IDLE
        total = torch.full((20_000,), float((rank + 1) * step))
        dist.all_reduce(total)
        sums.append(sorted(set(total.tolist())))
    return {
        "threads": threads,
        "changed": changed,
        "policies_before": policies_before,
        "policies_after": [os.sched_getscheduler(tid) for tid in threads],
        "main_policy": os.sched_getscheduler(0),
        "sums": sums,
    }


def test_only_gloos_io_thread_is_idled_and_all_reduce_still_sums():
    with multiprocessing.get_context("spawn").Pool(1) as fresh:  # the thread is gloo's: none before a group
        assert fresh.apply(threads_named, (GLOO_IO_THREAD,)) == []
    results = on_two_ranks(_idle_and_sum)
    for rank in (0, 1):
        got = results[rank]
        assert len(got["threads"]) >= 1 and got["changed"] == len(got["threads"])
        assert set(got["policies_before"]) == {os.SCHED_OTHER}
        assert set(got["policies_after"]) == {os.SCHED_IDLE}
        assert got["main_policy"] == os.SCHED_OTHER  # the training thread keeps its policy
        assert got["sums"] == [[3.0 * step] for step in range(20)]  # (1 + 2) x step, every element
