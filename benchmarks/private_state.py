"""What every benchmark sets before skytrain and Ray are imported: a private state directory
(removed when the benchmark exits; the figures go to ``benchmarks/results/``) unless
``SKYTRAIN_STATE_DIR`` names one, and a local Ray on 127.0.0.1 only.

A benchmark killed by a signal never runs its exit handler: its folder carries its PID, and the
next benchmark removes it once that process is gone (``processes.private_folder``).
"""

from __future__ import annotations

import os

from ray_jobs import processes  # standard library only: safe before Ray and skytrain's settings

PREFIX, MARK = "skytrain-bench-", "skytrain.owner"


def use() -> None:
    if "SKYTRAIN_STATE_DIR" not in os.environ:
        os.environ["SKYTRAIN_STATE_DIR"] = str(processes.private_folder(PREFIX, MARK))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
