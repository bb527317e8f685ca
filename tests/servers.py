"""Helpers for the real servers tests start on 127.0.0.1: free ports and waiting until they answer."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray_jobs.ports import free_ports


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


def stop(process: subprocess.Popen, grace: float = 15) -> None:
    """Stop a server this test session started, by its PID: SIGTERM, then SIGKILL after ``grace`` s."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        stop(server)


AZURITE = Path(__file__).resolve().parents[1] / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


@dataclass
class Azurite:
    """A running Azurite Blob service: its endpoint, and the one account it serves with a fresh key."""

    endpoint: str
    account: str
    key: str
    process: subprocess.Popen

    def wait(self, timeout: float = 120) -> Azurite:
        """Until it answers HTTP (any status: an unsigned request gets 400 or 403); Node loading its
        ~450 packages took 3 to 35 s here on 2 busy cores."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/{self.account}?comp=list", timeout=2).read()
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not come up (exit {self.process.poll()})") from None
                time.sleep(0.2)


def azurite_unavailable() -> str | None:
    """Why Azurite cannot run here (None: it can)."""
    if not AZURITE.exists():
        return f"Azurite is not installed at {AZURITE}: `make test` installs it (npm, azurite@3.37.0)"
    if shutil.which("node") is None:
        return "Azurite needs Node.js: no `node` on PATH"
    return None


@contextmanager
def azurite_server(workspace: Path, account: str = "skytrainacct") -> Iterator[Azurite]:
    """Azurite's Blob service on 127.0.0.1 at a free port, its data in ``workspace``, serving only
    ``account`` with a key made for this run (no fixed key in the repository; no telemetry). Yields
    at once, before it answers (``wait()``), so its start overlaps other set-up; stopped by its PID."""
    (port,) = free_ports()
    key = base64.b64encode(os.urandom(64)).decode()
    command = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workspace)]
    command += ["--silent", "--disableTelemetry"]
    server = subprocess.Popen(
        command,
        env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Azurite(f"http://127.0.0.1:{port}", account, key, server)
    finally:
        stop(server)
