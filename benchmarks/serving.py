"""Online serving: skytrain's Ray Serve application against ``mlflow models serve``, same version.

One registered CNN version (default architecture, untrained: latency does not depend on the
weights) is the champion. Each server gets the same requests, one MNIST test image per request
as ``{"inputs": [1x28x28 image]}`` (MLflow's tensor format, which both accept), from a client on
the same machine: ``concurrency`` threads, each with its own keep-alive connection, sending its
share of the requests one after another. Reported per server and concurrency: p50 and p99 latency
(ms) and requests per second over the whole run; and skytrain's figures as ratios to MLflow's.

- skytrain: ``ray_jobs.serving`` on the local Ray, one replica (autoscaling pinned to 1) with
  ``--replica-cpus``, once with the PyTorch model and once with its ONNX export on onnxruntime.
- Ray Serve's floor: a deployment that reads the body and answers a constant, no model, no
  checks, same replica resources: what Ray Serve's proxy-to-replica path costs by itself here.
- mlflow: ``mlflow models serve -m models:/<name>@champion --env-manager local``, its defaults
  (one worker process), on 127.0.0.1, started and stopped by PID here.

Goals (issue 4): p50 <= 5 ms for one image and more requests/s than the MLflow server.

    python -m benchmarks.serving            # 500 requests at concurrency 1, 2,000 at 16, per server
    python -m benchmarks.serving --quick    # 50 and 160 requests: keeps the code working (CI)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import private_state  # first: it sets the environment skytrain and Ray read

private_state.use()

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.batch_inference import register  # noqa: E402
from benchmarks.train_epoch import prepare  # noqa: E402
from ray_jobs import serving  # noqa: E402
from ray_jobs.cluster import ray_session  # noqa: E402
from ray_jobs.dataset import load_split  # noqa: E402
from ray_jobs.inference import CHAMPION  # noqa: E402
from ray_jobs.models import spec_for  # noqa: E402
from ray_jobs.ports import free_ports  # noqa: E402
from ray_jobs.settings import Settings  # noqa: E402

MODEL = "mnist-cnn"
P50_GOAL_MS = 5.0


def load(host: str, port: int, path: str, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    """``requests`` POSTs of the bodies (in turn) from ``concurrency`` threads; latencies and pace."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker(share: int, offset: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        mine, errors = [], []
        for i in range(share):
            body = bodies[(offset + i) % len(bodies)]
            started = time.perf_counter()
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            content = answer.read()
            mine.append(time.perf_counter() - started)
            if answer.status != 200:
                errors.append(f"{answer.status}: {content[:200]!r}")
        connection.close()
        with lock:
            latencies.extend(mine)
            failures.extend(errors)

    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(share, i * 997)) for i, share in enumerate(shares)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} of {requests} requests to {path} failed, e.g. {failures[0]}")
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_second": requests / seconds,
        "seconds": seconds,
    }


def measure(name: str, host: str, port: int, path: str, bodies: list[bytes], plan: dict[int, int]) -> dict:
    load(host, port, path, bodies, requests=min(50, plan[1]), concurrency=1)  # warm-up, not reported
    return {"server": name, "by_concurrency": {str(c): load(host, port, path, bodies, n, c) for c, n in plan.items()}}


def skytrain_serve(settings: Settings, runtime: str, bodies: list[bytes], plan: dict[int, int]) -> dict:
    configured = settings.model_copy(update={"inference_runtime": runtime})
    base = serving.run(MODEL, configured)  # an in-place update when the application exists
    deadline = time.monotonic() + 120
    while True:  # until the replica serving this runtime answers
        try:
            with urllib.request.urlopen(f"{base}/version", timeout=5) as answer:
                if json.loads(answer.read())["runtime"] == runtime:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {runtime} replica of {MODEL} never answered at {base}/version")
        time.sleep(0.5)
    path = f"/{MODEL}/predict"
    result = measure(f"skytrain ({runtime})", settings.serve_host, settings.serve_port, path, bodies, plan)
    return {**result, "replica_cpus": settings.serve_replica_cpus, "runtime": runtime}


