"""The flows' parameter types: what the Prefect UI renders as a form, and what is checked before a run.

Choices are ``Literal`` (an enum in the schema: a drop-down), scalars carry their bounds and a
description through ``Annotated[..., Field(...)]``, hyperparameters are pydantic models (one
field per hyperparameter, unknown names refused). Prefect validates a call's parameters against
the signature before the flow body runs (``ParameterTypeError`` naming the parameter and the
rule); a deployment's parameter schema is generated from the same signature, and the Prefect
server refuses a run whose parameters break it before the run is created.

Prefect validates a call through a pydantic model named after the flow function (``train`` →
``TrainModel``) that resolves the string annotations: a type alias of that name would resolve to
the model itself, so aliases here are named ``ModelToTrain`` and the like, never ``<Flow>Model``.

Prefect takes a parameter's description from the flow's docstring (a description inside
``Annotated`` is overridden by an empty one), so ``described`` writes the docstring's ``Args:``
section from the ``Field`` descriptions: one source for both.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

ModelName = Literal["mnist-cnn", "diamonds-regressor"]
DatasetName = Literal["mnist", "diamonds"]
ALL_MODELS: list[ModelName] = ["mnist-cnn", "diamonds-regressor"]
ALL_DATASETS: list[DatasetName] = ["mnist", "diamonds"]

MAX_EPOCHS = 10_000
MAX_WORKERS = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds


def _version_as_text(value: Any) -> Any:
    """Registered versions are numbers written as text; accept a Python int too (not a bool)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# --- scalars shared by several flows ----------------------------------------------------------

