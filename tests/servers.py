"""Helpers for the real servers tests start on 127.0.0.1: free ports and waiting until they answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_ports(count: int = 1) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for_http(url: str, process: subprocess.Popen, what: str, timeout: float, poll: float = 0.5) -> None:
    """Until ``url`` answers; fails early if ``process`` (the server) exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up (exit {process.poll()})") from None
            time.sleep(poll)


@contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """moto's server (every AWS service it mocks) on 127.0.0.1 at a free port, with ``env`` added to
    its environment; yields its endpoint and stops it by its PID."""
    (port,) = free_ports()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", server, "moto's server", timeout=60)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