@serve.deployment(max_ongoing_requests=32)  # as skytrain's replicas: Serve's default of 5 queues requests at 16
class NoOp:  # pickled by value (below): replicas need not import this module
    """Ray Serve's floor: reads the request, answers a constant."""

    async def __call__(self, request) -> dict:
        await request.body()
        return {"predictions": []}


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def serve_floor(settings: Settings, bodies: list[bytes], plan: dict[int, int]) -> dict:
    application = NoOp.options(ray_actor_options={"num_cpus": settings.serve_replica_cpus}).bind()
    # The same logging as skytrain's applications: without it the floor writes an access-log line per request.
    logging = serving.logging_config(settings)
    serve.run(application, name="floor", route_prefix="/floor", blocking=False, logging_config=logging)
    deadline = time.monotonic() + 120
    while serve.status().applications["floor"].status != "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError("Ray Serve's no-op deployment never came up")
        time.sleep(0.5)
    result = measure("ray serve no-op floor", settings.serve_host, settings.serve_port, "/floor", bodies, plan)
    serve.delete("floor")
    return result


def mlflow_serve(settings: Settings, bodies: list[bytes], plan: dict[int, int]) -> dict:
    port = free_ports()[0]
    name = spec_for(MODEL).registered_name
    command = [
        str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{name}@{CHAMPION}",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    # It execs `uvicorn` by name: this environment's bin first on the PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "PATH": path}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not come up (exit {server.poll()})") from None
                time.sleep(0.5)
        return measure("mlflow models serve", "127.0.0.1", port, "/invocations", bodies, plan)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests (CI)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, nargs="+", help="per concurrency (default 500 and 2000; quick 50, 160)")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<date>-serving.json)")
    args = parser.parse_args(argv)
    counts = args.requests or ([50, 160] if args.quick else [500, 2000])
    if len(counts) != len(args.concurrency):
        parser.error("give one --requests count per --concurrency")
    plan = dict(zip(args.concurrency, counts))

    settings = Settings(
        serve_port=free_ports()[0],
        serve_min_replicas=1,
        serve_max_replicas=1,
        serve_replica_cpus=args.replica_cpus,
    )
    dataset_dir = prepare(MODEL, 2000 if args.quick else None, settings)
    version = register(MODEL, dataset_dir, settings)
    mlflow.MlflowClient(settings.mlflow_tracking_uri).set_registered_model_alias(
        spec_for(MODEL).registered_name, CHAMPION, version
    )
    images, _ = load_split(dataset_dir, "test")
    bodies = [json.dumps({"inputs": image[None].tolist()}).encode() for image in images[:100]]

    servers = []
    with ray_session():
        cpus = int(ray.cluster_resources().get("CPU", 1))
        serving.start(settings)
        try:
            floor = serve_floor(settings, bodies, plan)
            print(format_server(floor), flush=True)
            for runtime in args.runtimes:
                servers.append(skytrain_serve(settings, runtime, bodies, plan))
                print(format_server(servers[-1]), flush=True)
        finally:
            serve.shutdown()
    servers.append(mlflow_serve(settings, bodies, plan))
    print(format_server(servers[-1]), flush=True)

    baseline = servers[-1]["by_concurrency"]
    for server in servers[:-1]:
        for level, figures in server["by_concurrency"].items():
            figures["rps_ratio_to_mlflow"] = figures["requests_per_second"] / baseline[level]["requests_per_second"]
            figures["p50_ratio_to_mlflow"] = figures["p50_ms"] / baseline[level]["p50_ms"]
            figures["p50_goal_met"] = figures["p50_ms"] <= P50_GOAL_MS
            figures["more_rps_than_mlflow"] = figures["rps_ratio_to_mlflow"] > 1
            verdict = "meets" if figures["p50_goal_met"] else "misses"
            print(
                f"{server['server']} at concurrency {level}: {figures['rps_ratio_to_mlflow']:.2f}x MLflow's "
                f"requests/s, p50 {figures['p50_ms']:.1f} ms ({verdict} <= {P50_GOAL_MS} ms)"
            )
    for level, figures in floor["by_concurrency"].items():
        figures["p50_ratio_to_mlflow"] = figures["p50_ms"] / baseline[level]["p50_ms"]
    result = {
        "model": MODEL,
        "model_version": version,
        "images_per_request": 1,
        "servers": servers,
        "ray_serve_floor": floor,
    }
    targets = {"p50_ms": f"<= {P50_GOAL_MS}", "requests_per_second": "> mlflow models serve"}
    report.write("serving", args.quick, cpus, targets, [result], args.output)


def format_server(server: dict) -> str:
    levels = ", ".join(
        f"c={level}: p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, {f['requests_per_second']:,.0f} req/s"
        for level, f in server["by_concurrency"].items()
    )
    return f"{server['server']}: {levels}"


if __name__ == "__main__":
    main()
