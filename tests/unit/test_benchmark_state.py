"""A benchmark's private state folder: removed at exit, and by the next benchmark when a signal
killed its owner before its exit handler could run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.private_state import MARK
from ray_jobs import processes

REPO = Path(__file__).resolve().parents[2]
USE = (
    "from benchmarks import private_state; private_state.use(); "
    "import os; print(os.environ['SKYTRAIN_STATE_DIR'], flush=True)"
)


def test_a_folder_left_by_a_killed_benchmark_is_removed_by_the_next_one(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("SKYTRAIN_STATE_DIR", None)
    waiting = f"{USE}; import sys; sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", waiting], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as killed:
        left = Path(killed.stdout.readline().strip())
        killed.kill()
    assert left.parent == tmp_path and left.is_dir()  # SIGKILL: no exit handler ran
    alive = tmp_path / "skytrain-bench-alive"  # owned by this process, which is running
    alive.mkdir()
    processes.mark_owner(alive, MARK)
    unmarked = tmp_path / "skytrain-bench-unmarked"  # not one of ours
    unmarked.mkdir()

    done = subprocess.run([sys.executable, "-c", USE], cwd=REPO, env=env, capture_output=True, text=True, check=True)

    assert not left.exists()
    assert alive.is_dir() and unmarked.is_dir()
    own = Path(done.stdout.strip())
    assert own.parent == tmp_path and not own.exists()  # its own folder: removed at its normal exit
