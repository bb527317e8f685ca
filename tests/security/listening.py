"""What processes listen on, read from the operating system's socket table (psutil), not from their
settings: the tests that every server skytrain starts binds the loopback interface only."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # the start of its command line, to say which server it is
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        """127.0.0.0/8 or ::1; an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) by its IPv4 part.
        ``0.0.0.0`` and ``::`` (every interface) are not."""
        address = ipaddress.ip_address(self.ip.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.process}) listens on {self.ip}:{self.port}"


def with_descendants(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes and all their children (a server's workers); those gone meanwhile are left out."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                found[process.pid] = process
    return list(found.values())


def listeners(processes: Iterable[psutil.Process]) -> list[Listener]:
    """Every TCP socket in LISTEN state that the processes hold."""
    found = []
    for process in processes:
        try:
            command = " ".join(process.cmdline())  # whole: a long checkout path must not cut the script name off
            sockets = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # ended between listing and looking: it listens on nothing
        found += [
            Listener(process.pid, command, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN
        ]
    return found


def exposed(found: Iterable[Listener]) -> list[str]:
    """The listeners reachable from other machines, as lines for an assertion message."""
    return [str(listener) for listener in found if not listener.loopback]
