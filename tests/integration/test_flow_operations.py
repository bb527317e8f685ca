"""Operating the flows on a real Prefect API: parameters refused before work (by the flow and by the
server for a deployment), retries only for transient I/O errors, data prep cached across
processes, retrain's artifacts and its one-line failure message. No Ray, no training: every path
here fails fast or stops at data prep on a few hundred rows."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.exceptions import ParameterTypeError, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL

import flows.data_prep
import flows.registry
from flows import reporting
from flows.data_prep import prepare_data
from flows.datasets.validation import DataValidationError
from flows.operations import StepFailed
from flows.retrain import retrain
from ray_jobs.settings import Settings
from tests.servers import free_ports

pytestmark = pytest.mark.usefixtures("prefect_api")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _flow_run(state):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def _artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


# --- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "named", "rule"),
    [
        (lambda: retrain(epochs=0, return_state=True), "epochs", "greater than or equal to 1"),
        (lambda: retrain(models=["resnet"], return_state=True), "models.0", "'mnist-cnn' or 'diamonds-regressor'"),
        (lambda: prepare_data(datasets=["cifar"], return_state=True), "datasets.0", "'mnist' or 'diamonds'"),
    ],
)
def test_a_bad_parameter_fails_the_run_before_any_work(state_dir, call, named, rule):
    state = call()
    assert state.is_failed()
    message = _flow_run(state).state.message
    assert "invalid parameters" in message and f"{named}: " in message and rule in message, message
    with pytest.raises(ParameterTypeError):
        state.result()
    assert not (state_dir / "datasets").exists()


def test_a_deployment_refuses_bad_parameters_before_a_run_is_created(state_dir):
    """As ``prefect deploy`` does: the schema comes from the flow's signature, and is enforced."""
    deployment_id = retrain.to_deployment(name="parameter-schema-check").apply()
    with get_client(sync_client=True) as client:
        bad = {"epochs": 0, "num_workers": -1}
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment_id, parameters=bad)
        assert refused.value.response.status_code == 409
        detail = refused.value.response.json()["detail"]
        assert "epochs" in detail or "num_workers" in detail, detail
        for bad in ({"models": ["resnet"]}, {"hparams": {"mnist-cnn": {"widht": 8}}}, {"seed": -1}):
            with pytest.raises(PrefectHTTPStatusError, match="409"):
                client.create_flow_run_from_deployment(deployment_id, parameters=bad)
        good = {"models": ["diamonds-regressor"], "epochs": 2, "hparams": {"diamonds-regressor": {"arch": "linear"}}}
        run = client.create_flow_run_from_deployment(deployment_id, parameters=good)
        assert run.parameters == good
        client.delete_flow_run(run.id)  # nothing would run it: no worker here
        client.delete_deployment(deployment_id)


# --- retries -----------------------------------------------------------------------------------


def _failing_then(error: BaseException, result, calls: list):
    """A stand-in that raises ``error`` on its first call, then returns ``result``."""

    def stand_in(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return result

    return stand_in


@flow
def _hash(path: Path) -> str:
    return flows.data_prep.hash_source.with_options(retry_delay_seconds=0)(str(path))


@flow
def _read_version(uri: str) -> object:
    return flows.registry.read_version.with_options(retry_delay_seconds=0)(uri, "skytrain-mnist-cnn", "1")


def test_transient_io_errors_are_retried_bad_input_is_not(tmp_path, monkeypatch):
    source = tmp_path / "source.csv"
    source.write_text("a,b\n1,2\n")
    calls: list = []
    monkeypatch.setattr(flows.data_prep.sources, "sha256", _failing_then(OSError(errno.EIO, "I/O error"), "abc", calls))
    assert _hash(source) == "abc" and len(calls) == 2  # retried once, then fine

    calls.clear()
    bad = DataValidationError(source, "file", "readable", "bad bytes")
    monkeypatch.setattr(flows.data_prep.sources, "sha256", _failing_then(bad, "abc", calls))
    with pytest.raises(DataValidationError, match="breaks rule 'readable'"):
        _hash(source)
    assert len(calls) == 1  # bad input: never retried

    class Client:
        def __init__(self, get_model_version):
            self.get_model_version = get_model_version

    calls.clear()
    busy = MlflowException("try again", error_code=TEMPORARILY_UNAVAILABLE)
    monkeypatch.setattr(flows.registry, "_client", lambda uri: Client(_failing_then(busy, "v1", calls)))
    assert _read_version("sqlite:///unused.db") == "v1" and len(calls) == 2

    calls.clear()
    missing = MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST)
    monkeypatch.setattr(flows.registry, "_client", lambda uri: Client(_failing_then(missing, "v1", calls)))
    with pytest.raises(MlflowException, match="no such version"):
        _read_version("sqlite:///unused.db")
    assert len(calls) == 1


# --- data prep caching -------------------------------------------------------------------------


