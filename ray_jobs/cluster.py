"""Connecting to Ray: a running cluster when an address is configured, else a local one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray._private.ray_constants import GCS_PORT_ENVIRONMENT_VARIABLE

from ray_jobs import ray_sessions, serve_ingress
from ray_jobs.ports import free_ports
from ray_jobs.settings import Settings

# Ray Serve's throughput settings (its controller lists them as "throughput optimized"): user code and
# the router run on each replica's main event loop instead of extra threads and loops, and the proxy
# talks gRPC to the replicas. skytrain's replicas never block their loop (inference runs in a thread).
# Measured with benchmarks/serving.py on 2 cores, one MNIST image: p50 18 -> 11 ms and 52 -> 90 requests/s
# at concurrency 1; 108 -> 150 requests/s at 16. Ray's processes read them at start: a local Ray gets
# them here, a cluster from its nodes' environment. A value already set wins.
SERVE_THROUGHPUT_SETTINGS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
}

# Ray Train's preemption watcher (an actor per training that polls whether its nodes are being drained, as
# spot nodes are) has nothing to watch on one machine: a local Ray trains without it. Its actor sat on each
# training's start-up path: a one-epoch fit() took 34-43 s with it, 28-31 s without, on 2 cores here. The
# driver's value reaches Ray Train's controller; one already set wins.
#
# Ray Train's controller collects the workers' reports by polling them every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and a worker's report queue holds one: a worker's
# next ray.train.report() waits until the previous one was collected. An epoch faster than the interval
# then lasts the interval: the regressor's 15 epochs of 0.1 s took a 44 s fit(), 14 s at 0.1 s (1 worker,
# 2 cores here; 11.5 s of both is start-up); the CNN's 8 s epochs were unchanged within noise and its
# 3-epoch fit() lost the last report's wait (43.6-43.9 -> 40.5-40.6 s). A poll that misses is retried;
# a worker is declared hung only after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (10 min) either way.
LOCAL_TRAIN_SETTINGS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}

# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: "0" makes 127.0.0.1 the node address, and Ray binds loopback only.
RAY_CLUSTER_VARIABLE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


_local_gcs_address: str | None = None  # the GCS of the last Ray init_local started
_local_ingress_folder: Path | None = None  # its HAProxy folder (serve_ingress), if it has one


def started_local_ray() -> bool:
    """Whether this process is connected to a local Ray that ``init_local`` started (fixed size)."""
    return ray.is_initialized() and ray.get_runtime_context().gcs_address == _local_gcs_address


def init_local(**options: Any) -> None:
    """Start a local Ray whose processes know its address (and Serve's throughput settings).

    Ray Train's placement-group cleaner looks its Ray up through the State API; with another Ray
    running on the same machine it cannot tell which is its own ("Found multiple active Ray
    instances") and stops, leaking the placement groups of trainings that end abruptly (a Tune
    trial stopped by ASHA). A fixed GCS port, exported to every worker as ``RAY_ADDRESS``, settles it.

    Every server of the local Ray (GCS, raylet, dashboard and its agents, workers) listens on
    127.0.0.1 only: on Linux Ray otherwise binds all interfaces (``::``, ``0.0.0.0``, the host's IP),
    and a local Ray has no other node to talk to. Ray keeps to loopback when its
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is off: set for Ray's processes here, and for this one
    during ``ray.init`` (Ray read the variable when it was imported). A value already set wins:
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` gives Ray's own default back.

    Ray Serve on this Ray takes HTTP through HAProxy unless ``SKYTRAIN_SERVE_INGRESS=proxy``
    (``serve_ingress``): its variables reach Ray's processes only, as the GCS port does.

    The new Ray's session folder is marked as this process's, and the folders of ended local Rays
    beyond the newest ``SKYTRAIN_RAY_SESSIONS_KEPT`` are removed (``ray_sessions``).
    """
    (port,) = free_ports()
    for name, value in {**SERVE_THROUGHPUT_SETTINGS, **LOCAL_TRAIN_SETTINGS}.items():
        os.environ.setdefault(name, value)
    runtime_env = options.pop("runtime_env", None) or {}
    env_vars = {**runtime_env.get("env_vars", {}), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    settings = Settings()
    environment = serve_ingress.local_ray_environment(settings.serve_ingress)
    ingress = {name: value for name, value in environment.items() if name not in os.environ}
    previous = {name: os.environ.get(name) for name in (GCS_PORT_ENVIRONMENT_VARIABLE, RAY_CLUSTER_VARIABLE, *ingress)}
    os.environ.update(ingress)
    os.environ[GCS_PORT_ENVIRONMENT_VARIABLE] = str(port)
    os.environ.setdefault(RAY_CLUSTER_VARIABLE, "0")
    clusters_enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[RAY_CLUSTER_VARIABLE].lower() in {"1", "true"}
    global _local_gcs_address, _local_ingress_folder
    _local_ingress_folder = serve_ingress.folder_of(environment)
    try:
        ray.init(runtime_env={**runtime_env, "env_vars": env_vars}, **options)
        context = ray.get_runtime_context()
        _local_gcs_address = context.gcs_address
        ray_sessions.keep_newest(Path(context.get_temp_dir()), context.get_session_name(), settings.ray_sessions_kept)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters_enabled
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the Ray already connected in this process, or connect (or start one) for the block.

    Only a connection this block made is shut down at its end: it never stops a Ray it did not
    start, and on a remote cluster ``shutdown`` only disconnects.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        init_local()
    try:
        yield
    finally:
        ray.shutdown()
        remove_local_ingress_folder()


def remove_local_ingress_folder() -> None:
    """The HAProxy folder of the local Ray this process started last, once that Ray is shut down: a
    long-lived process (a Prefect worker running flow after flow) would otherwise keep one per Ray
    until it exits."""
    global _local_ingress_folder
    if _local_ingress_folder is not None and not ray.is_initialized():
        shutil.rmtree(_local_ingress_folder, ignore_errors=True)
        _local_ingress_folder = None
