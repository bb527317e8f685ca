"""No loading path of skytrain unpickles code from a model version by default.

skytrain logs models as ``torch.export`` archives (``data/model.pt2``: a graph and tensors), and
importing skytrain sets ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` (``ray_jobs/__init__.py``) so
that MLflow checks every record of an archive with torch's ``weights_only`` unpickler before
``torch.export.load`` opens it, and refuses a pickled module outright. MLflow's own default is to
allow both: ``torch.export.load`` falls back to a full unpickle of the archive's sample inputs.

The tampered version here carries a pickle that creates a file when unpickled; each loading path
(the promotion gate, the retrain pipeline's smoke inference, rollback's load check, and the torch
runtime of batch inference and serving) must refuse it without creating the file, and the same
archive loaded with MLflow's default must create it (so the refusals were of a real payload). The
ONNX runtime reads the version's ``onnx/model.onnx`` (protobuf) with onnxruntime: no pickle at all.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from flows.policy import policy_for
from flows.promote import check_and_score
from flows.registry import CHAMPION
from flows.retrain import smoke_inference
from flows.rollback import load_check
from ray_jobs.dataset import read_manifest
from ray_jobs.inference import load_predictor
from ray_jobs.models import spec_for
from ray_jobs.scoring import Scoring
from ray_jobs.settings import Settings
from ray_jobs.tracking import PIP_REQUIREMENTS
from tests.registered import least_squares, register, small_diamonds

REPO = Path(__file__).resolve().parents[2]
MODEL = "diamonds-regressor"
SPEC = spec_for(MODEL)
FLAG = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class Armed:
    """Unpickled, it creates ``marker``: what a malicious payload would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def arm(model_dir: Path, marker: Path) -> None:
    """Replace the archive's sample inputs (every torch.export archive has them) with ``Armed``."""
    payload = io.BytesIO()
    torch.save(Armed(marker), payload)
    archive = model_dir / "data" / "model.pt2"
    with zipfile.ZipFile(archive) as z:
        records = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for info, data in records:
            z.writestr(info, payload.getvalue() if info.filename.endswith("/sample_inputs/model.pt") else data)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A version skytrain registered, and a tampered copy of it registered as the next version."""
    root = tmp_path_factory.mktemp("model-loading")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_STATE_DIR", str(root / "state"))
        settings = Settings()
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        gems = small_diamonds(settings, rows=500)
        good = register(least_squares(gems), SPEC, gems, {"arch": "linear", "hidden": 0})
        client = mlflow.MlflowClient()
        source = client.get_model_version_download_uri(SPEC.registered_name, good)
        model_dir = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(root / "downloaded")))
        marker = root / "payload-ran"
        arm(model_dir, marker)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(model_dir), "model")
        tampered = mlflow.register_model(f"runs:/{run.info.run_id}/model", SPEC.registered_name).version
        for key, value in client.get_model_version(SPEC.registered_name, good).tags.items():
            client.set_model_version_tag(SPEC.registered_name, str(tampered), key, value)
        yield {"settings": settings, "gems": gems, "good": good, "tampered": str(tampered), "marker": marker}


def test_importing_skytrain_turns_mlflow_pickle_loading_off_unless_set():
    probe = f"import os, ray_jobs; print(os.environ['{FLAG}'])"
    env = {k: v for k, v in os.environ.items() if k != FLAG}
    for preset, expected in ((None, "false"), ("true", "true")):
        run_env = env if preset is None else {**env, FLAG: preset}
        out = subprocess.run([sys.executable, "-c", probe], env=run_env, cwd=REPO, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr
    assert os.environ[FLAG] == "false", "this test session loads models with MLflow's pickle loading on"


def test_registered_versions_are_torch_export_archives_and_load_with_pickle_off(registry):
    client = mlflow.MlflowClient()
    source = client.get_model_version_download_uri(SPEC.registered_name, registry["good"])
    files = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(f"{source}/data")}
    assert files == {"model.pt2"}, files  # no model.pth (a pickled module), no pickle_module_info.txt
    manifest = read_manifest(registry["gems"])
    checks, value = check_and_score.fn(
        SPEC.registered_name, registry["good"], str(registry["gems"]), policy_for(MODEL, registry["settings"])
    )
    assert checks[0].passed and value is not None, checks
    scoring = Scoring.of(SPEC.registered_name, registry["good"], manifest, registry["settings"].mlflow_tracking_uri)
    rows = np.zeros((3, *manifest["feature_shape"]), np.float32)
    assert load_predictor(scoring)(rows).shape[0] == 3


def test_a_tampered_version_is_refused_by_every_loading_path_before_its_payload_runs(registry):
    name, version, marker = SPEC.registered_name, registry["tampered"], registry["marker"]
    settings, manifest = registry["settings"], read_manifest(registry["gems"])
    refusal = "Deserializing model using pickle is disallowed"

    checks, value = check_and_score.fn(name, version, str(registry["gems"]), policy_for(MODEL, settings))
    assert [c.name for c in checks] == ["loads"] and not checks[0].passed and refusal in checks[0].detail, checks
    with pytest.raises(MlflowException, match=refusal):
        load_check.fn(settings.mlflow_tracking_uri, name, version)
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    with pytest.raises(MlflowException, match=refusal):
        smoke_inference.fn(MODEL, str(registry["gems"]))
    with pytest.raises(MlflowException, match=refusal):  # batch inference's and serving's torch runtime
        load_predictor(Scoring.of(name, version, manifest, settings.mlflow_tracking_uri, "torch"))
    assert not marker.exists(), "a loading path unpickled the payload"

    # The same version with MLflow's default: the payload runs (what the refusals prevented).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FLAG, "true")
        with pytest.raises(Exception):  # noqa: B017 (the payload is no tensor: loading fails after it ran)
            mlflow.pytorch.load_model(f"models:/{name}/{version}")
    assert marker.exists()


def test_a_version_saved_as_a_pickled_module_is_refused(registry, tmp_path):
    """MLflow's pickle format (its default on Databricks, and older versions'): never loaded by default."""
    path = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        least_squares(registry["gems"]), str(path), serialization_format="pickle", pip_requirements=PIP_REQUIREMENTS
    )
    assert (path / "data" / "model.pth").is_file()
    scoring = Scoring(SPEC.registered_name, "0", str(path), registry["settings"].mlflow_tracking_uri, {})
    with pytest.raises(MlflowException, match="Deserializing model using pickle is disallowed"):
        load_predictor(scoring)
