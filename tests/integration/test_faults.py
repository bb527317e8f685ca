"""Faults with real processes and real sockets: the MLflow server unreachable when a training starts,
the S3 endpoint gone in the middle of publishing a dataset version, a Serve replica killed under load.

Where an endpoint must go away and come back within a retry window, a ``Forwarder`` (a TCP port
in front of the real server, in a thread of this process) is closed and opened again: closed, the
port refuses connections as a stopped server's does; open, it forwards to the real server. A
restarted real server would not do: moto keeps its state in memory, and ``mlflow server`` took
13 to 48 s to answer on this project's busy 2-core machine, more than the flows' whole retry window
(2, 4, 8 s, each ±50 %).

The serving test is also the load test: 20,000 requests at concurrency 32; its figures (p50, p99,
requests/s, what the first tries got) go to ``serving_under_fault.json`` in its tmp dir and to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import aiohttp
import boto3
import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
import ray
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from ray import serve
from ray.util.state import list_actors

from flows.data_prep import prepare_tabular
from flows.datasets import diamonds
from flows.datasets.store import existing_version, latest_version, versions, write_version
from flows.train import train
from ray_jobs import serving, tracking
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.inference import CHAMPION
from ray_jobs.models import MnistCNN, spec_for
from ray_jobs.settings import Settings
from tests.registered import least_squares, register, small_diamonds, small_mnist
from tests.servers import free_ports, wait_for_http

REGRESSOR = spec_for("diamonds-regressor")


class Forwarder:
    """A TCP port on 127.0.0.1 forwarding to ``upstream``; ``close()`` makes it refuse connections
    (and drops those open), ``open()`` serves again on the same port. ``cut_on(pattern)`` closes it
    at the first client bytes matching ``pattern``, before they reach the server."""

    def __init__(self, upstream_port: int) -> None:
        (self.port,) = free_ports()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut = threading.Event()  # set when a cut_on pattern closed it
        self._pattern: re.Pattern[bytes] | None = None
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> Forwarder:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)  # the accept loop sees close() within that
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut_on(self, pattern: bytes) -> None:
        self._pattern = re.compile(pattern)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # closed meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        seen = b""  # the end of what came before: a pattern may straddle two reads
        try:
            while data := source.recv(65536):
                if from_client and self._pattern is not None and self._pattern.search(seen + data):
                    self._pattern = None
                    self.cut.set()
                    self.close()
                    return
                seen = (seen + data)[-512:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class RetryLog(logging.Handler):
    """Prefect's task-run log lines ``Task run failed with ... - Retry n/m will start ...`` of one task."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task, self.lines, self.first = task, [], threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if getattr(record, "task_run_name", "").startswith(self.task) and " - Retry " in message:
            self.lines.append(message)
            self.first.set()


