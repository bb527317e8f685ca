"""Processes by PID: whether one is still there, and the folders one owns (a file in the folder
holding its PID), removed once it is gone."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (as any user)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def mark_owner(folder: Path, mark: str) -> None:
    """Record this process as the owner of ``folder`` (its PID in ``folder/mark``)."""
    (folder / mark).write_text(str(os.getpid()))


def owner(folder: Path, mark: str) -> int | None:
    """The PID in ``folder/mark``, if the folder is this user's (not a link) and holds one."""
    try:
        if folder.is_symlink() or folder.stat().st_uid != os.getuid():
            return None
        return int((folder / mark).read_text())
    except (OSError, ValueError):
        return None


def remove_orphaned(folders: Iterable[Path], mark: str, keep: int = 0) -> list[Path]:
    """Of ``folders`` (oldest first), the owned ones beyond the newest ``keep`` whose owner is gone:
    removed, and returned. A folder without an owner (one being made, not ours) is left alone."""
    owned = [(folder, pid) for folder in folders if (pid := owner(folder, mark)) is not None]
    removed = []
    for folder, pid in owned[: max(len(owned) - keep, 0)]:
        if not alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def private_folder(prefix: str, mark: str, parent: Path | None = None) -> Path:
    """A new folder ``parent/<prefix>...`` (mode 0700; default parent: the temp dir) owned by this
    process and removed when it exits. One left by an owner killed by a signal (its exit handler
    never ran) is removed by the next call with the same ``prefix`` and ``mark``, once that owner
    is gone."""
    parent = Path(parent or tempfile.gettempdir())
    remove_orphaned(parent.glob(f"{prefix}*"), mark)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    mark_owner(folder, mark)
    return folder
