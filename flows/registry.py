"""The MLflow registry's aliases as the promote and rollback flows use them, and their lock.

``champion`` is the version inference serves; ``challenger`` the latest candidate the gate judged.
Only one promotion or rollback of a model runs at a time, across processes and machines: each
holds the slot of a Prefect global concurrency limit named ``skytrain-promote-<model>`` (created
with one slot on first use), and checks the alias did not move under it before moving it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.exceptions import MlflowException
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from ray_jobs.inference import CHAMPION
from ray_jobs.settings import Settings

CHALLENGER = "challenger"  # champion: ray_jobs.inference.CHAMPION (serving reads it too)


def lock_name(model: str) -> str:
    return f"skytrain-promote-{model}"


@contextmanager
def promotion_lock(model: str, settings: Settings) -> Iterator[None]:
    """Hold the model's promotion slot (waits up to ``settings.promotion_lock_timeout`` seconds)."""
    name = lock_name(model)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # created by a promotion racing this one: fine, same limit
                pass
    try:
        with concurrency(name, occupy=1, timeout_seconds=settings.promotion_lock_timeout, strict=True):
            yield
    except TimeoutError:
        raise TimeoutError(
            f"another promotion or rollback of '{model}' held the lock '{name}' for more than "
            f"{settings.promotion_lock_timeout:g}s (SKYTRAIN_PROMOTION_LOCK_TIMEOUT); see Concurrency in the Prefect UI"
        ) from None


def current_champion(client: mlflow.MlflowClient, name: str) -> str | None:
    """The champion's version number (MLflow returns it as int or str depending on the call)."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def move_champion(client: mlflow.MlflowClient, name: str, expected: str | None, version: str) -> None:
    """Point ``champion`` at ``version`` if it still is where this gate found it (compare-and-set)."""
    now = current_champion(client, name)
    if now != expected:
        raise RuntimeError(
            f"{name}: champion moved from {expected or 'none'} to {now} outside the promotion lock "
            "(by hand, in the MLflow UI?): nothing changed, run the gate again"
        )
    client.set_registered_model_alias(name, CHAMPION, version)