@contextlib.contextmanager
def retry_log(task: str):
    handler, logger = RetryLog(task), logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def task_run(flow_run_id, task: str, timeout: float = 60):
    """The flow run's task run of ``task`` as the Prefect API has it, once it reached a final state
    (task states reach the API as events, a moment after the flow returns)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        found = [run for run in runs if run.name.startswith(task)]
        if len(found) == 1 and found[0].state is not None and found[0].state.is_final():
            return found[0]
        assert time.monotonic() < deadline, f"no final task run '{task}' of flow run {flow_run_id}: {found}"
        time.sleep(0.5)


def flow_run_message(state) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state.message


# --- MLflow unreachable when a training starts ----------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (temporary store and artifacts); yields its port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, "mlflow server", timeout=180)
        yield port
    finally:  # the CLI runs uvicorn in a child process: stop both, by PID
        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture
def training_behind(mlflow_server, prefect_api, state_dir, local_ray, monkeypatch):
    """A forwarder to the MLflow server, closed; the tracking URI points at it; a small dataset version."""
    forwarder = Forwarder(mlflow_server)
    monkeypatch.setenv("SKYTRAIN_MLFLOW_TRACKING_URI", forwarder.url)
    monkeypatch.setenv("SKYTRAIN_MLFLOW_ARTIFACT_ROOT", "mlflow-artifacts:/skytrain")
    settings = Settings()
    frame = diamonds.read_csv(settings.diamonds_location()).sample(2000, random_state=0)
    tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)
    write_version(settings.data_store, "diamonds", "small", tables, manifest)
    try:
        yield forwarder, mlflow.MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    finally:
        forwarder.close()


def _train(run_name: str):
    return train(
        model="diamonds-regressor",
        dataset_version="small",
        epochs=1,
        num_workers=1,
        hparams={"arch": "linear"},
        run_name=run_name,
        return_state=True,
    )


def _versions(server: mlflow.MlflowClient) -> list:
    return server.search_model_versions(f"name = '{REGRESSOR.registered_name}'")


def _runs_named(server: mlflow.MlflowClient, run_name: str) -> list:
    experiment = server.get_experiment_by_name(Settings().mlflow_experiment)
    if experiment is None:
        return []
    return server.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


def test_mlflow_unreachable_at_start_is_retried_and_the_model_registered_once(training_behind):
    forwarder, server = training_behind
    before = len(_versions(server))
    outcome: dict = {}
    with retry_log("reach-mlflow") as log:
        flow = threading.Thread(target=lambda: outcome.update(state=_train("mlflow-came-back")))
        flow.start()
        try:
            assert log.first.wait(timeout=120), "the first attempt to reach MLflow did not fail and retry"
        finally:
            forwarder.open()  # MLflow is back, within the retry window
            flow.join(timeout=600)
    state = outcome["state"]
    assert state.is_completed(), state.message
    assert f"MLflow tracking server {forwarder.url} is unreachable: [Errno 111] Connection refused" in log.lines[0]
    reach = task_run(state.state_details.flow_run_id, "reach-mlflow")
    assert reach.run_count == 2 and reach.state.is_completed()

    result = state.result()
    registered = _versions(server)
    assert len(registered) == before + 1, "a model version was registered twice, or not at all"
    [version] = [v for v in registered if v.run_id == result["run_id"]]
    assert str(version.version) == result["version"] and version.status == "READY"
    assert (
        server.get_model_version(REGRESSOR.registered_name, version.version).tags["skytrain.run_id"]
        == (result["run_id"])
    )
    assert [run.info.status for run in _runs_named(server, "mlflow-came-back")] == ["FINISHED"]


def test_mlflow_that_never_comes_back_fails_the_flow_in_one_line_with_nothing_registered(training_behind, state_dir):
    forwarder, server = training_behind
    before = len(_versions(server))
    state = _train("mlflow-never-back")
    assert state.is_failed()
    message = flow_run_message(state)
    assert f"TrackingUnavailable: MLflow tracking server {forwarder.url} is unreachable" in message, message
    assert "\n" not in message
    reach = task_run(state.state_details.flow_run_id, "reach-mlflow")
    assert reach.run_count == 4 and reach.state.is_failed()  # the first attempt and 3 retries
    assert not (state_dir / "ray_results").exists(), "training started without MLflow"
    assert len(_versions(server)) == before and _runs_named(server, "mlflow-never-back") == []


def test_a_run_that_died_after_registering_completes_its_version_instead_of_adding_one(state_dir):
    """A training killed between registering its version and tagging it leaves a version without its
    lineage; the rerun (same run, resumed) completes that version and registers no second one."""
    settings = Settings()
    dataset = small_diamonds(settings, rows=600)
    manifest, net = read_manifest(dataset), least_squares(dataset)
    rows, _ = load_split(dataset, "test", manifest)
    hparams = {"arch": "linear", "hidden": 0}
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(settings)) as run:
        half = mlflow.pytorch.log_model(
            net,
            name="model",
            input_example=rows[:5],
            registered_model_name=REGRESSOR.registered_name,
            pip_requirements=tracking.PIP_REQUIREMENTS,
        ).registered_model_version
        assert "skytrain.run_id" not in mlflow.MlflowClient().get_model_version(REGRESSOR.registered_name, half).tags
        version = tracking.log_and_register(net, REGRESSOR, rows[:5], manifest, hparams, run.info.run_id)
        assert tracking.log_and_register(net, REGRESSOR, rows[:5], manifest, hparams, run.info.run_id) == version
    client = mlflow.MlflowClient()
    registered = client.search_model_versions(f"name = '{REGRESSOR.registered_name}'")
    assert [str(v.version) for v in registered] == [version] == [str(half)]
    tags = client.get_model_version(REGRESSOR.registered_name, version).tags
    assert tags["skytrain.run_id"] == run.info.run_id and tags["skytrain.dataset_version"] == manifest["version"]


# --- the S3 endpoint gone while a dataset version is published -------------------------------------


@pytest.fixture
def s3_behind(s3_server, s3_bucket, prefect_api, state_dir, tmp_path, monkeypatch):
    """A forwarder to moto's server, open; the data store in S3 through it; a small tabular source."""
    forwarder = Forwarder(int(s3_server.rsplit(":", 1)[1])).open()
    monkeypatch.setenv("SKYTRAIN_S3_ENDPOINT_URL", forwarder.url)  # storage's endpoint; boto3 here: moto's own
    monkeypatch.setenv("SKYTRAIN_DATA_STORE", f"s3://{s3_bucket}/store")
    rng = np.random.default_rng(0)
    rows = 600
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, rows), "area": rng.uniform(20, 250, rows).round(1)})
    frame["rent"] = (frame["area"] * 12 + frame["rooms"] * 40 + rng.normal(0, 50, rows)).round(2)
    frame.to_csv(source := tmp_path / "rents.csv", index=False)
    try:
        yield forwarder, str(source), f"s3://{s3_bucket}/store"
    finally:
        forwarder.close()


