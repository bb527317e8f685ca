"""The MLflow registry's aliases as the promote and rollback flows use them, and their lock.

``champion`` is the version inference serves; ``challenger`` the latest candidate the gate judged.
Only one promotion or rollback of a model runs at a time, across processes and machines: each
holds the slot of a Prefect global concurrency limit named ``skytrain-promote-<model>`` (created
with one slot on first use), and checks the alias did not move under it before moving it.

The registry calls the flows make are the Prefect tasks below: each has a timeout and is retried
with backoff on transient errors (a busy store, a server restarting), never on a refusal such as
an unknown version (``flows/operations.py``). Each is safe to repeat.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from flows.operations import io_task
from ray_jobs.inference import CHAMPION
from ray_jobs.settings import Settings

CHALLENGER = "challenger"  # champion: ray_jobs.inference.CHAMPION (serving reads it too)
# On a version the gate promoted: the champion it replaced ("" for a first champion). Unlike
# skytrain.gate.champion_version (the champion it was compared with, rewritten at every gate of the
# version), it stays as the promotion left it: gating the version again, even the champion itself,
# cannot change where a rollback returns to.
REPLACED_TAG = "skytrain.gate.replaced_version"
REGISTRY_TIMEOUT_SECONDS = 120


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
    if now == version and expected != version:  # a retry after this very move reached the registry
        return
    if now != expected:
        raise RuntimeError(
            f"{name}: champion moved from {expected or 'none'} to {now} outside the promotion lock "
            "(by hand, in the MLflow UI?): nothing changed, run the gate again"
        )
    client.set_registered_model_alias(name, CHAMPION, version)


# --- the registry calls as retried Prefect tasks -------------------------------------------------


def _client(tracking_uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri)


@io_task("read-model-version", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def read_version(tracking_uri: str, name: str, version: str) -> ModelVersion:
    return _client(tracking_uri).get_model_version(name, version)


@io_task("read-champion", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def read_champion(tracking_uri: str, name: str) -> str | None:
    return current_champion(_client(tracking_uri), name)


@io_task("set-alias", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, version)


@io_task("move-champion", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def move_champion_task(tracking_uri: str, name: str, expected: str | None, version: str) -> None:
    move_champion(_client(tracking_uri), name, expected, version)


@io_task("tag-model-version", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def tag_version(
    tracking_uri: str, name: str, version: str, tags: dict[str, str], description: str | None = None
) -> None:
    """Set ``tags`` on the version, then its description (when given): all idempotent."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if description is not None:
        client.update_model_version(name, version, description=description)
