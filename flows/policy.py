"""Per-model promotion policy: the metric the gate compares, its direction, the margin and the floor.

Defaults come from the model (``ray_jobs/models.py``); ``SKYTRAIN_PROMOTION`` overrides them per
model as JSON, e.g.::

    SKYTRAIN_PROMOTION='{"mnist-cnn": {"margin": 0.002, "floor": 0.98}, "diamonds-regressor": {"metric": "mae"}}'

A bad policy is refused before anything is scored, with the model, the field and the rule.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ray_jobs.models import SPECS, spec_for
from ray_jobs.settings import Settings

# Test metrics each task's models are scored on (``ray_jobs.evaluate.score``) and which way is better.
TASK_METRICS = {"classification": ("accuracy",), "regression": ("rmse", "mae", "r2")}
DIRECTIONS = {"accuracy": "max", "r2": "max", "rmse": "min", "mae": "min"}

# The default floors catch a broken model (10 classes: chance accuracy is 0.1; predicting the mean
# log price gives an RMSE of about 1.0), not a mediocre one: raise them for production.
DEFAULT_FLOORS = {"mnist-cnn": 0.5, "diamonds-regressor": 0.7}


class PromotionPolicy(BaseModel):
    """How the gate judges a challenger of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    metric: str
    direction: Literal["max", "min"] | None = None
    """``max``: higher is better. Empty: the metric's own direction (the only one accepted)."""
    margin: float = Field(default=0.0, ge=0.0)
    """The challenger must beat the champion by more than this."""
    floor: float | None = None
    """The worst acceptable score, checked before any comparison: the challenger's metric must be at
    least this (``max``) or at most this (``min``). Empty: no floor."""

    @model_validator(mode="after")
    def _metric_fits_model(self) -> PromotionPolicy:
        task = spec_for(self.model).task
        if self.metric not in TASK_METRICS[task]:
            raise ValueError(
                f"metric must be one of {list(TASK_METRICS[task])} for a {task} model, got '{self.metric}'"
            )
        natural = DIRECTIONS[self.metric]
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(f"direction must be '{natural}' for metric '{self.metric}', got '{self.direction}'")
        return self

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"

    def meets_floor(self, value: float) -> bool:
        if self.floor is None:
            return True
        return value >= self.floor if self.higher_is_better else value <= self.floor

    def describe(self) -> str:
        floor = "none" if self.floor is None else f"{'>=' if self.higher_is_better else '<='} {self.floor:g}"
        better = "higher" if self.higher_is_better else "lower"
        return f"metric {self.metric} ({better} is better), margin {self.margin:g}, floor {floor}"


def policy_for(model: str, settings: Settings | None = None, **overrides: Any) -> PromotionPolicy:
    """The model's policy: defaults, then ``SKYTRAIN_PROMOTION``, then non-empty ``overrides`` (flow parameters)."""
    settings = settings or Settings()
    spec = spec_for(model)
    unknown = set(settings.promotion) - set(SPECS)
    if unknown:
        raise ValueError(f"SKYTRAIN_PROMOTION: unknown model(s) {sorted(unknown)}: known are {sorted(SPECS)}")
    configured = settings.promotion.get(model, {})
    if not isinstance(configured, dict):
        raise ValueError(f"SKYTRAIN_PROMOTION: '{model}' must map to an object of policy fields, got {configured!r}")
    fields = {"metric": spec.metric, "floor": DEFAULT_FLOORS.get(model)}
    fields.update(configured)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PromotionPolicy(model=model, **fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'policy'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise ValueError(f"SKYTRAIN_PROMOTION: bad promotion policy for '{model}': {problems}") from None