def test_data_prep_is_cached_across_processes_and_rebuilt_once_deleted(state_dir):
    first = prepare_data(datasets=["diamonds"], limit_rows=300)["diamonds"]
    assert first["reused"] is False and Path(first["path"]).is_dir()

    # A new process (same Prefect API and result storage) gets the build from Prefect's cache.
    script = (
        "import json; from flows.data_prep import prepare_diamonds; print(json.dumps(prepare_diamonds(limit_rows=300)))"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SKYTRAIN_STATE_DIR": str(state_dir)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {**first, "reused": True}
    assert f"diamonds version {first['version']}: cached result of an earlier run" in done.stderr

    # A deleted version is never returned from the cache: it is rebuilt, in place.
    shutil.rmtree(first["path"])
    again = prepare_data(datasets=["diamonds"], limit_rows=300)["diamonds"]
    assert again == first and (Path(again["path"]) / "manifest.json").is_file()


# --- retrain: the failure message and the artifacts --------------------------------------------


def test_a_failed_retrain_says_which_step_failed_in_one_line(state_dir, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "diamonds.csv"
    monkeypatch.setenv("SKYTRAIN_DIAMONDS_SOURCE", str(missing))
    state = retrain(models=["diamonds-regressor"], epochs=1, limit_rows=100, return_state=True)
    expected = (
        f"prepare diamonds failed: DataValidationError: {missing}: field 'file' breaks rule 'exists': no such file"
    )
    assert state.is_failed() and state.message == expected
    assert _flow_run(state).state.message == expected  # what the Prefect UI shows
    with pytest.raises(StepFailed) as raised:
        state.result()
    assert str(raised.value) == expected and isinstance(raised.value.__cause__, DataValidationError)
    failure = _artifacts(state.state_details.flow_run_id)["retrain-failure"]
    assert "prepare diamonds" in failure.data and "no such file" in failure.data


def test_a_training_failure_names_the_model(state_dir, monkeypatch):
    (port,) = free_ports()  # nothing listens there: the Ray Jobs API is unreachable
    monkeypatch.setenv("SKYTRAIN_RAY_JOBS_ADDRESS", f"http://127.0.0.1:{port}")
    state = retrain(models=["diamonds-regressor"], epochs=1, limit_rows=100, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("train diamonds-regressor failed: ") and "\n" not in state.message
    assert str(port) in state.message
    # Data prep had finished: its artifact is there beside the failure.
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"retrain-datasets", "retrain-failure"} <= set(artifacts)


@flow
def _report(datasets: dict, trained: dict, gates: dict) -> None:
    urls = reporting.publish_training(trained, Settings())
    reporting.publish_datasets(datasets)
    reporting.publish_gates(gates, urls)


def test_retrain_artifacts_tables_and_mlflow_links(state_dir, monkeypatch):
    monkeypatch.setenv("SKYTRAIN_MLFLOW_UI_URL", "http://mlflow.test:5000")
    client = mlflow.MlflowClient(Settings().mlflow_tracking_uri)  # the state directory's store
    client.create_experiment("first")  # so that the run's experiment id is not the default's
    experiment_id = client.create_experiment("skytrain-links")
    run_id = client.create_run(experiment_id).info.run_id
    datasets = {"diamonds": {"dataset": "diamonds", "version": "abc123", "path": "/d/abc123", "reused": True}}
    trained = {
        "diamonds-regressor": {
            "registered_model": "skytrain-diamonds-regressor",
            "version": "4",
            "run_id": run_id,
            "run_name": "diamonds-regressor-abc123",
            "dataset": "diamonds",
            "dataset_version": "abc123",
            "best_epoch": 2,
            "metrics": {"test_rmse": 0.123456, "test_r2": 0.98},
        }
    }
    gates = {
        "diamonds-regressor": {
            "challenger_version": "4",
            "promote": False,
            "champion_version": "3",
            "champion_version_before": "3",
            "metric": "rmse",
            "challenger_score": 0.1235,
            "champion_score": 0.12,
            "reason": "challenger rmse=0.1235 vs champion rmse=0.12: not better by more than the margin",
        }
    }
    state = _report(datasets, trained, gates, return_state=True)
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"retrain-datasets", "retrain-metrics", "retrain-gate"} <= set(artifacts)
    assert artifacts["mlflow-run-diamonds-regressor"].data.startswith(
        f"[MLflow run diamonds-regressor-abc123](http://mlflow.test:5000/#/experiments/{experiment_id}/runs/{run_id})"
    )
    assert "(http://mlflow.test:5000/#/models/skytrain-diamonds-regressor/versions/4)" in (
        artifacts["mlflow-model-diamonds-regressor"].data
    )
    metrics = json.loads(artifacts["retrain-metrics"].data)
    assert metrics[0]["rmse"] == "0.1235" and metrics[0]["version"] == "4" and metrics[0]["run_id"] == run_id
    gate = artifacts["retrain-gate"].data
    assert "**rejected**" in gate and "not better by more than the margin" in gate and "versions/4" in gate
