"""Online serving on Ray Serve: one application per model, answering with its ``champion``.

Each model is an application at ``/<model>`` (``/mnist-cnn``, ``/diamonds-regressor``):

- ``POST /<model>/predict``: ``{"inputs": [row, ...]}``, each row shaped as the version's signature
  says (``ray_jobs/payload.py``); answers the predictions with the model version that made them.
  A bad body gets a 4xx naming the field and the rule; the body size and rows per request are capped.
- ``GET /<model>/health``: 200 when a version is loaded, 503 before any version was promoted.
- ``GET /<model>/version``: the version served, its run, dataset version and runtime.

Every replica looks up where ``champion`` points every ``serve_poll_seconds``. When it moved, the
replica loads the new version beside the old one and swaps them in one assignment: a request in
flight finishes on the version it started with, the next one gets the new version; nothing is
dropped, and each answer names the version that made it. Replicas autoscale between
``serve_min_replicas`` and ``serve_max_replicas`` on requests in flight; ``serve_replica_gpus`` > 0
puts each replica's model on a GPU. ``SKYTRAIN_INFERENCE_RUNTIME=onnx`` serves the ONNX export.

``python -m ray_jobs.serving`` (``make serve``) serves both models on 127.0.0.1:8000 from the local
Ray (or ``SKYTRAIN_RAY_ADDRESS``'s) until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ray_jobs import payload, replica_grpc
from ray_jobs.cluster import ray_session, started_local_ray
from ray_jobs.inference import CHAMPION, load_predictor, training_manifest
from ray_jobs.models import SPECS, spec_for
from ray_jobs.scoring import Scoring, outputs
from ray_jobs.settings import Settings

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Served:
    """One loaded version: what answers requests until the next swap."""

    scoring: Scoring
    predict: Any  # rows -> output tensor
    row_shape: tuple[int, ...]  # one row's shape, from the version's signature
    dataset_version: str
    loaded_at: float

    @property
    def version(self) -> str:
        return self.scoring.model_version


def signature_row_shape(model_uri: str) -> tuple[int, ...]:
    """The shape of one input row according to the version's MLflow signature (batch axis dropped)."""
    signature = mlflow.models.get_model_info(model_uri).signature
    if signature is None or not signature.inputs.inputs or signature.inputs.inputs[0].shape is None:
        raise ValueError(f"{model_uri}: no tensor input signature; serving checks requests against it")
    return tuple(int(n) for n in signature.inputs.inputs[0].shape[1:])


def load(model: str, version: str, settings: Settings, device: str) -> Served:
    spec = spec_for(model)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    chosen = client.get_model_version(spec.registered_name, version)
    dataset_version, manifest = training_manifest(chosen, spec.dataset, settings.data_store)
    scoring = Scoring.of(
        spec.registered_name,
        version,
        manifest,
        settings.mlflow_tracking_uri,
        settings.inference_runtime,
        settings.onnx_providers,
    )
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    row_shape = signature_row_shape(scoring.model_uri)
    predict = load_predictor(scoring, threads=1, device=device)
    predict(np.zeros((1, *row_shape), np.float32))  # the first call pays one-off costs, not a user's request
    return Served(scoring, predict, row_shape, dataset_version, time.time())


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


