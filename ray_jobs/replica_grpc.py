"""Keep a Serve replica's gRPC server on its node's address instead of every interface.

Ray Serve 2.60 starts a gRPC server in every replica (the path the proxy and other deployments
take to it; ``RAY_SERVE_PROXY_USE_GRPC``, one of ``cluster.SERVE_THROUGHPUT_SETTINGS``, sends all
HTTP traffic through it) and binds it to ``[::]:0`` whatever the cluster's address: plaintext, no
authentication, reachable from any machine that can reach the host, around the proxy that
skytrain keeps on 127.0.0.1 (``ray/serve/_private/replica.py``, ``Replica._on_initialized``;
ray-project/ray#64623 makes its port range configurable, not its host).

Callers reach a replica at its node's IP and that port (``RunningReplicaInfo``: ``node_ip`` and
``port``), so binding the node's IP serves them all: 127.0.0.1 on a local Ray (``cluster.init_local``
keeps Ray on loopback), the node's private address on a cluster. Ray binds the server after the
deployment's constructor ran, in the same process: ``bind_to_node_address()`` there takes effect.
Checked on the real sockets by ``tests/integration/test_serving.py``; if a Ray upgrade moves the
bind, that test says so.
"""

from __future__ import annotations

import ipaddress

import ray
from ray.serve._private import replica

EVERY_INTERFACE = "[::]:0"


def _address(host: str) -> str:
    return f"[{host}]:0" if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) else f"{host}:0"


def bind_to_node_address() -> None:
    """In a replica's process: its gRPC server binds this node's IP (idempotent)."""
    bind = replica.add_port_to_grpc_server
    if getattr(bind, "node_address", None):
        return
    node_address = _address(ray.util.get_node_ip_address())

    def add_port_on_node_address(server, address: str) -> int:
        return bind(server, node_address if address == EVERY_INTERFACE else address)

    add_port_on_node_address.node_address = node_address
    replica.add_port_to_grpc_server = add_port_on_node_address
