"""The local platform's files under the state directory, and whether its servers run.

Kept apart from ``flows/local_platform.py`` (which starts and stops them) because importing
``flows`` reads it: while the servers run, flows report to them (``use_running_servers``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ray_jobs.settings import Settings


@dataclass(frozen=True)
class Layout:
    """The platform's files under the state directory."""

    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "platform"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    def pid_file(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


def cmdline(pid: int) -> str | None:
    """The command line of a live process, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return ""  # alive, but no /proc here (not Linux): trust the PID
    return raw.replace(b"\0", b" ").decode(errors="replace") or None


def running(layout: Layout, name: str) -> dict | None:
    """The record of service ``name`` if its process still runs (and is what was started)."""
    path = layout.pid_file(name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    command = cmdline(record["pid"])
    if command is None or (command and record["marker"] not in command):
        return None  # gone, or the PID now belongs to something else
    return record


def read_env_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def use_running_servers(settings: Settings | None = None) -> dict[str, str]:
    """Point this process at the servers ``make up`` runs for its state directory, if they run.

    Variables already set win; ``SKYTRAIN_USE_SERVERS=0`` turns it off. Called when ``flows`` is
    imported (before Prefect is), so ``make run`` and every flow report to the servers while they
    are up and use the embedded defaults otherwise. Returns what it set.
    """
    if os.environ.get("SKYTRAIN_USE_SERVERS", "1").lower() in {"0", "false", "no"}:
        return {}
    layout = Layout((settings or Settings()).state_dir)
    if not layout.env_file.is_file() or running(layout, "prefect") is None or running(layout, "mlflow") is None:
        return {}
    applied = {k: v for k, v in read_env_file(layout.env_file).items() if k not in os.environ}
    os.environ.update(applied)
    return applied