def _prepare(source: str):
    return prepare_tabular(source=source, target="rent", dataset="rents", return_state=True)


def _objects(store: str) -> list[str]:
    bucket, prefix = store.removeprefix("s3://").split("/", 1)
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/rents/")
    return sorted(item["Key"].removeprefix(f"{prefix}/rents/") for item in listed.get("Contents", []))


def test_s3_endpoint_lost_during_upload_and_back_publishes_a_complete_version(s3_behind):
    forwarder, source, store = s3_behind
    forwarder.cut_on(rb"(PUT|POST) \S*\.parquet")  # the first split's upload
    outcome: dict = {}
    with retry_log("publish-dataset-version") as log:
        flow = threading.Thread(target=lambda: outcome.update(state=_prepare(source)))
        flow.start()
        try:
            assert log.first.wait(timeout=120), "the publish did not fail and retry"
        finally:
            forwarder.open()  # the endpoint is back, within the retry window
            flow.join(timeout=300)
    assert forwarder.cut.is_set()
    state = outcome["state"]
    assert state.is_completed(), state.message
    publish = task_run(state.state_details.flow_run_id, "publish-dataset-version")
    assert publish.run_count == 2 and publish.state.is_completed()

    ref = state.result()
    assert versions(store, "rents") == [ref["version"]] and ref["reused"] is False
    manifest = read_manifest(ref["path"])
    for split in ("train", "val", "test"):
        features, target = load_split(ref["path"], split, manifest)
        assert len(features) == len(target) == manifest["splits"][split]["rows"] > 0
    files = [f"{split}.parquet" for split in manifest["splits"]] + ["manifest.json"]
    assert _objects(store) == sorted(f"{ref['version']}/{name}" for name in files)


def test_s3_endpoint_gone_for_good_fails_cleanly_and_no_partial_version_is_listed(s3_behind, monkeypatch):
    forwarder, source, store = s3_behind
    forwarder.cut_on(rb"PUT \S*/manifest\.json")  # every split uploaded, the manifest (the commit) never arrives
    state = _prepare(source)
    assert forwarder.cut.is_set() and state.is_failed()
    message = flow_run_message(state)
    assert message.startswith("Flow run encountered an exception: OSError: ") and "\n" not in message, message
    publish = task_run(state.state_details.flow_run_id, "publish-dataset-version")
    assert publish.run_count == 4 and publish.state.is_failed()

    monkeypatch.delenv("SKYTRAIN_S3_ENDPOINT_URL")  # look straight at moto's server
    orphans = _objects(store)  # the failed upload could not remove its splits: the endpoint was gone
    [version] = {key.split("/")[0] for key in orphans}
    assert {key.split("/")[1] for key in orphans} >= {"train.parquet", "val.parquet", "test.parquet"}
    assert "manifest.json" not in {key.split("/")[1] for key in orphans}
    assert versions(store, "rents") == [] and existing_version(store, "rents", version) is None
    with pytest.raises(FileNotFoundError, match="run data prep first"):
        latest_version(store, "rents")

    again = _prepare(source)  # the endpoint is back: the leftovers do not stand in the way
    assert again.is_completed() and again.result()["version"] == version
    assert versions(store, "rents") == [version]


# --- a Serve replica killed under load ------------------------------------------------------------

REQUESTS, CONCURRENCY = 20_000, 32
LOAD_TIME_LIMIT = 600  # seconds for the whole load, whatever happens
REQUEST_TIMEOUT = 30  # seconds for one answer
RETRIES = 2  # of a request answered 5xx or not at all


def _replicas(app: str) -> dict[str, int]:
    """The live replica actors of ``app``, name to PID (the State API of this session's Ray, by its
    address: another Ray may run on the machine)."""
    address = ray.get_runtime_context().gcs_address
    alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10_000)
    return {a.name: a.pid for a in alive if (a.name or "").startswith(f"SERVE_REPLICA::{app}#")}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)
    return value


async def _ask(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int | str, bytes]:
    """One POST: the status (or the client error's name) and the body; a 200 must carry one prediction."""
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as answer:
            status, content = answer.status, await answer.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"no answer ({type(error).__name__})", str(error).encode()
    if status == 200 and len(json.loads(content)["predictions"]) != 1:
        return "200 without a prediction", content
    return status, content


def _worth_retrying(status: int | str) -> bool:
    return str(status).startswith("no answer") or (isinstance(status, int) and status >= 500)


