"""Which Ray the training sizes itself for: the local Ray this process starts is fixed-size (workers
leave CPUs to Ray Data's reads); a Ray connected by address, as a flow's ``ray_address`` parameter
does, is a cluster whose autoscaler adds nodes (a CPU per worker, whatever it has now)."""

from __future__ import annotations

import os
import subprocess
import sys

import ray

from ray_jobs.settings import Settings
from ray_jobs.train import cpus_per_worker, on_cluster

CONNECTED_BY_ADDRESS = """
import sys
from ray_jobs.cluster import ray_session
from ray_jobs.settings import Settings
from ray_jobs.train import cpus_per_worker, on_cluster
with ray_session(sys.argv[1]):
    print(on_cluster(Settings()), cpus_per_worker(3, False, Settings()))
"""


def test_the_own_local_ray_is_fixed_size_and_a_ray_reached_by_address_is_a_cluster(local_ray):
    settings = Settings()
    assert not on_cluster(settings)
    assert cpus_per_worker(2, False, settings) == 0.5  # 2 CPUs, one kept for the reads
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run(
        [sys.executable, "-c", CONNECTED_BY_ADDRESS, address], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # 3 workers on a 2-CPU Ray: refused on the local one, asked of the cluster's autoscaler here.
    assert done.stdout.split()[-2:] == ["True", "1.0"]
