"""ONNX: every registered version's export, checked against PyTorch, and onnxruntime sessions on it.

The export is ``torch.onnx.export(dynamo=True)`` (the supported, torch.export-based exporter) with a
dynamic batch axis. Before a version is registered its export runs on held-out rows next to the
PyTorch model and must agree elementwise within ``|onnx - torch| <= ATOL + RTOL * |torch|``; a
disagreement stops the registration. The file and the check's figures are logged to the training
run under ``onnx/`` and named on the version's ``skytrain.onnx.*`` tags.

Inference picks execution providers in order of preference from those onnxruntime offers here:
TensorRT, then CUDA (both only with ``onnxruntime-gpu`` on a GPU host), then the CPU.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

ARTIFACT_DIR = "onnx"
MODEL_FILE = "model.onnx"
ARTIFACT_PATH = f"{ARTIFACT_DIR}/{MODEL_FILE}"
RTOL, ATOL = 1e-4, 1e-4
OPSET = 18
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxExportError(RuntimeError):
    """The model could not be exported, or its export disagrees with PyTorch: nothing was registered."""


def export(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    """Write ``model`` as ONNX to ``path``, input ``input`` with a dynamic batch axis, output ``output``."""
    import torch

    # The exporter's chatter: its progress lines, and one warning per torchvision op it cannot find.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            model,
            (torch.from_numpy(np.ascontiguousarray(example[:2])),),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path))


def providers(requested: list[str] | None = None) -> list[str]:
    """Execution providers to use: ``requested`` (all must be available), else the preferred available."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if requested:
        missing = [name for name in requested if name not in available]
        if missing:
            raise ValueError(
                f"SKYTRAIN_ONNX_PROVIDERS: {missing} not available in this onnxruntime (it has {available}); "
                "the CUDA and TensorRT providers come with the onnxruntime-gpu package"
            )
        return list(requested)
    return [name for name in PREFERRED_PROVIDERS if name in available]


def session(model: str | Path | bytes, threads: int = 1, requested: list[str] | None = None, *, spin: bool = True):
    """An onnxruntime session on the file (or its bytes), ``threads`` intra-op threads on the CPU.

    ``spin=False``: the intra-op threads sleep between the model's calls instead of spinning for
    the next one (onnxruntime's default, the lowest latency), leaving the cores to other work.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, sess_options=options, providers=providers(requested))


def compare(path: Path, model: torch.nn.Module, rows: np.ndarray) -> dict[str, Any]:
    """Run the export and the model on ``rows``: the largest differences and whether they are in tolerance."""
    import torch

    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(np.ascontiguousarray(rows))).numpy()
    predictor = OnnxPredictor(path)
    actual = predictor.predict(rows)
    difference = np.abs(actual.astype(np.float64) - expected)
    allowed = ATOL + RTOL * np.abs(expected)
    return {
        "rows": int(len(rows)),
        "rtol": RTOL,
        "atol": ATOL,
        "max_abs_diff": float(difference.max()),
        "max_excess": float((difference - allowed).max()),  # <= 0: within tolerance everywhere
        "passed": bool((difference <= allowed).all()),
        "opset": OPSET,
        "onnxruntime_providers": predictor.providers,
    }


def export_and_log(model: torch.nn.Module, example: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """Export, check on ``rows`` and log both to the active run; the check's figures.

    Raises ``OnnxExportError`` when the export fails or disagrees with PyTorch beyond the tolerance.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="skytrain-onnx-") as directory:
        path = Path(directory) / MODEL_FILE
        try:
            export(model, example, path)
        except Exception as error:  # the exporter raises many kinds; all mean "no export"
            first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()[0]
            raise OnnxExportError(f"ONNX export failed: {type(error).__name__}: {first_line}") from error
        check = compare(path, model, rows)
        if not check["passed"]:
            raise OnnxExportError(
                f"the ONNX export disagrees with PyTorch on {check['rows']} rows: max |difference| "
                f"{check['max_abs_diff']:.3g} exceeds atol {ATOL:g} + rtol {RTOL:g} x |value|"
            )
        (Path(directory) / "check.json").write_text(json.dumps(check, indent=2))
        mlflow.log_artifacts(directory, ARTIFACT_DIR)
    return check


def version_tags(check: dict[str, Any]) -> dict[str, str]:
    """What a registered version says about its export."""
    return {
        "skytrain.onnx": ARTIFACT_PATH,
        "skytrain.onnx.max_abs_diff": f"{check['max_abs_diff']:.3g}",
        "skytrain.onnx.tolerance": f"atol {ATOL:g} + rtol {RTOL:g} x |value| on {check['rows']} test rows",
    }


class OnnxPredictor:
    """A model version's ONNX export under onnxruntime: float32 rows in, the model's output out.

    Needs onnxruntime only (this module imports MLflow and PyTorch where it exports or downloads):
    batch inference's actors build one from the export's bytes.
    """

    def __init__(
        self, model: str | Path | bytes, threads: int = 1, requested: list[str] | None = None, *, spin: bool = True
    ) -> None:
        self.session = session(model, threads, requested, spin=spin)
        self.input = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(rows, dtype=np.float32)})[0]

    @classmethod
    def of_run(cls, run_id: str, tracking_uri: str, threads: int = 1, requested: list[str] | None = None):
        """The export logged to training run ``run_id``."""
        return cls(export_bytes(run_id, tracking_uri), threads, requested)  # the session holds the model


def export_bytes(run_id: str, tracking_uri: str) -> bytes:
    """The ONNX export logged to training run ``run_id``, read through a temporary file."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="skytrain-onnx-") as directory:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ARTIFACT_PATH, dst_path=directory, tracking_uri=tracking_uri
            )
        except Exception as error:
            raise FileNotFoundError(
                f"run {run_id} has no ONNX export ({ARTIFACT_PATH}); it was registered before skytrain "
                "exported ONNX: set SKYTRAIN_INFERENCE_RUNTIME=torch or register a new version"
            ) from error
        return Path(path).read_bytes()
