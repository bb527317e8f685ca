"""What every benchmark sets before skytrain and Ray are imported: a private state directory
(removed when the benchmark exits; the figures go to ``benchmarks/results/``) unless
``SKYTRAIN_STATE_DIR`` names one, and a local Ray on 127.0.0.1 only."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def use() -> None:
    if "SKYTRAIN_STATE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="skytrain-bench-")
        os.environ["SKYTRAIN_STATE_DIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