async def _load(url: str, bodies: list[bytes], on_progress) -> dict:
    """``REQUESTS`` POSTs from ``CONCURRENCY`` workers on keep-alive connections, in ``LOAD_TIME_LIMIT``.

    A request answered 5xx or not at all is sent again (``RETRIES`` times, 0.1 s then 0.2 s later), as
    Ray's production guide tells clients of Serve to: Serve does not retry a request that a replica
    had accepted when it died. Each request's latency includes its retries; the answers of first tries
    are counted apart. ``on_progress(done)`` runs after each request.
    """
    first_tries, finals = Counter(), Counter()
    latencies: list[float] = []
    first_failures: list[str] = []
    next_request = iter(range(REQUESTS))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in next_request:
            started = time.perf_counter()
            for attempt in range(RETRIES + 1):
                status, content = await _ask(session, url, bodies[i % len(bodies)])
                if attempt == 0:
                    first_tries[str(status)] += 1
                    if status != 200 and len(first_failures) < 20:
                        first_failures.append(f"request {i}: {status}: {content[:200]!r}")
                if not _worth_retrying(status) or attempt == RETRIES:
                    break
                await asyncio.sleep(0.1 * 2**attempt)
            latencies.append(time.perf_counter() - started)
            finals[str(status)] += 1
            on_progress(len(latencies))

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    started, cpu = time.perf_counter(), time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout) as session:
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(CONCURRENCY))), LOAD_TIME_LIMIT)
        except TimeoutError:
            pytest.fail(f"the load ran past {LOAD_TIME_LIMIT} s: {len(latencies)} of {REQUESTS} requests answered")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "statuses": dict(finals),
        "first_try_statuses": dict(first_tries),
        "first_try_failures": first_failures,
        "client_cpu_seconds": cpu,  # this process's: the load client's share of the machine
    }


@pytest.fixture
def two_replicas(state_dir, local_ray):
    """The CNN's application with two replicas on a free port, its champion an untrained small CNN."""
    (port,) = free_ports()
    settings = Settings(serve_port=port, serve_min_replicas=2, serve_max_replicas=2, serve_replica_cpus=0.25)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    digits, _ = small_mnist(settings, test_images=40)
    torch.manual_seed(0)
    cnn = spec_for("mnist-cnn")
    version = register(MnistCNN(width=8, depth=1).eval(), cnn, digits, {"width": 8, "depth": 1})
    mlflow.MlflowClient().set_registered_model_alias(cnn.registered_name, CHAMPION, version)
    serving.start(settings)
    try:
        url = serving.run("mnist-cnn", settings)
        _wait_for(lambda: len(_replicas("mnist-cnn")) == 2 and _answers(f"{url}/health"), 180, "two replicas")
        images, _ = load_split(digits, "test")
        yield url, [json.dumps({"inputs": image[None].tolist()}).encode() for image in images]
    finally:
        serve.shutdown()


def test_serving_keeps_answering_when_a_replica_is_killed_under_load(two_replicas, tmp_path):
    url, bodies = two_replicas
    before = _replicas("mnist-cnn")
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    assert set(before.values()) <= ours, "the replicas are not of the Ray this session started"
    victim_name, victim = sorted(before.items())[0]
    killed, replaced = threading.Event(), {}

    def replacement() -> None:  # from the kill on: when Serve has two live replicas again, without the victim
        killed.wait()
        now = _wait_for(
            lambda: (now := _replicas("mnist-cnn")) and len(now) == 2 and victim not in now.values() and now,
            300,
            "Serve to replace the killed replica",
        )
        replaced.update(replicas=now, seconds=time.monotonic() - replaced["killed_at"])

    def kill_midway(done: int) -> None:
        if done == REQUESTS // 2:
            os.kill(victim, signal.SIGKILL)
            replaced.update(killed_at=time.monotonic(), killed_after_requests=done)
            killed.set()

    watcher = threading.Thread(target=replacement, daemon=True)
    watcher.start()
    result = asyncio.run(_load(f"{url}/predict", bodies, kill_midway))
    assert killed.is_set(), "the load ended before the kill"
    watcher.join(timeout=300)
    assert "replicas" in replaced, "Serve did not replace the killed replica"
    result |= {
        "killed_replica": victim_name,
        "killed_pid": victim,
        "killed_after_requests": replaced["killed_after_requests"],
        "replicas_after": replaced["replicas"],
        "replaced_within_seconds": replaced["seconds"],
    }
    (tmp_path / "serving_under_fault.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    assert result["requests"] == REQUESTS
    assert result["statuses"] == {"200": REQUESTS}, result  # every request answered, with a prediction
    # Only requests the killed replica was working on can have failed a first time: at most those in flight.
    assert REQUESTS - result["first_try_statuses"].get("200", 0) <= CONCURRENCY, result
