"""Ray's session folders of the local Rays skytrain starts: the newest few kept, the rest removed.

Ray gives every session a folder under its temp dir (``/tmp/ray/session_<date>_<time>_<pid>``:
logs, sockets, runtime-env files) and never removes it, on purpose: the logs outlive the Ray. A
Prefect worker that retrains every night, or a test run, starts a local Ray each time, so the
folders pile up without bound (a few MB each; 263 of them, 758 MB, on this project's machine
after a day of test runs).

``init_local`` marks the folder of each local Ray it starts (``skytrain.owner``: the PID of the
process that started it) and then removes this user's marked folders beyond the newest
``SKYTRAIN_RAY_SESSIONS_KEPT`` (default 10) whose owner process is gone: the last runs' logs stay
for troubleshooting, and a Ray still in use keeps its folder whatever its age. A folder without
the mark (a Ray started by hand or by another tool, a cluster's) is never touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray_jobs import processes

logger = logging.getLogger(__name__)

MARK = "skytrain.owner"
PREFIX = "session_"  # Ray's session folders; ``session_latest`` is a link to the newest, never removed


def mark(session_dir: Path) -> None:
    """Record this process as the owner of the local Ray whose session folder this is."""
    processes.mark_owner(session_dir, MARK)


def owner(folder: Path) -> int | None:
    """The PID in the folder's mark, if it is this user's marked session folder."""
    return processes.owner(folder, MARK)


def prune(temp_dir: Path, keep: int) -> list[Path]:
    """Remove this user's marked session folders under ``temp_dir`` beyond the newest ``keep`` whose
    owner is gone; return them. Ray names a folder by the time it started: the names sort by age."""
    return processes.remove_orphaned(sorted(temp_dir.glob(f"{PREFIX}*")), MARK, keep)


def keep_newest(temp_dir: Path, session_name: str, keep: int) -> None:
    """Mark the session this process started and prune the ended ones beyond the newest ``keep``.
    Housekeeping: a folder it cannot write or remove is reported, never an error for the Ray."""
    try:
        mark(temp_dir / session_name)
        prune(temp_dir, keep)
    except OSError as error:
        logger.warning("Ray session folders under %s left as they are: %s", temp_dir, error)
