"""What every benchmark sets before skytrain and Ray are imported: a private state directory
(removed when the benchmark exits; the figures go to ``benchmarks/results/``) unless
``SKYTRAIN_STATE_DIR`` names one, and a local Ray on 127.0.0.1 only.

A benchmark killed by a signal never runs its exit handler: its folder is marked with its PID
(``processes.mark_owner``), and the next benchmark removes this user's folders whose owner is gone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from ray_jobs import processes  # standard library only: safe before Ray and skytrain's settings

PREFIX, MARK = "skytrain-bench-", "skytrain.owner"


def use() -> None:
    if "SKYTRAIN_STATE_DIR" not in os.environ:
        processes.remove_orphaned(Path(tempfile.gettempdir()).glob(f"{PREFIX}*"), MARK)
        folder = tempfile.mkdtemp(prefix=PREFIX)
        processes.mark_owner(Path(folder), MARK)
        os.environ["SKYTRAIN_STATE_DIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
