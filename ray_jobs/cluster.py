"""Connecting to Ray: a running cluster when an address is configured, else a local one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the Ray already connected in this process, or connect (or start one) for the block.

    Only a connection this block made is shut down at its end: it never stops a Ray it did not
    start, and on a remote cluster ``shutdown`` only disconnects.
    """
    if ray.is_initialized():
        yield
        return
    ray.init(address=address or None)
    try:
        yield
    finally:
        ray.shutdown()
