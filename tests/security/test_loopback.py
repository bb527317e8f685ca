"""A local Ray listens on 127.0.0.1 only: its GCS, raylet, dashboard, agents and workers, checked on
the sockets they hold. (The servers of ``make up``: tests/integration/test_local_platform.py; Ray
Serve's HTTP proxy: tests/integration/test_serving.py.)

On Linux Ray binds every interface by default (``::``, ``0.0.0.0`` and the host's address); the
session's Ray runs with conftest's settings, so a second test starts one the way ``make serve`` and
the benchmarks do, from ``init_local`` alone with no setting in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import ray

from tests.security.listening import Listener, exposed, listeners

REPO = Path(__file__).resolve().parents[2]
RAY_DIR = str(Path(ray.__file__).parent)
# The servers every local Ray runs (by their command lines), so that a check of nothing fails.
REQUIRED = {"gcs_server": "/gcs/gcs_server", "raylet": "/raylet/raylet", "dashboard": "/dashboard/dashboard.py"}


def ray_processes() -> list[psutil.Process]:
    """The Ray processes this process started (Ray's binaries and scripts, and its ``ray::`` workers)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if RAY_DIR in command or command.startswith("ray::"):
            found.append(process)
    return found


def check(found: list[Listener]) -> None:
    for name, marker in REQUIRED.items():
        assert any(marker in listener.process for listener in found), f"no listening {name} among {found}"
    assert not exposed(found), "Ray listens beyond loopback:\n" + "\n".join(exposed(found))


def test_the_sessions_local_ray_listens_on_loopback_only(local_ray):
    check(listeners(ray_processes()))


# Run in a process of its own: init_local, the sockets of what it started, shutdown (and stragglers
# stopped by PID, as conftest's local_ray does).
ALONE = """
import contextlib, json, psutil, ray
from ray_jobs.cluster import init_local
from tests.security.listening import listeners
from tests.security.test_loopback import ray_processes
init_local(num_cpus=1, log_to_driver=False)
started = ray_processes()
try:
    print(json.dumps([vars(listener) for listener in listeners(started)]))
finally:
    ray.shutdown()
    for process in psutil.wait_procs(started, timeout=10)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
"""


def test_init_local_alone_keeps_ray_on_loopback():
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"}}
    result = subprocess.run(
        [sys.executable, "-c", ALONE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check([Listener(**fields) for fields in json.loads(result.stdout.strip().splitlines()[-1])])
