"""The flows' parameters as the Prefect UI and API see them: schemas, validation, error messages.

Everything here is pure (no Prefect API, no run): ``parameter_schema`` is what ``prefect deploy``
stores for a deployment, ``Flow.validate_parameters`` is what runs before a flow body, and
Prefect's own JSON-schema ``validate`` is what the server applies to a deployment's run.
"""

from __future__ import annotations

import errno
import re

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate

from flows.batch_inference import batch_inference
from flows.data_prep import prepare_data, prepare_diamonds, prepare_mnist, prepare_tabular
from flows.datasets.validation import DataValidationError
from flows.operations import StepFailed, is_transient, step
from flows.parameters import HYPERPARAMETERS, overrides_by_model, overrides_of
from flows.promote import promote
from flows.reporting import model_version_url, run_url
from flows.retrain import retrain
from flows.rollback import rollback
from flows.train import train
from flows.tune import tune
from ray_jobs.models import SPECS
from ray_jobs.settings import Settings

FLOWS = {
    "retrain": retrain,
    "prepare-data": prepare_data,
    "prepare-mnist": prepare_mnist,
    "prepare-diamonds": prepare_diamonds,
    "prepare-tabular": prepare_tabular,
    "train": train,
    "promote": promote,
    "rollback": rollback,
    "batch-inference": batch_inference,
    "tune": tune,
}


def schema(flow) -> dict:
    return parameter_schema(flow.fn).model_dump_for_openapi()


def test_flow_names_and_entrypoints_stay_as_deployed():
    assert {name: f.fn.__name__ for name, f in FLOWS.items()} == {
        "retrain": "retrain",
        "prepare-data": "prepare_data",
        "prepare-mnist": "prepare_mnist",
        "prepare-diamonds": "prepare_diamonds",
        "prepare-tabular": "prepare_tabular",
        "train": "train",
        "promote": "promote",
        "rollback": "rollback",
        "batch-inference": "batch_inference",
        "tune": "tune",
    }
    assert all(f.name == name for name, f in FLOWS.items())


@pytest.mark.parametrize("name", FLOWS)
def test_every_parameter_has_a_type_and_a_description(name):
    properties = schema(FLOWS[name])["properties"]
    assert properties
    for parameter, spec in properties.items():
        assert spec.get("description"), f"{name}.{parameter} has no description"
        # The UI renders descriptions as Markdown: a <placeholder> would vanish as an HTML tag.
        assert not re.search(r"<[^>]*>", spec["description"]), f"{name}.{parameter}: <...> in its description"
        assert "type" in spec or "anyOf" in spec or "$ref" in spec, f"{name}.{parameter} has no type"


def _choices(spec: dict) -> list:
    options = spec.get("anyOf", [spec])
    return next(o["enum"] for o in options if "enum" in o)