Models = Annotated[
    list[ModelName],
    Field(min_length=1, description="Models to run: mnist-cnn (CNN on MNIST), diamonds-regressor (diamond prices)."),
]
Epochs = Annotated[
    int | None,
    Field(ge=1, le=MAX_EPOCHS, description="Training epochs; empty: the model's default (CNN 4, regressor 15)."),
]
NumWorkers = Annotated[
    int,
    Field(ge=1, le=MAX_WORKERS, description="Ray Train workers per training (one process each, GPU or CPU)."),
]
UseGpu = Annotated[
    bool | None,
    Field(description="Train on GPUs; empty: when the Ray cluster has one GPU for each worker."),
]
RayAddress = Annotated[
    str | None,
    Field(
        description="Ray cluster to train on, e.g. ray://HEAD:10001 or HEAD:6379; "
        "empty: SKYTRAIN_RAY_ADDRESS, else a local Ray started for the run."
    ),
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Seed of data splits, initialization and shuffling.")]
LimitRows = Annotated[
    int | None,
    Field(ge=1, description="Cap every dataset split at this many rows (quick runs; part of the dataset version id)."),
]
Margin = Annotated[
    float | None,
    Field(
        ge=0,
        description="A challenger must beat the champion by more than this to be promoted; "
        "empty: the model's promotion policy (0).",
    ),
]
Floor = Annotated[
    float | None,
    Field(description="Worst acceptable test score of a challenger; empty: the model's promotion policy."),
]
RegisteredVersion = Annotated[  # the pattern first: then it stays in the JSON schema
    str,
    Field(pattern=r"^[1-9][0-9]*$", description="A registered model version number, e.g. 3."),
    BeforeValidator(_version_as_text),
]


# --- hyperparameters ----------------------------------------------------------------------------


class _Hyperparameters(BaseModel):
    """Overrides of a model's default hyperparameters; empty fields keep the default."""

    model_config = ConfigDict(extra="forbid")
    MODEL: ClassVar[str] = ""

    epochs: Annotated[int | None, Field(ge=1, le=MAX_EPOCHS, description="Training epochs.")] = None
    lr: Annotated[float | None, Field(gt=0, le=10, description="Peak learning rate (one-cycle schedule).")] = None
    batch_size: Annotated[int | None, Field(ge=1, le=65_536, description="Rows per step, per worker.")] = None
    weight_decay: Annotated[float | None, Field(ge=0, le=1, description="AdamW weight decay.")] = None
    patience: Annotated[
        int | None,
        Field(ge=1, le=MAX_EPOCHS, description="Stop after this many epochs without a better validation metric."),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown hyperparameter(s) {unknown} for '{cls.MODEL}': known are {sorted(cls.model_fields)}"
                )
        return data

    def overrides(self) -> dict[str, Any]:
        """The fields given, as ``ray_jobs.train.resolve_hparams`` takes them."""
        return self.model_dump(exclude_none=True)


class MnistCnnHyperparameters(_Hyperparameters):
    model_config = ConfigDict(extra="forbid", title="mnist-cnn hyperparameters")
    MODEL: ClassVar[str] = "mnist-cnn"

    width: Annotated[int | None, Field(ge=1, le=512, description="Channels of the first conv stage.")] = None
    depth: Annotated[int | None, Field(ge=1, le=4, description="Conv stages, each halving the image side.")] = None


class DiamondsRegressorHyperparameters(_Hyperparameters):
    model_config = ConfigDict(extra="forbid", title="diamonds-regressor hyperparameters")
    MODEL: ClassVar[str] = "diamonds-regressor"

    arch: Annotated[
        Literal["mlp", "linear"] | None,
        Field(description="mlp: two hidden layers; linear: least squares by gradient descent."),
    ] = None
    hidden: Annotated[int | None, Field(ge=2, le=8192, description="Width of the first hidden layer (mlp).")] = None


HYPERPARAMETERS: dict[str, type[_Hyperparameters]] = {
    "mnist-cnn": MnistCnnHyperparameters,
    "diamonds-regressor": DiamondsRegressorHyperparameters,
}


class HyperparametersByModel(BaseModel):
    """Hyperparameter overrides per model."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="hyperparameters per model")

    mnist_cnn: MnistCnnHyperparameters | None = Field(
        default=None, alias="mnist-cnn", description="Overrides for mnist-cnn; empty: its defaults."
    )
    diamonds_regressor: DiamondsRegressorHyperparameters | None = Field(
        default=None, alias="diamonds-regressor", description="Overrides for diamonds-regressor; empty: its defaults."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_models(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | {field.alias for field in cls.model_fields.values()}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown model(s) {unknown}: known are {sorted(HYPERPARAMETERS)}")
        return data


ModelHyperparameters = Annotated[
    MnistCnnHyperparameters | DiamondsRegressorHyperparameters | None,
    Field(
        description="Overrides of the model's other hyperparameters (CNN: width, depth; regressor: arch, hidden; "
        "both: lr, batch_size per worker, weight_decay, patience, epochs); empty: its defaults."
    ),
]
HyperparametersPerModel = Annotated[
    HyperparametersByModel | None,
    Field(
        description='Per model, overrides of its other hyperparameters, e.g. {"mnist-cnn": {"width": 32}, '
        '"diamonds-regressor": {"arch": "linear"}}; empty: the defaults (or the tuned values).'
    ),
]


def overrides_of(hparams: Any) -> dict[str, Any]:
    """One model's overrides as a plain dict, whether given as a model (validated) or a dict (not)."""
    if hparams is None:
        return {}
    if isinstance(hparams, BaseModel):
        return hparams.model_dump(exclude_none=True)
    return dict(hparams)


def overrides_by_model(hparams: Any) -> dict[str, dict[str, Any]]:
    """Overrides per model key (``mnist-cnn``, ...) as plain dicts, from a model or a dict."""
    if hparams is None:
        return {}
    if isinstance(hparams, BaseModel):
        hparams = hparams.model_dump(by_alias=True, exclude_none=True)
    return {model: overrides_of(values) for model, values in dict(hparams).items() if values is not None}


# --- descriptions into the docstring ------------------------------------------------------------


def _description(hint: Any) -> str | None:
    """The ``Field`` description of an ``Annotated`` hint, also inside ``X | None``."""
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, FieldInfo) and meta.description:
                return meta.description
        return _description(typing.get_args(hint)[0])
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Annotated:
            return _description(arg)
    return None


def described(fn: Any) -> Any:
    """Append an ``Args:`` section built from the parameters' ``Field`` descriptions to ``fn``'s docstring.

    Put it under ``@flow``. Parameters described in the docstring already are left as written.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    doc = inspect.cleandoc(fn.__doc__ or "")
    lines = []
    for name in inspect.signature(fn).parameters:
        text = _description(hints.get(name))
        if text and f"\n    {name}:" not in doc:
            lines.append(f"    {name}: {text}")
    if lines:
        fn.__doc__ = doc + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn
