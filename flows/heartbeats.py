"""Sync flow runs end without waiting for Prefect's heartbeat thread.

Prefect 3.8.8 runs a heartbeat thread beside every flow run (``flows.heartbeat_frequency``, 180 s
by default). It sleeps in 1-second steps, and the sync engine joins it when the run ends, so every
sync flow run, subflows included, ended 0-1 s late: the ``prepare-mnist`` flow took either 1.05 or
2.06 s. Prefect's async engine does not join it (``join_on_exit=False``); this makes the sync
engine do the same. The thread is a daemon: it sees its stop event within a second and returns
without another heartbeat. Heartbeats themselves are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow_engine

_prefect_send_heartbeats = flow_engine._send_heartbeats


@contextmanager
def send_heartbeats_without_join(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Prefect's heartbeat context, never joining its thread on exit (``join_on_exit`` is ignored)."""
    with _prefect_send_heartbeats(engine, join_on_exit=False):
        yield


def install() -> None:
    """Makes the flow engine use :func:`send_heartbeats_without_join` (idempotent)."""
    flow_engine._send_heartbeats = send_heartbeats_without_join