def _bounds(spec: dict) -> dict:
    options = spec.get("anyOf", [spec])
    typed = next(o for o in options if o.get("type") in ("integer", "number"))
    return {k: typed[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in typed}


def test_retrain_schema_renders_choices_bounds_and_defaults():
    s = schema(retrain)
    p = s["properties"]
    assert p["models"]["items"]["enum"] == ["mnist-cnn", "diamonds-regressor"]
    assert p["models"]["default"] == ["mnist-cnn", "diamonds-regressor"] and p["models"]["minItems"] == 1
    assert _bounds(p["epochs"]) == {"minimum": 1, "maximum": 10_000} and p["epochs"]["default"] is None
    assert _bounds(p["num_workers"]) == {"minimum": 1, "maximum": 1024} and p["num_workers"]["default"] == 2
    assert _bounds(p["margin"]) == {"minimum": 0} and _bounds(p["limit_rows"]) == {"minimum": 1}
    assert _bounds(p["seed"]) == {"minimum": 0, "maximum": 2**32 - 1} and p["seed"]["default"] == 42
    assert {o.get("type") for o in p["use_gpu"]["anyOf"]} == {"boolean", "null"}
    assert {o.get("type") for o in p["ray_address"]["anyOf"]} == {"string", "null"}
    assert p["tuned"] == {**p["tuned"], "type": "boolean", "default": False}
    # hparams: a form per model, each field typed and bounded, no free-form keys
    by_model = s["definitions"]["HyperparametersByModel"]
    assert set(by_model["properties"]) == {"mnist-cnn", "diamonds-regressor"}
    assert by_model["additionalProperties"] is False
    cnn = s["definitions"]["MnistCnnHyperparameters"]
    assert cnn["additionalProperties"] is False and _bounds(cnn["properties"]["depth"]) == {"minimum": 1, "maximum": 4}
    regressor = s["definitions"]["DiamondsRegressorHyperparameters"]
    assert _choices(regressor["properties"]["arch"]) == ["mlp", "linear"]
    assert _bounds(regressor["properties"]["lr"]) == {"exclusiveMinimum": 0, "maximum": 10}


def test_other_flows_schemas():
    train_p = schema(train)["properties"]
    assert (
        train_p["model"]["enum"] == ["mnist-cnn", "diamonds-regressor"] and train_p["model"]["default"] == "mnist-cnn"
    )
    assert {"ray_address", "jobs_address", "hparams", "run_name"} <= set(train_p)
    data_p = schema(prepare_data)["properties"]
    assert data_p["datasets"]["items"]["enum"] == ["mnist", "diamonds"]
    assert data_p["datasets"]["default"] == ["mnist", "diamonds"]
    assert _bounds(data_p["diamonds_val_fraction"]) == {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
    promote_s = schema(promote)
    assert set(promote_s["required"]) == {"model", "version"}
    assert promote_s["properties"]["version"]["pattern"] == "^[1-9][0-9]*$"
    batch_p = schema(batch_inference)["properties"]
    assert _bounds(batch_p["batch_size"])["minimum"] == 1 and batch_p["batch_size"]["default"] == 512
    assert schema(rollback)["required"] == ["model"]


def test_hyperparameter_forms_cover_every_hyperparameter_training_accepts():
    for key, spec in SPECS.items():
        assert set(HYPERPARAMETERS[key].model_fields) == set(spec.defaults), key


@pytest.mark.parametrize(
    ("flow", "parameters", "named", "rule"),
    [
        (retrain, {"epochs": 0}, "epochs", "greater than or equal to 1"),
        (retrain, {"num_workers": -1}, "num_workers", "greater than or equal to 1"),
        (retrain, {"models": ["resnet"]}, "models.0", "'mnist-cnn' or 'diamonds-regressor'"),
        (retrain, {"models": []}, "models", "at least 1 item"),
        (retrain, {"limit_rows": 0}, "limit_rows", "greater than or equal to 1"),
        (retrain, {"margin": -0.1}, "margin", "greater than or equal to 0"),
        (retrain, {"hparams": {"mnist-cnn": {"widht": 8}}}, "hparams.mnist-cnn", "unknown hyperparameter(s) ['widht']"),
        (retrain, {"hparams": {"resnet": {"lr": 1}}}, "hparams", "unknown model(s) ['resnet']"),
        (retrain, {"hparams": {"diamonds-regressor": {"arch": "forest"}}}, "arch", "'mlp' or 'linear'"),
        (retrain, {"hparams": {"mnist-cnn": {"lr": 0}}}, "lr", "greater than 0"),
        (train, {"model": "resnet"}, "model", "'mnist-cnn' or 'diamonds-regressor'"),
        (train, {"hparams": {"depth": 9}}, "depth", "less than or equal to 4"),
        (promote, {"model": "mnist-cnn", "version": "latest"}, "version", "should match pattern"),
        (rollback, {"model": "mnist-cnn", "to_version": "0"}, "to_version", "should match pattern"),
        (batch_inference, {"model": "mnist-cnn", "input_path": "x", "batch_size": 0}, "batch_size", ">= 1"),
        (prepare_data, {"datasets": ["cifar"]}, "datasets.0", "'mnist' or 'diamonds'"),
        (prepare_diamonds, {"val_fraction": 1.0}, "val_fraction", "less than 1"),
        (tune, {"num_samples": 0}, "num_samples", "greater than or equal to 1"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter_and_the_rule(flow, parameters, named, rule):
    with pytest.raises(ParameterTypeError) as refused:
        flow.validate_parameters(parameters)
    message = str(refused.value)
    assert named in message and rule.replace(">= ", "greater than or equal to ") in message, message


def test_valid_values_reach_the_flow_as_training_takes_them():
    cast = retrain.validate_parameters({"hparams": {"mnist-cnn": {"width": 32, "depth": 3}}, "epochs": 1})
    assert overrides_by_model(cast["hparams"]) == {"mnist-cnn": {"width": 32, "depth": 3}}
    cast = train.validate_parameters({"model": "diamonds-regressor", "hparams": {"arch": "linear", "lr": 0.01}})
    assert overrides_of(cast["hparams"]) == {"arch": "linear", "lr": 0.01}
    assert promote.validate_parameters({"model": "mnist-cnn", "version": 3})["version"] == "3"
    # Plain dicts (a call that skipped validation) work the same.
    assert overrides_by_model({"mnist-cnn": {"width": 8}}) == {"mnist-cnn": {"width": 8}}
    assert overrides_of(None) == {} and overrides_by_model(None) == {}


@pytest.mark.parametrize(
    ("flow", "parameters", "field"),
    [
        (retrain, {"epochs": 0}, "epochs"),
        (retrain, {"num_workers": -1}, "num_workers"),
        (retrain, {"models": ["resnet"]}, "models"),
        (retrain, {"hparams": {"mnist-cnn": {"widht": 8}}}, "hparams"),
        (prepare_data, {"datasets": ["cifar"]}, "datasets"),
    ],
)
def test_the_deployment_schema_refuses_what_the_flow_refuses(flow, parameters, field):
    """What the Prefect server applies to a deployment's run (enforce_parameter_schema)."""
    with pytest.raises(ValidationError, match=field):
        validate(parameters, schema(flow), raise_on_error=True)
    validate({}, schema(flow), raise_on_error=True)  # the defaults are valid


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError(errno.EIO, "I/O error"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (MlflowException("store unavailable", error_code=TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("database is locked", error_code=INTERNAL_ERROR), True),
        (type("OperationalError", (Exception,), {})("database is locked"), True),
        (DataValidationError("x.csv", "cut", "known level"), False),
        (ValueError("bad value"), False),
        (FileNotFoundError("missing"), False),
        (PermissionError("denied"), False),
        (MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (RuntimeError("champion moved"), False),
    ],
)
def test_only_transient_errors_are_retried(error, transient):
    assert is_transient(error) is transient


def test_a_failed_step_is_one_line_with_the_error_chained():
    original = ValueError("lr must be > 0, got 0\n  more detail on the next line")
    with pytest.raises(StepFailed) as failed:
        with step("train mnist-cnn"):
            with step("inner"):  # the innermost step names the failure, once
                raise original
    assert str(failed.value) == "inner failed: ValueError: lr must be > 0, got 0"
    assert failed.value.__cause__ is original and failed.value.error is original


def test_mlflow_links(monkeypatch):
    monkeypatch.delenv("SKYTRAIN_MLFLOW_UI_URL", raising=False)
    monkeypatch.delenv("SKYTRAIN_MLFLOW_TRACKING_URI", raising=False)
    assert Settings().mlflow_ui_url == "http://127.0.0.1:5000"  # the SQLite default: make ui serves it
    monkeypatch.setenv("SKYTRAIN_MLFLOW_TRACKING_URI", "https://mlflow.example.com/")
    assert Settings().mlflow_ui_url == "https://mlflow.example.com"
    monkeypatch.setenv("SKYTRAIN_MLFLOW_UI_URL", "http://ui:8080/")
    ui = Settings().mlflow_ui_url
    assert run_url(ui, "1", "abc") == "http://ui:8080/#/experiments/1/runs/abc"
    assert model_version_url(ui, "skytrain-mnist-cnn", "3") == "http://ui:8080/#/models/skytrain-mnist-cnn/versions/3"
