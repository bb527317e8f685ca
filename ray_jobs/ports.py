"""Free TCP ports on 127.0.0.1, for the servers skytrain starts (a local Ray's GCS, HAProxy's side
listeners, test and benchmark servers)."""

from __future__ import annotations

import socket


def free_ports(count: int = 1) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()
