"""``make test``: the suite as two pytest processes at once, one per core of a CI machine.

Most tests wait more than they compute (servers starting, Ray Train's start-up, Terraform against
moto, the platform's worker), so one pytest process leaves a 2-core machine idle much of the time.
The suite is cut in two shards of test files, each a plain pytest session with its own fixtures
(its own local Ray, Prefect API, moto server, state directory): shard ``servers`` holds the tests
built around long-running servers (the ``make up`` platform and its UIs, Ray Serve, the cloud
configs, the fault and load tests, Azurite) and a few short files that even the two out, shard
``training`` everything else. Measured in a fresh clone on 2 cores (2026-11-23): training 14.1 min,
servers 14.7 min, 16.5 min for all of ``.ci/run`` with the install; both cores were 86 % busy on
average. The training shard prints as it goes; the servers shard's output follows it. The exit
status is the first failure's, and "no tests collected" (pytest's 5) is a failure.

    python -m tests.shards              # both shards (what `make test` runs)
    python -m tests.shards servers      # one of them
    PYTEST_ADDOPTS="-x" python -m tests.shards    # options for both pytest processes
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
# Test files (or folders) of the servers shard, relative to tests/; every other test file is the training shard's.
SERVERS = (
    "infra",
    "security",
    "unit",
    "integration/test_local_platform.py",
    "integration/test_operating_ui.py",
    "integration/test_serving.py",
    "integration/test_faults.py",
    "integration/test_azure_store.py",
    "integration/test_ray_job_submission.py",
    "integration/test_tune.py",
    "test_serving_benchmark.py",
    # short files that even out the two shards (about a minute together)
    "integration/test_data_prep_flows.py",
    "integration/test_onnx_export.py",
    "test_batch_inference_benchmark.py",
)
NO_TESTS_COLLECTED = 5


def shard_files() -> dict[str, list[str]]:
    """Each shard's test files, as paths relative to the project (sorted, every file in exactly one)."""
    files = sorted(path.relative_to(TESTS).as_posix() for path in TESTS.rglob("test_*.py"))
    servers = [f for f in files if any(f == entry or f.startswith(f"{entry}/") for entry in SERVERS)]
    training = [f for f in files if f not in servers]
    return {name: [f"tests/{f}" for f in chosen] for name, chosen in (("training", training), ("servers", servers))}


def main(argv: list[str] | None = None) -> int:
    chosen = (argv if argv is not None else sys.argv[1:]) or ["training", "servers"]
    shards = shard_files()
    unknown = set(chosen) - set(shards)
    if unknown:
        raise SystemExit(f"unknown shard(s) {sorted(unknown)}: the shards are {sorted(shards)}")
    logs = ROOT / "test-output"
    logs.mkdir(exist_ok=True)
    running = {}
    for index, name in enumerate(chosen):
        command = [sys.executable, "-m", "pytest", *shards[name]]
        if index == 0:  # the first shard prints as it goes
            running[name] = (subprocess.Popen(command, cwd=ROOT), None)
        else:
            log = logs / f"shard-{name}.log"
            out = log.open("w")
            running[name] = (subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT), log)
    statuses = {}
    for name, (process, log) in running.items():
        statuses[name] = process.wait()
        if log is not None:
            print(f"\n===== shard '{name}' ({len(shards[name])} test files) =====", flush=True)
            print(log.read_text(), flush=True)
    for name, status in statuses.items():
        verdict = "passed" if status == 0 else f"FAILED (pytest exit status {status})"
        print(f"shard '{name}': {verdict}", file=sys.stderr)
        if status == NO_TESTS_COLLECTED:
            print(f"shard '{name}': pytest collected no tests", file=sys.stderr)
    failed = [status for status in statuses.values() if status != 0]
    if not failed:
        return 0
    return 1 if failed[0] == NO_TESTS_COLLECTED else failed[0]  # never 5 to CI: "nothing ran" is a failure


if __name__ == "__main__":
    raise SystemExit(main())