@serve.deployment(max_ongoing_requests=32, health_check_period_s=10, graceful_shutdown_timeout_s=20)
class ModelServer:
    """A replica: the champion of one model, re-resolved every ``serve_poll_seconds``."""

    def __init__(self, model: str, settings: Settings) -> None:
        replica_grpc.bind_to_node_address()  # before Serve binds it, once this constructor returns
        torch.set_num_threads(1)
        self.model, self.settings = model, settings
        self.name = spec_for(model).registered_name
        self.client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
        self.device = "cuda" if settings.serve_replica_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.served: Served | None = None
        self.last_error: str | None = None
        self._refresh_or_say_why()  # the replica takes traffic once it has its champion, or knows why not
        self.stopping = threading.Event()
        self.poller = threading.Thread(target=self._poll, name="champion-poller", daemon=True)
        self.poller.start()

    def refresh(self) -> None:
        """Load the version ``champion`` points at, if it is not the one served; then swap."""
        try:
            version = str(self.client.get_model_version_by_alias(self.name, CHAMPION).version)
        except MlflowException:
            self.last_error = f"{self.name} has no '{CHAMPION}' yet: promote a version"
            return
        if self.served is not None and self.served.version == version:
            return
        served = load(self.model, version, self.settings, self.device)
        before, self.served, self.last_error = self.served, served, None
        logger.info("%s: serving v%s (was %s)", self.name, version, before.version if before else "none")

    def _refresh_or_say_why(self) -> None:
        """``refresh``; a version that fails to load leaves the loaded one (if any) serving, and the
        reason in ``last_error`` (503's message before any version loaded; ``/version`` after)."""
        try:
            self.refresh()
        except Exception as error:
            self.last_error = f"could not load the champion: {type(error).__name__}: {error}"
            logger.exception("%s: %s", self.name, self.last_error)

    def _poll(self) -> None:
        while not self.stopping.wait(self.settings.serve_poll_seconds):
            self._refresh_or_say_why()

    def check_health(self) -> None:
        """Serve's health check: a replica whose poller died would serve a stale version forever."""
        if not self.poller.is_alive():
            raise RuntimeError("the champion poller stopped")

    def __del__(self) -> None:
        if hasattr(self, "stopping"):
            self.stopping.set()

    def _unavailable(self) -> JSONResponse:
        return _error(503, self.last_error or "no model loaded", model=self.name)

    async def __call__(self, request: Request) -> JSONResponse:
        """The three routes, dispatched here: Serve's FastAPI ingress cost 3-5 ms per request on the
        project's 2-core machine (a plain deployment against an ingress one, both answering a constant)."""
        route = request.url.path.removeprefix(request.scope.get("root_path", "")).strip("/")
        methods = {"predict": "POST", "health": "GET", "version": "GET"}
        if route not in methods:
            return _error(404, f"no route '/{route}': use POST /predict, GET /health or GET /version")
        if request.method != methods[route]:
            return _error(405, f"/{route} takes {methods[route]}, not {request.method}")
        if route == "predict":
            return await self.predict(request)
        return self.health() if route == "health" else self.version()

    async def predict(self, request: Request) -> JSONResponse:
        served = self.served  # this request's version, whatever swaps meanwhile
        if served is None:
            return self._unavailable()
        limit = self.settings.serve_max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _error(413, f"field 'body' breaks rule 'at most {limit} bytes': got {declared}", field="body")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"field 'body' breaks rule 'at most {limit} bytes'", field="body")
        try:
            rows = payload.parse(bytes(body), served.row_shape, self.settings.serve_max_rows, limit)
        except payload.PayloadError as error:
            return _error(error.status, str(error), field=error.field, rule=error.rule)
        # A few rows score in well under a millisecond: on the loop, without a thread's hand-offs.
        # More would hold the loop (and every other request) for longer: they go to a thread.
        if len(rows) <= self.settings.serve_inline_rows:
            output = served.predict(rows)
        else:
            output = await asyncio.to_thread(served.predict, rows)
        table = outputs(output, np.full(len(rows), None, dtype=object), served.scoring).drop_columns(["reason"])
        return JSONResponse(
            {
                "model": self.name,
                "version": served.version,
                "runtime": served.scoring.runtime,
                "predictions": table.to_pylist(),
            }
        )

    def health(self) -> JSONResponse:
        served = self.served
        if served is None:
            return self._unavailable()
        return JSONResponse({"status": "ok", "model": self.name, "version": served.version})

    def version(self) -> JSONResponse:
        served = self.served
        if served is None:
            return self._unavailable()
        return JSONResponse(
            {
                "model": self.name,
                "version": served.version,
                "alias": CHAMPION,
                "model_uri": served.scoring.model_uri,
                "run_id": served.scoring.run_id,
                "dataset_version": served.dataset_version,
                "runtime": served.scoring.runtime,
                "device": self.device,
                "input_shape": [-1, *served.row_shape],
                "loaded_at": served.loaded_at,
                "last_error": self.last_error,
            }
        )


def application(model: str, settings: Settings) -> serve.Application:
    """The Serve application of one model, with the replica resources and autoscaling of ``settings``."""
    spec_for(model)  # an unknown model fails here, not in a replica
    return ModelServer.options(
        name=model,
        autoscaling_config={
            "min_replicas": settings.serve_min_replicas,
            "initial_replicas": max(1, settings.serve_min_replicas),
            "max_replicas": settings.serve_max_replicas,
            "target_ongoing_requests": settings.serve_target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": settings.serve_replica_cpus, "num_gpus": settings.serve_replica_gpus},
    ).bind(model, settings)


def logging_config(settings: Settings) -> dict[str, Any]:
    # No access log line per request: at these latencies writing it is a noticeable part of the cost.
    return {"enable_access_log": False, "log_level": settings.ray_log_level}


def start(settings: Settings) -> None:
    """Start Serve taking HTTP on ``serve_host:serve_port``: through HAProxy on a local Ray
    (``ray_jobs/serve_ingress.py``), through Serve's proxy where the Ray runs without it."""
    serve.start(
        http_options={"host": settings.serve_host, "port": settings.serve_port}, logging_config=logging_config(settings)
    )


def answers(url: str) -> bool:
    """Whether the application itself answers ``GET <url>/version`` (200, or 503 before a champion):
    not the front's own error page while it is still being pointed at a new replica."""
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=5) as answer:
            body = answer.read()
    except urllib.error.HTTPError as error:
        body = error.read()
    except OSError:
        return False
    try:
        return isinstance(decoded := json.loads(body), dict) and "model" in decoded
    except ValueError:
        return False


def run(model: str, settings: Settings, timeout: float = 120) -> str:
    """Deploy (or update in place) the application of ``model`` at ``/<model>``; its base URL. On the
    local Ray this process started, once the application answers there (a cluster's serving address
    need not be reachable from here)."""
    serve.run(
        application(model, settings),
        name=model,
        route_prefix=f"/{model}",
        blocking=False,
        logging_config=logging_config(settings),
    )
    host = "127.0.0.1" if settings.serve_host in ("0.0.0.0", "::") else settings.serve_host
    url = f"http://{host}:{settings.serve_port}/{model}"
    deadline = time.monotonic() + timeout
    while started_local_ray() and not answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the application of {model} was deployed but never answered at {url}/version")
        time.sleep(0.1)
    return url


def deploy(models: list[str], settings: Settings) -> dict[str, str]:
    """Start Serve and deploy each model; their base URLs."""
    start(settings)
    return {model: run(model, settings) for model in models}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the champions of skytrain's models on Ray Serve.")
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    args = parser.parse_args()
    settings = Settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ray_session(settings.ray_address):
        urls = deploy(args.models, settings)
        for model, url in urls.items():
            print(f"{model}: POST {url}/predict   GET {url}/health   GET {url}/version", flush=True)
        print("serving until interrupted (Ctrl-C)", flush=True)
        stop.wait()
        if not settings.ray_address:  # on a cluster the applications stay up: `serve shutdown` ends them
            serve.shutdown()


if __name__ == "__main__":
    main()
