"""Project invariants: layout, the Prefect-free Ray package, idempotent set-up, isolated state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_layout():
    for name in ("README.md", "pyproject.toml", "Makefile", "flows", "ray_jobs", "infra", "tests", "mlflow", ".ci/run"):
        assert (ROOT / name).exists(), name
    # a Python package named mlflow here would shadow the library
    assert not list((ROOT / "mlflow").glob("*.py"))


def test_ray_jobs_never_imports_prefect():
    code = (
        "import sys, ray_jobs.train, ray_jobs.tracking, ray_jobs.cluster; "
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'flows')));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_setup_is_idempotent():
    """After `make setup` ran (make test depends on it), a second one has nothing to do."""
    assert subprocess.run(["make", "-q", "setup"], cwd=ROOT).returncode == 0


def test_tests_never_touch_the_users_state():
    from ray_jobs.settings import Settings

    assert Settings().state_dir != (ROOT / ".skytrain").resolve()


def test_make_test_runs_every_test_file_in_exactly_one_shard():
    from tests.shards import shard_files

    shards = shard_files()
    every = sorted(f"tests/{p.relative_to(ROOT / 'tests').as_posix()}" for p in (ROOT / "tests").rglob("test_*.py"))
    assert sorted(shards["training"] + shards["servers"]) == every
    assert not set(shards["training"]) & set(shards["servers"])
    assert "tests/integration/test_local_platform.py" in shards["servers"]  # the platform starts in one shard only


def test_a_shard_that_collects_nothing_fails_the_run(tmp_path, monkeypatch):
    """pytest's "no tests collected" (5) never reaches CI as such: the run fails with 1."""
    from tests import shards

    empty = tmp_path / "tests"
    (empty / "unit").mkdir(parents=True)
    (empty / "unit" / "test_nothing.py").write_text("# no test here\n")
    monkeypatch.setattr(shards, "TESTS", empty)
    monkeypatch.setattr(shards, "ROOT", tmp_path)
    assert shards.main(["servers"]) == 1
