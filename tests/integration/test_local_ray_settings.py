"""The settings a local Ray's processes start with (``ray_jobs/cluster.py``), read inside one of its
workers: Ray Train's controller and Ray Serve's processes read them there, once, when they start."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from ray_jobs import ray_sessions
from ray_jobs.cluster import LOCAL_TRAIN_SETTINGS, SERVE_THROUGHPUT_SETTINGS


@ray.remote(num_cpus=0)
def environment(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def test_a_local_ray_s_workers_start_with_skytrain_s_settings(local_ray):
    expected = {**LOCAL_TRAIN_SETTINGS, **SERVE_THROUGHPUT_SETTINGS}
    # Reports collected every 0.1 s, not every 2 s: a faster epoch no longer waits for the poll.
    assert expected["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"
    seen = ray.get(environment.remote([*expected, "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_BINARY_PATH"]))
    assert {name: seen[name] for name in expected} == expected
    # HAProxy in front of Serve's replicas (serve_ingress), through the wrapper that keeps its side
    # listeners on loopback; the driver's own environment is left as it was.
    assert seen["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert seen["RAY_SERVE_HAPROXY_BINARY_PATH"].startswith("/tmp/skyhap-")
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ


def test_a_local_ray_s_session_folder_is_marked_as_this_process_s(local_ray):
    """So that a later local Ray may remove it once this process is gone (``ray_sessions``)."""
    context = ray.get_runtime_context()
    folder = Path(context.get_temp_dir()) / context.get_session_name()
    assert (folder / "logs").is_dir()
    assert ray_sessions.owner(folder) == os.getpid()


SESSION = """
import os, ray
from pathlib import Path
from ray_jobs.cluster import ray_session
with ray_session():
    folder = Path(ray.get(ray.remote(num_cpus=0)(lambda: os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]).remote())).parent
    print("inside", folder, folder.is_dir(), flush=True)
print("after", folder.is_dir(), flush=True)
"""


def test_a_ray_session_removes_its_haproxy_folder_when_it_ends(tmp_path):
    """One folder per local Ray, removed when its session ends, not when the process exits: a
    Prefect worker runs flow after flow in one process."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("inside", "after"))]
    assert result.returncode == 0 and len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("inside /tmp/skyhap-") and lines[0].endswith(" True")
    assert lines[1] == "after False"
