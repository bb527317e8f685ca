"""The settings a local Ray's processes start with (``ray_jobs/cluster.py``), read inside one of its
workers: Ray Train's controller and Ray Serve's processes read them there, once, when they start."""

from __future__ import annotations

import os

import ray

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
